"""One-command evaluation of a steering vector: the CAE paper's measurements, written out.

Runs the checks of the CAE paper (Hao et al. 2025, arXiv 2505.03189) that this package
implements so far on a user's model and A/B dataset: a CAA vector (Rimsky et al. 2024) is
trained on a seeded train split; a layer x multiplier sweep on the held-out split picks
the layer (largest steerability, Tan et al. 2024); at that layer the behaviour metrics,
the sample-efficiency curve and the perplexity cost on a text corpus are measured.

``DIR/results.json`` holds every number (rewritten after each stage, so a failure keeps
the finished stages), ``DIR/*.png`` the plots, ``DIR/index.html`` a summary and
``DIR/vector`` the trained vector. The same seed gives the same JSON.
"""

from __future__ import annotations

import html
import json
import logging
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cae.evaluate.config import EvalConfig

logger = logging.getLogger(__name__)


def split(pairs: list[Any], test_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded shuffle, then (train, test); both must be non-empty."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = round(len(pairs) * test_fraction)
    if n_test < 1 or n_test >= len(pairs):
        raise ValueError(f"cannot split {len(pairs)} pairs with test_fraction={test_fraction}: "
                         "train and test both need at least one pair")
    return [pairs[i] for i in order[n_test:]], [pairs[i] for i in order[:n_test]]


class Results:
    """The growing ``results.json``: each stage is added and the file rewritten."""

    def __init__(self, out: Path, cfg: EvalConfig) -> None:
        self.path = out / "results.json"
        self.data: dict[str, Any] = {"config": asdict(cfg)}
        self.write()

    def add(self, key: str, value: Any) -> None:
        self.data[key] = asdict(value) if hasattr(value, "__dataclass_fields__") else value
        self.write()

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1) + "\n")


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run every implemented measurement and write ``cfg.out``; returns the results dict.

    Example:
        >>> from cae.organism.corpus import write_mwe_jsonl
        >>> write_mwe_jsonl("/tmp/kind.jsonl", "kind", n=32)
        >>> res = evaluate(EvalConfig("organism:tiny", "/tmp/kind.jsonl", "/tmp/eval",
        ...                           multipliers=[-4.0, 0.0, 4.0], draws=2))
        >>> sorted(res["summary"])[:2]
        ['anti_steerable_fraction', 'best_layer']
    """
    from cae.evaluate import plots
    from cae.evaluate.behaviour import BehaviourConfig, layer_sweep, single_layer
    from cae.evaluate.efficiency import EfficiencyConfig, model_efficiency
    from cae.evaluate.perplexity import PerplexityConfig, perplexity_cost, windows
    from cae.model import check_layers, decoder_layers, load_language_model
    from cae.pairs import load_pairs
    from cae.vector import SteeringVector

    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out, cfg)
    train, test = split(load_pairs(cfg.data), cfg.test_fraction, cfg.seed)
    place = cfg.placement
    lm = load_language_model(cfg.model, place.dtype, place.device, place.device_map_value())
    layers = cfg.layers if cfg.layers is not None else list(range(len(decoder_layers(lm)[1])))
    layers = check_layers(lm, layers)
    text, ppl_cfg = None, None
    if cfg.corpus is not None:  # checked before the expensive stages
        text = Path(cfg.corpus).read_text(encoding="utf-8")
        ppl_cfg = PerplexityConfig([m for m in cfg.multipliers if m != 0], cfg.context,
                                   cfg.max_windows, positions=cfg.positions)
        windows(lm.tokenizer, text, ppl_cfg)
    logger.info("training on %d pairs at layers %s", len(train), layers)
    sv = SteeringVector.train(lm, train, layers, read=cfg.read, normalize=cfg.normalize)
    raw_scale = {layer: 1.0 for layer in layers}
    if cfg.normalize:
        norms, raw_norms = sv.meta.extra["norm_matched"], sv.meta.extra["raw_norms"]
        raw_scale = {k: norms[str(k)] / raw_norms[str(k)] for k in layers}
        results.add("norm_matched", {"residual_norm": norms, "raw_norm": raw_norms})
    sv.save(out / "vector")

    sweep = layer_sweep(lm, test, sv, BehaviourConfig(cfg.multipliers, cfg.positions))
    results.add("layer_sweep", sweep)
    best = sweep.results[sweep.layers.index(sweep.best_layer)]
    plots.plot_layer_sweep(sweep, out / "layer_sweep.png")
    plots.plot_propensity(best, out / "propensity.png")

    top = max(abs(m) for m in cfg.multipliers)
    # subset vectors are raw mean differences: scale the multiplier as the full vector was
    eff = model_efficiency(lm, train, test, sweep.best_layer,
                           EfficiencyConfig(draws=cfg.draws, seed=cfg.seed),
                           top * raw_scale[sweep.best_layer], cfg.positions, cfg.read)
    results.add("sample_efficiency", eff)
    plots.plot_efficiency(eff, out / "efficiency.png")

    summary: dict[str, Any] = {
        "n_train": len(train), "n_test": len(test), "best_layer": sweep.best_layer,
        "steerability": best.steerability,
        "anti_steerable_fraction": best.anti_steerable_fraction,
        "mean_p_matching": dict(zip(map(str, best.multipliers), best.mean_p_matching, strict=True)),
        "n_flat_cosine": eff.n_flat_cosine, "n_flat_effect": eff.n_flat_effect,
    }
    if text is not None and ppl_cfg is not None:
        ppl = perplexity_cost(lm, text, single_layer(sv, sweep.best_layer), ppl_cfg)
        results.add("perplexity", ppl)
        plots.plot_perplexity(ppl, out / "perplexity.png")
        summary["perplexity_increase"] = dict(zip(map(str, ppl.multipliers), ppl.increase, strict=True))
    if cfg.adversarial > 0:
        from cae.evaluate.adversarial import adversarial_search

        adv = adversarial_search(lm, test[:cfg.adversarial], single_layer(sv, sweep.best_layer),
                                 cfg.adversarial_config())
        results.add("adversarial", adv)
        summary["adversarial_success_rate"] = adv.success_rate
    if cfg.other_data or cfg.ood is not None or cfg.open:
        rows = shift_stage(lm, cfg, single_layer(sv, sweep.best_layer), test, top, results)
        plots.plot_shift(rows, out / "shift.png")
        summary["shift_effect"] = {r.name: r.effect for r in rows}
    results.add("summary", summary)
    (out / "index.html").write_text(summary_html(results.data))
    return results.data


def shift_stage(
    lm: Any, cfg: EvalConfig, sv: Any, test: list[Any], multiplier: float, results: Results
) -> list[Any]:
    """In- vs out-of-distribution rows, written to ``results`` after each set (a failing
    judge keeps the finished rows; its ``JudgeError.partial`` holds the set's scores so far)."""
    from cae.evaluate.judge import EndpointJudge, load_judge_function
    from cae.evaluate.ood import load_ood_dir
    from cae.evaluate.shift import choice_effect, judged_effect
    from cae.pairs import load_pairs

    rows = [choice_effect(lm, "in-distribution (held out)", test, sv, multiplier, cfg.positions)]
    results.add("distribution_shift", [asdict(r) for r in rows])
    for path in cfg.other_data:
        rows.append(choice_effect(lm, Path(path).name, load_pairs(path), sv, multiplier,
                                  cfg.positions))
        results.add("distribution_shift", [asdict(r) for r in rows])
    judge_fn = load_judge_function(cfg.judge_fn) if cfg.judge_fn is not None else None
    for path in cfg.open:
        prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()
                   if line.strip()]
        judge: Any = judge_fn or EndpointJudge(cfg.judge_url or "", cfg.judge_model,
                                               Path(path).stem)
        rows.append(judged_effect(lm, f"open/{Path(path).name}", prompts, sv, multiplier, judge,
                                  positions=cfg.positions))
        results.add("distribution_shift", [asdict(r) for r in rows])
    if cfg.ood is not None and cfg.judge_url is not None:
        sets = [s for s in load_ood_dir(cfg.ood)
                if cfg.ood_behaviour is None or s.behaviour == cfg.ood_behaviour]
        if not sets:
            raise ValueError(f"{cfg.ood}: no OOD files for behaviour {cfg.ood_behaviour!r}")
        for ood_set in sets:
            judge = EndpointJudge(cfg.judge_url, cfg.judge_model, ood_set.behaviour,
                                  ood_set.prompts[0].criteria or "")
            name = f"{ood_set.kind}/{ood_set.behaviour}-{ood_set.length}"
            rows.append(judged_effect(lm, name, [p.prompt for p in ood_set.prompts], sv,
                                      multiplier, judge, positions=cfg.positions))
            results.add("distribution_shift", [asdict(r) for r in rows])
    return rows


def summary_html(data: dict[str, Any]) -> str:
    """A small self-contained HTML page: the headline numbers and the plots."""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v))}</td></tr>"
                   for k, v in data["summary"].items())
    images = ["layer_sweep", "propensity", "efficiency"] + (
        ["perplexity"] if "perplexity" in data else []) + (
        ["shift"] if "distribution_shift" in data else [])
    figs = "".join(f'<img src="{name}.png" alt="{name}">' for name in images)
    cfg = html.escape(json.dumps(data["config"]))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>cae eval</title></head>"
            f"<body><h1>cae eval: {html.escape(str(data['config']['model']))}</h1>"
            f"<p>config: <code>{cfg}</code></p><table border='1'>{rows}</table>"
            f"<div>{figs}</div><p>All numbers: results.json</p></body></html>\n")
