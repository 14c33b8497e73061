"""``cae eval``: the CAE paper's measurements (Hao et al. 2025, arXiv 2505.03189) in one command.

``cae.cli`` registers this subcommand through ``register(subparsers)`` (its ``PLUGINS``).

Example::

    cae eval --model organism:tiny --data kind.jsonl --corpus neutral.txt --out eval/ --seed 0
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from cae.evaluate.config import EvalConfig, Placement, PromptBaseline
from cae.names import POSITIONS
from cae.read import READ_RULES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subparser (``func`` = ``run``)."""
    p = subparsers.add_parser("eval", help="measure a steering vector: behaviour, sample "
                                           "efficiency, perplexity cost; JSON + plots + HTML")
    p.add_argument("--model", required=True, nargs="+",
                   help="Hub id, local dir or organism:<size>; several: size comparison")
    p.add_argument("--target-shift", type=float, default=0.05,
                   help="size comparison: behaviour shift at which perplexity cost is read")
    p.add_argument("--data", required=True, help="A/B dataset: MWE .jsonl or CAA .json")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--corpus", default=None, help="plain-text file for the perplexity cost")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="decoder blocks to sweep (default: all)")
    p.add_argument("--multipliers", type=float, nargs="+", default=[-4.0, -2.0, 0.0, 2.0, 4.0])
    p.add_argument("--test-fraction", type=float, default=0.25,
                   help="share held out as the test split (every reported number)")
    p.add_argument("--val-fraction", type=float, default=0.25,
                   help="share held out as the validation split (the layer choice)")
    p.add_argument("--positions", default="from_prompt_end",
                   help=f"where the vector is added in every stage: {', '.join(POSITIONS)} "
                        "(generated is refused: the A/B stages generate nothing)")
    p.add_argument("--draws", type=int, default=5, help="random subsets per sample size")
    p.add_argument("--context", type=int, default=64, help="tokens per perplexity window")
    p.add_argument("--max-windows", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[],
                   help="several seeds (splits and draws): DIR/seed-<s>/ and DIR/seeds.json "
                        "with intervals over seeds")
    p.add_argument("--adversarial", type=int, default=0,
                   help="held-out items to search for reversing inputs (0: skip)")
    p.add_argument("--adversarial-tokens", type=int, default=4)
    p.add_argument("--adversarial-top-k", type=int, default=32,
                   help="gradient-ranked candidates per search step (0: whole vocabulary)")
    p.add_argument("--adversarial-budget", type=int, default=None,
                   help="most forward rows per searched item (reported per item)")
    p.add_argument("--other-data", nargs="+", default=[],
                   help="other-template A/B datasets scored beside the held-out split")
    p.add_argument("--ood", default=None, help="directory of CAE-paper OOD prompt files")
    p.add_argument("--ood-behaviour", default=None, help="only OOD files of this behaviour")
    p.add_argument("--open", nargs="+", default=[],
                   help="files of open-ended prompts (one per line), judged like --ood")
    p.add_argument("--judge-fn", default=None,
                   help="judge function 'module:function' (prompt, completion) -> score for --open")
    p.add_argument("--read", default="answer", choices=sorted(READ_RULES),
                   help="read rule of the vectors (answer: CAA's answer letter)")
    p.add_argument("--normalize", action="store_true",
                   help="scale vectors to the mean residual norm (multipliers comparable "
                        "across layers and models)")
    p.add_argument("--prompt-instruction", default=None,
                   help="prompting baseline: text before every prompt asking for the behaviour")
    p.add_argument("--prompt-instruction-not", default=None,
                   help="the same asking for the opposite (needed with --prompt-instruction)")
    p.add_argument("--prompt-examples", type=int, default=0,
                   help="prompting baseline: K in-context training items answered the asked way")
    p.add_argument("--prompt-separator", default="\n\n",
                   help="between the instruction, the examples and the prompt")
    p.add_argument("--side-data", nargs="+", default=[],
                   help="A/B datasets of unrelated behaviours (side effects of steering)")
    p.add_argument("--capability", nargs="+", default=[],
                   help="A/B datasets with a correct answer (accuracy under steering)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--dtype", default="float32",
                   help="float32, bfloat16 or float16: the model's weights and activations")
    p.add_argument("--device-map", default=None,
                   help="accelerate device map instead of --device: auto, balanced, "
                        "sequential or a JSON object")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint for --ood")
    p.add_argument("--judge-model", default="judge", help="model name sent to the judge")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="overall deadline of one judge request in seconds (every byte of the answer)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the judge's API key (sent only over https "
                        "or to loopback)")
    p.add_argument("--allow-insecure-key", action="store_true",
                   help="send the API key over plain http to a judge host that is not loopback")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``cae eval`` from parsed arguments; prints the summary as one JSON line."""
    # dispatch: torch, transformers and nnsight load here, not for --help
    from cae.evaluate.judge import JudgeError
    from cae.evaluate.report import evaluate
    from cae.evaluate.sizes import compare_sizes

    cfg = EvalConfig(
        model=args.model[0], data=args.data, out=args.out, corpus=args.corpus, layers=args.layers,
        read=args.read,
        multipliers=args.multipliers, test_fraction=args.test_fraction,
        val_fraction=args.val_fraction, seeds=args.seeds,
        positions=args.positions, draws=args.draws, context=args.context,
        max_windows=args.max_windows, seed=args.seed, other_data=args.other_data,
        ood=args.ood, ood_behaviour=args.ood_behaviour, open=args.open, judge_fn=args.judge_fn,
        judge_url=args.judge_url,
        judge_model=args.judge_model, judge_timeout=args.timeout,
        judge_api_key_env=args.api_key_env, allow_insecure_key=args.allow_insecure_key,
        adversarial=args.adversarial,
        adversarial_tokens=args.adversarial_tokens,
        adversarial_top_k=args.adversarial_top_k or None,
        adversarial_budget=args.adversarial_budget, normalize=args.normalize,
        placement=Placement(args.device, args.dtype, args.device_map),
        prompting=PromptBaseline(args.prompt_instruction, args.prompt_instruction_not,
                                 args.prompt_examples, args.prompt_separator),
        side_data=args.side_data, capability=args.capability,
    )
    try:
        if len(args.model) > 1:
            rows = compare_sizes(cfg, args.model, args.target_shift)
            print(json.dumps({"out": cfg.out, "sizes": [asdict(r) for r in rows]}))
            return 0
        results = evaluate(cfg)
    except JudgeError as err:
        raise JudgeError(f"{err} (finished stages kept in {cfg.out})", err.partial) from err
    print(json.dumps({"out": cfg.out, **results["summary"]}))
    return 0
