"""Benchmark the cae package: steering overhead in generation, and training overhead.

Measured in one run on (a) the largest LM organism and (b) a random-weight Llama with 8
layers and width 512, and printed as ONE JSON object:

- ``generate_steered_over_unsteered`` (goal <= 1.10): ``model.generate`` under
  ``sv.apply`` (forward hooks, ``from_prompt_end``) over the same call unsteered;
- ``nnsight_generate_steered_over_unsteered``: nnsight ``model.generate`` with
  ``cae.steer`` in every ``tracer.iter`` step over the same nnsight generate unsteered;
- ``nnsight_generate_over_plain_generate``: nnsight's own per-step cost, for reference;
- ``train_over_plain_hooks`` (goal <= 1.2): ``SteeringVector.train`` (nnsight trace) over
  a plain-PyTorch-hook implementation of the same batches and the same reads (the two
  vectors are checked to be equal).

Timings interleave the variants and keep the minimum of ``--repeats`` runs, because the
CPU is shared. Run: ``python benchmarks/cae.py`` (``--threads 1`` by default).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

# this file is named like the package it measures: keep its folder off the import path
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from cae import SteeringVector, steer  # noqa: E402
from cae.model import decoder_layers, wrap  # noqa: E402
from cae.organism import SIZES, load  # noqa: E402
from cae.organism.corpus import items  # noqa: E402
from cae.organism.train import build_tokenizer  # noqa: E402
from cae.read import read_rule  # noqa: E402
from cae.train import _row_reads, encode  # noqa: E402


def best_of(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Minimum wall time of each function over interleaved repeats."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}


def _keeper(store: dict, layer: int) -> Callable:
    """Forward hook storing a block's output under ``layer``."""
    return lambda _m, _i, out: store.__setitem__(layer, out)


def plain_hook_train(hf, tokenizer, pairs, layers, batch_size):
    """Reference CAA: same batches and reads, activations taken by plain forward hooks."""
    _, blocks = decoder_layers(hf)
    pos = {layer: [] for layer in layers}
    neg = {layer: [] for layer in layers}
    for start in range(0, len(pairs), batch_size):
        rows = _row_reads(tokenizer, pairs[start:start + batch_size], read_rule("answer"), start)
        batch = encode(tokenizer, rows, tokenizer.padding_side)
        seen: dict[int, torch.Tensor] = {}

        handles = [blocks[layer].register_forward_hook(_keeper(seen, layer)) for layer in layers]
        try:
            with torch.no_grad():
                hf(input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT,
                   position_ids=batch.position_ids_BT)
        finally:
            for h in handles:
                h.remove()
        for layer in layers:
            acts_BD = torch.einsum("bt,btd->bd", batch.read_BT, seen[layer])
            pos[layer].append(acts_BD[0::2])
            neg[layer].append(acts_BD[1::2])
    return {layer: (torch.cat(pos[layer]) - torch.cat(neg[layer])).mean(0) for layer in layers}


def bench_model(name, hf, tokenizer, layer, args) -> dict:
    lm = wrap(hf, tokenizer)
    pairs = [it.pair() for it in items("kind", "ab", args.pairs, split="train")]
    prompts = [it.prompt for it in items("kind", "open", args.batch, split="test")]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    sv = SteeringVector.train(lm, pairs, [layer], batch_size=args.train_batch)
    settings = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens,
                "do_sample": False, "pad_token_id": tokenizer.pad_token_id}

    def plain():
        with torch.no_grad():
            return hf.generate(**enc, **settings)

    def hooked():
        with torch.no_grad(), sv.apply(hf, 4.0):
            return hf.generate(**enc, **settings)

    def nn_plain():
        with torch.no_grad(), lm.generate(prompts, **settings) as tracer:
            out = tracer.result.save()
        return out

    def nn_steered():
        with torch.no_grad(), lm.generate(prompts, **settings) as tracer:
            for _step in tracer.iter[: args.new_tokens]:
                steer(lm, sv, 4.0)
        return tracer

    gen = best_of({"plain": plain, "hooked": hooked, "nn_plain": nn_plain,
                   "nn_steered": nn_steered}, args.repeats)

    def ours():
        return SteeringVector.train(lm, pairs, [layer], batch_size=args.train_batch)

    def reference():
        return plain_hook_train(hf, tokenizer, pairs, [layer], args.train_batch)

    torch.testing.assert_close(ours().vectors[layer], reference()[layer], atol=1e-4, rtol=1e-4)
    train = best_of({"ours": ours, "reference": reference}, args.repeats)
    return {
        f"{name}.generate_steered_over_unsteered": gen["hooked"] / gen["plain"],
        f"{name}.nnsight_generate_steered_over_unsteered": gen["nn_steered"] / gen["nn_plain"],
        f"{name}.nnsight_generate_over_plain_generate": gen["nn_plain"] / gen["plain"],
        f"{name}.train_over_plain_hooks": train["ours"] / train["reference"],
        f"{name}.seconds": {**{f"gen_{k}": round(v, 4) for k, v in gen.items()},
                            **{f"train_{k}": round(v, 4) for k, v in train.items()}},
    }


def random_llama(vocab: int) -> LlamaForCausalLM:
    """Random-weight Llama: 8 layers, width 512."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1376,
                         num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return LlamaForCausalLM(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="prompts per generate call")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--organism", default=list(SIZES)[-1], choices=list(SIZES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    largest = args.organism
    hf, tokenizer = load(largest)
    result = {"command": "python benchmarks/cae.py", "args": vars(args)}
    result.update(bench_model(f"organism_{largest}", hf, tokenizer,
                              hf.config.num_hidden_layers // 2, args))
    tokenizer = build_tokenizer()
    result.update(bench_model("random_llama_8x512", random_llama(len(tokenizer)), tokenizer, 4,
                              args))
    for key, value in result.items():
        if isinstance(value, float):
            result[key] = round(value, 4)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
