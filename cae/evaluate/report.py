"""One-command evaluation of a steering vector: the CAE paper's measurements, written out.

Runs the checks of the CAE paper (Hao et al. 2025, arXiv 2505.03189) that this package
implements on a user's model and A/B dataset: a CAA vector (Rimsky et al. 2024) is trained
on a seeded train split; a layer x multiplier sweep on a validation split picks the layer
(largest |steerability|, Tan et al. 2024; an anti-steerable choice is warned about); on the
test split, at that layer, the behaviour metrics, the sample-efficiency curve (disjoint
reference, length-matched subset vectors), the perplexity cost on a text corpus and the
optional stages are measured, every one with the run's position rule.

``DIR/results.json`` holds every number (rewritten after each stage, so a failure keeps
the finished stages), ``DIR/*.png`` the plots, ``DIR/index.html`` a summary and
``DIR/vector`` the trained vector. The same seed gives the same JSON. With several seeds
each run goes to ``DIR/seed-<s>/`` and ``DIR/seeds.json`` holds the intervals over seeds
(``cae.evaluate.seeds``).
"""

from __future__ import annotations

import html
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import _sae_flux_shared.commit as commit
from cae.evaluate.config import EvalConfig

logger = logging.getLogger(__name__)


def split(
    pairs: list[Any], test_fraction: float, seed: int, val_fraction: float = 0.0
) -> tuple[list[Any], ...]:
    """Seeded shuffle, then (train, test), or (train, validation, test) with
    ``val_fraction``; every part must be non-empty."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = round(len(pairs) * test_fraction)
    n_val = round(len(pairs) * val_fraction)
    if n_test < 1 or (val_fraction and n_val < 1) or n_test + n_val >= len(pairs):
        raise ValueError(f"cannot split {len(pairs)} pairs with test_fraction={test_fraction} "
                         f"and val_fraction={val_fraction}: every split needs at least one pair")
    test = [pairs[i] for i in order[:n_test]]
    val = [pairs[i] for i in order[n_test:n_test + n_val]]
    train = [pairs[i] for i in order[n_test + n_val:]]
    return (train, val, test) if val_fraction else (train, test)


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
        """Commit the file (:mod:`_sae_flux_shared.commit`): a kill leaves the previous stage's whole file."""
        commit.write_json(self.path, self.data)


def evaluate(cfg: EvalConfig, lm: Any = None) -> dict[str, Any]:
    """Run every measurement and write ``cfg.out``; returns the results dict (with several
    ``cfg.seeds``: the per-seed results and the intervals over seeds, ``evaluate_seeds``).

    Example:
        >>> from cae.organism.corpus import write_mwe_jsonl
        >>> write_mwe_jsonl("/tmp/kind.jsonl", "kind", n=32)
        >>> from cae.evaluate.config import SweepConfig
        >>> res = evaluate(EvalConfig("organism:tiny", "/tmp/kind.jsonl", "/tmp/eval",
        ...                           sweep=SweepConfig(multipliers=[-4.0, 0.0, 4.0], draws=2)))
        >>> res["summary"]["n_train"], res["summary"]["n_val"], res["summary"]["n_test"]
        (16, 8, 8)
    """
    if len(cfg.seed_list()) > 1:
        return evaluate_seeds(cfg, lm)
    from cae.evaluate.perplexity import PerplexityConfig, windows
    from cae.pairs import load_pairs

    seed = cfg.seed_list()[0]
    torch.manual_seed(seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out, cfg)
    train, val, test = split(load_pairs(cfg.data), cfg.sweep.test_fraction, seed, cfg.sweep.val_fraction)
    lm = lm if lm is not None else load_model(cfg)
    layers = model_layers(lm, cfg)
    text, ppl_cfg = None, None
    if cfg.datasets.corpus is not None:  # checked before the expensive stages
        text = Path(cfg.datasets.corpus).read_text(encoding="utf-8")
        ppl_cfg = PerplexityConfig([m for m in cfg.sweep.multipliers if m != 0], cfg.sweep.context,
                                   cfg.sweep.max_windows, positions=cfg.sweep.positions)
        windows(lm.tokenizer, text, ppl_cfg)
    baselines = prompting(cfg, train)
    sv = train_stage(lm, cfg, train, layers, results)
    summary: dict[str, Any] = {"n_train": len(train), "n_val": len(val), "n_test": len(test)}
    best_sv = behaviour_stage(lm, cfg, sv, val, test, results, summary)
    if baselines:
        prompt_stage(lm, baselines, test, results, summary)
    if cfg.datasets.side_data or cfg.datasets.capability:
        side_stage(lm, cfg, best_sv, results, summary)
    efficiency_stage(lm, cfg, best_sv, train, test, results, summary)
    if text is not None and ppl_cfg is not None:
        perplexity_stage(lm, best_sv, text, ppl_cfg, results, summary)
    if cfg.adversarial.items > 0:
        adversarial_stage(lm, cfg, best_sv, test, results, summary)
    if cfg.datasets.other_data or cfg.datasets.ood is not None or cfg.datasets.open:
        top = max(abs(m) for m in cfg.sweep.multipliers)
        rows = shift_stage(lm, cfg, best_sv, test, top, results, baselines)
        _plots().plot_shift(rows, out / "shift.png")
        steering = [r for r in rows if r.method == "steering"]
        summary["shift_effect"] = {r.name: r.effect for r in steering}
        summary["shift_ci95"] = {r.name: list(r.ci95) for r in steering}
        for b in baselines:
            mine = [r for r in rows if r.method == f"prompt:{b.name}"]
            summary[f"shift_effect_prompt_{b.name}"] = {r.name: r.effect for r in mine}
            summary[f"shift_ci95_prompt_{b.name}"] = {r.name: list(r.ci95) for r in mine}
    results.add("summary", summary)
    commit.write_text(out / "index.html", summary_html(results.data))
    return results.data


def _plots() -> Any:
    from cae.evaluate import plots

    return plots


def load_model(cfg: EvalConfig) -> Any:
    """The model named by ``cfg``, on its device and in its dtype."""
    from cae.model import load_language_model

    place = cfg.placement
    return load_language_model(cfg.model, place.dtype, place.device, place.device_map_value())


def model_layers(lm: Any, cfg: EvalConfig) -> list[int]:
    """``cfg.layers`` checked against the model (default: every decoder block)."""
    from cae.model import check_layers, decoder_layers

    layers = cfg.layers if cfg.layers is not None else list(range(len(decoder_layers(lm)[1])))
    return check_layers(lm, layers)


def train_stage(lm: Any, cfg: EvalConfig, train: list[Any], layers: list[int],
                results: Results) -> Any:
    """The CAA vector on the train split (normalised when asked), saved to ``out/vector``."""
    from cae.vector import SteeringVector

    logger.info("training on %d pairs at layers %s", len(train), layers)
    sv = SteeringVector.train(lm, train, layers, read=cfg.read, normalize=cfg.normalize)
    if cfg.normalize:
        results.add("norm_matched", {"residual_norm": sv.meta.extra["norm_matched"],
                                     "raw_norm": sv.meta.extra["raw_norms"]})
    sv.save(Path(cfg.out) / "vector")
    return sv


def behaviour_stage(lm: Any, cfg: EvalConfig, sv: Any, val: list[Any], test: list[Any],
                    results: Results, summary: dict[str, Any]) -> Any:
    """Layer sweep on the validation split; behaviour of the chosen layer on the test split.
    Returns the chosen layer's vector."""
    from cae.evaluate.behaviour import BehaviourConfig, behaviour, layer_sweep, single_layer
    from cae.evaluate.shift import mean_ci

    out = Path(cfg.out)
    bcfg = BehaviourConfig(cfg.sweep.multipliers, cfg.sweep.positions)
    sweep = layer_sweep(lm, val, sv, bcfg)
    results.add("layer_sweep", sweep)
    if sweep.warnings:
        results.add("warnings", [*results.data.get("warnings", []), *sweep.warnings])
    best_sv = single_layer(sv, sweep.best_layer)
    res = behaviour(lm, test, best_sv, bcfg)
    results.add("behaviour", res)
    _plots().plot_layer_sweep(sweep, out / "layer_sweep.png")
    _plots().plot_propensity(res, out / "propensity.png")
    keys = list(map(str, res.multipliers))
    summary.update({
        "best_layer": sweep.best_layer, "layer_ranking": sweep.ranking,
        "sweep_steerability": {str(k): r.steerability
                               for k, r in zip(sweep.layers, sweep.results, strict=True)},
        "anti_steerable_layers": sweep.anti_steerable_layers, "reversed": sweep.reversed,
        "steerability": res.steerability,
        "anti_steerable_fraction": res.anti_steerable_fraction,
        "mean_p_matching": dict(zip(keys, res.mean_p_matching, strict=True)),
        "p_matching_ci95": {k: list(mean_ci([row[i] for row in res.p_matching])[1])
                            for i, k in enumerate(keys)},
    })
    return best_sv


def prompting(cfg: EvalConfig, train: list[Any]) -> list[Any]:
    """The prompting baselines ``cfg`` asks for (examples: the first train pairs)."""
    from cae.evaluate.baselines import prompting_baselines

    p = cfg.prompting
    if p.examples > len(train):
        raise ValueError(f"{p.examples} prompt examples asked for but the train split has "
                         f"{len(train)} pairs")
    return prompting_baselines(p.instruction, p.instruction_not, train[:p.examples], p.separator)


def prompt_stage(lm: Any, baselines: list[Any], test: list[Any], results: Results,
                 summary: dict[str, Any]) -> None:
    """Every prompting baseline toward and away from the behaviour on the test split (no
    vector), beside the steered p(matching) of every multiplier."""
    from cae.evaluate.baselines import prompted_choice
    from cae.evaluate.behaviour import answer_items, propensities

    base = propensities(lm, lm.tokenizer, answer_items(lm.tokenizer, test))
    rows = [prompted_choice(lm, "in-distribution (held out)", test, b, toward, base)
            for b in baselines for toward in (True, False)]
    results.add("prompt_baseline", [asdict(r) for r in rows])
    summary["prompt_p_matching"] = {
        b.name: {d: r.steered for d, r in zip(("toward", "away"), rows[2 * i:2 * i + 2],
                                               strict=True)}
        for i, b in enumerate(baselines)}
    summary["prompt_ci95"] = {
        b.name: {d: list(r.ci95) for d, r in zip(("toward", "away"), rows[2 * i:2 * i + 2],
                                                 strict=True)}
        for i, b in enumerate(baselines)}


def side_stage(lm: Any, cfg: EvalConfig, best_sv: Any, results: Results,
               summary: dict[str, Any]) -> None:
    """The vector on unrelated behaviours and capability probes at every multiplier."""
    from cae.evaluate.baselines import side_effects
    from cae.evaluate.behaviour import BehaviourConfig
    from cae.pairs import load_pairs

    rows = side_effects(lm, best_sv, BehaviourConfig(cfg.sweep.multipliers, cfg.sweep.positions),
                        {Path(p).name: load_pairs(p) for p in cfg.datasets.side_data},
                        {Path(p).name: load_pairs(p) for p in cfg.datasets.capability})
    results.add("side_effects", [asdict(r) for r in rows])
    summary["side_effects"] = {
        r.name: {"metric": r.metric, "steerability": r.steerability,
                 "shift_at_top": r.shift_at_top, "shift_ci95": list(r.shift_ci95),
                 "mean_p_matching": dict(zip(map(str, r.multipliers), r.mean_p_matching,
                                             strict=True)),
                 "accuracy": dict(zip(map(str, r.multipliers), r.accuracy, strict=True))}
        for r in rows}


def efficiency_stage(lm: Any, cfg: EvalConfig, best_sv: Any, train: list[Any],
                     test: list[Any], results: Results, summary: dict[str, Any]) -> None:
    """Subsets of one half of the train split against a vector of the other half; every
    subset vector at the evaluated vector's length, effect at the largest multiplier."""
    from cae.evaluate.efficiency import EfficiencyConfig, model_efficiency

    layer = next(iter(best_sv.vectors))
    top = max(abs(m) for m in cfg.sweep.multipliers)
    eff = model_efficiency(lm, train, test, layer,
                           EfficiencyConfig(draws=cfg.sweep.draws, seed=cfg.seed_list()[0]), top,
                           cfg.sweep.positions, cfg.read, length=float(best_sv.vectors[layer].norm()))
    results.add("sample_efficiency", eff)
    _plots().plot_efficiency(eff, Path(cfg.out) / "efficiency.png")
    sizes = list(map(str, eff.sizes))
    summary.update({
        "n_flat_cosine": eff.n_flat_cosine, "n_flat_effect": eff.n_flat_effect,
        "efficiency_cosine": dict(zip(sizes, eff.mean_cosine, strict=True)),
        "efficiency_effect": dict(zip(sizes, eff.mean_effect, strict=True)),
        "efficiency_length_ratio": {n: sum(r) / len(r)
                                    for n, r in zip(sizes, eff.length_ratio, strict=True)},
        "efficiency_reference_cosine": eff.reference_cosine,
    })


def perplexity_stage(lm: Any, best_sv: Any, text: str, ppl_cfg: Any, results: Results,
                     summary: dict[str, Any]) -> None:
    """Perplexity of the corpus at every multiplier, the vector added at the run's rule."""
    from cae.evaluate.perplexity import perplexity_cost

    ppl = perplexity_cost(lm, text, best_sv, ppl_cfg)
    results.add("perplexity", ppl)
    _plots().plot_perplexity(ppl, Path(results.path).parent / "perplexity.png")
    summary["perplexity_baseline"] = ppl.baseline
    summary["perplexity_increase"] = dict(zip(map(str, ppl.multipliers), ppl.increase,
                                              strict=True))


def adversarial_stage(lm: Any, cfg: EvalConfig, best_sv: Any, test: list[Any],
                      results: Results, summary: dict[str, Any]) -> None:
    """The search on the first ``cfg.adversarial.items`` test items at the largest multiplier."""
    from cae.evaluate.adversarial import adversarial_search

    adv_cfg = cfg.adversarial_config()
    adv = adversarial_search(lm, test[:cfg.adversarial.items], best_sv, adv_cfg)
    results.add("adversarial", adv)
    n = len(adv.reversed)
    sign = 1.0 if adv_cfg.multiplier > 0 else -1.0
    summary["adversarial"] = {
        "success_rate": adv.success_rate,
        "reversed_before_search": sum(sign * p < 0 for p in adv.propensity_before) / n,
        "cross_entropy_before": sum(adv.cross_entropy_before) / n,
        "cross_entropy_after": sum(adv.cross_entropy_after) / n,
        "forward_rows_per_item": sum(adv.forward_rows) / n,
    }


def evaluate_seeds(cfg: EvalConfig, lm: Any = None) -> dict[str, Any]:
    """The run once per seed into ``cfg.out/seed-<s>/`` and ``cfg.out/seeds.json``: every
    summary number's mean and Student-t 95% interval over the seeds
    (``cae.evaluate.seeds.over_seeds``); the model is loaded once."""
    from dataclasses import replace

    from cae.evaluate.seeds import over_seeds

    lm = lm if lm is not None else load_model(cfg)
    per_seed = []
    for seed in cfg.seed_list():
        sub = replace(cfg, seed=seed, seeds=[], out=str(Path(cfg.out) / f"seed-{seed}"))
        per_seed.append(evaluate(sub, lm))
    data = {"config": asdict(cfg), "seeds": cfg.seed_list(),
            "summary": over_seeds([d["summary"] for d in per_seed]),
            "warnings": {str(s): d.get("warnings", [])
                         for s, d in zip(cfg.seed_list(), per_seed, strict=True)}}
    commit.write_json(Path(cfg.out, "seeds.json"), data)
    return {**data, "per_seed": per_seed}


def shift_stage(
    lm: Any, cfg: EvalConfig, sv: Any, test: list[Any], multiplier: float, results: Results,
    baselines: Sequence[Any] = (),
) -> list[Any]:
    """In- vs out-of-distribution rows, each set's steering row followed by its prompting
    baselines' rows (toward the behaviour), written to ``results`` after each set (a failing
    judge keeps the finished rows; its ``JudgeError.partial`` holds the set's scores so far)."""
    from cae.evaluate.baselines import prompted_choice, prompted_open
    from cae.evaluate.behaviour import answer_items, propensities
    from cae.evaluate.judge import EndpointJudge, load_judge_function
    from cae.evaluate.ood import load_ood_dir
    from cae.evaluate.shift import choice_effect, continuations, judged_effect, score_all
    from cae.pairs import load_pairs

    rows: list[Any] = []

    def choice_rows(name: str, pairs: list[Any]) -> None:
        base = propensities(lm, lm.tokenizer, answer_items(lm.tokenizer, pairs))
        rows.append(choice_effect(lm, name, pairs, sv, multiplier, cfg.sweep.positions, base))
        rows.extend(prompted_choice(lm, name, pairs, b, unsteered=base) for b in baselines)
        results.add("distribution_shift", [asdict(r) for r in rows])

    def open_rows(name: str, prompts: list[str], judge: Any) -> None:
        base = score_all(judge, prompts, continuations(lm, prompts, None, 0.0))
        rows.append(judged_effect(lm, name, prompts, sv, multiplier, judge,
                                  positions=cfg.sweep.positions, unsteered=base))
        rows.extend(prompted_open(lm, name, prompts, b, judge, unsteered=base)
                    for b in baselines)
        results.add("distribution_shift", [asdict(r) for r in rows])

    choice_rows("in-distribution (held out)", test)
    for path in cfg.datasets.other_data:
        choice_rows(Path(path).name, load_pairs(path))
    judge_fn = load_judge_function(cfg.judge.fn) if cfg.judge.fn is not None else None
    for path in cfg.datasets.open:
        prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()
                   if line.strip()]
        judge: Any = judge_fn or EndpointJudge(cfg.judge.url or "", cfg.judge.model,
                                               Path(path).stem, **cfg.judge.options())
        open_rows(f"open/{Path(path).name}", prompts, judge)
    if cfg.datasets.ood is not None and cfg.judge.url is not None:
        sets = [s for s in load_ood_dir(cfg.datasets.ood)
                if cfg.datasets.ood_behaviour is None or s.behaviour == cfg.datasets.ood_behaviour]
        if not sets:
            raise ValueError(f"{cfg.datasets.ood}: no OOD files for behaviour {cfg.datasets.ood_behaviour!r}")
        for ood_set in sets:
            judge = EndpointJudge(cfg.judge.url, cfg.judge.model, ood_set.behaviour,
                                  ood_set.prompts[0].criteria or "", **cfg.judge.options())
            open_rows(f"{ood_set.kind}/{ood_set.behaviour}-{ood_set.length}",
                      [p.prompt for p in ood_set.prompts], judge)
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
