"""The tables of docs/cae-findings.md, printed from a ``make cae-findings`` output directory.

Every number is read from ``DIR/<behaviour>/organism_<size>/seeds.json`` (mean over seeds and
its Student-t 95% interval, ``cae.evaluate.seeds``), the per-seed ``results.json`` files
(item intervals) and ``DIR/<behaviour>/sizes.json``; nothing is computed here but means of
item-interval half-widths over seeds.

Run: ``python benchmarks/cae_findings.py findings-out > tables.md``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SIZES = ("tiny", "small", "medium")
BEHAVIOURS = ("kind", "power")


def load(root: Path, behaviour: str, size: str) -> dict[str, Any]:
    """``seeds.json`` of one run (its ``summary`` holds mean / ci95 / values per number)."""
    return json.loads((root / behaviour / f"organism_{size}" / "seeds.json").read_text())


def per_seed(root: Path, behaviour: str, size: str) -> list[dict[str, Any]]:
    """Every seed's ``results.json`` summary."""
    base = root / behaviour / f"organism_{size}"
    return [json.loads(p.read_text())["summary"] for p in sorted(base.glob("seed-*/results.json"))]


def fmt(cell: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    """``mean [lo, hi]`` over seeds."""
    if not cell or "mean" not in cell or not isinstance(cell["mean"], float | int):
        return "n/a"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    lo, hi = cell["ci95"]
    return f"{f.format(cell['mean'])} [{f.format(lo)}, {f.format(hi)}]"


def item_half(summaries: list[dict[str, Any]], key: str, name: str) -> str:
    """Mean over seeds of the item interval's half-width (``summary[key][name]``)."""
    halves = [(s[key][name][1] - s[key][name][0]) / 2 for s in summaries if name in s.get(key, {})]
    return f"±{sum(halves) / len(halves):.3f}" if halves else "n/a"


def behaviour_table(root: Path) -> list[str]:
    out = ["| behaviour | size | layer per seed | steerability | anti-steerable items | "
           "anti-steerable layers (seed 0) | p at m = -0.5 | 0 | +0.5 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for b in BEHAVIOURS:
        for size in SIZES:
            s = load(root, b, size)["summary"]
            runs = per_seed(root, b, size)
            p = s["mean_p_matching"]
            out.append(f"| {b} | {size} | {s['best_layer']['values']} | "
                       f"{fmt(s['steerability'], 2)} | {fmt(s['anti_steerable_fraction'], 2)} | "
                       f"{runs[0]['anti_steerable_layers']} | {fmt(p['-0.5'])} | "
                       f"{fmt(p['0.0'])} | {fmt(p['0.5'])} |")
    return out


def prompting_table(root: Path) -> list[str]:
    out = ["| behaviour | size | steered m = -0.5 / +0.5 | instruction away / toward | "
           "2 examples away / toward |", "|---|---|---|---|---|"]
    for b in BEHAVIOURS:
        for size in SIZES:
            s = load(root, b, size)["summary"]
            p, q = s["mean_p_matching"], s.get("prompt_p_matching", {})
            cells = [f"{fmt(q[k]['away'])} / {fmt(q[k]['toward'])}" if k in q else "n/a"
                     for k in ("instruction", "examples")]
            out.append(f"| {b} | {size} | {fmt(p['-0.5'])} / {fmt(p['0.5'])} | "
                       f"{cells[0]} | {cells[1]} |")
    return out


def shift_table(root: Path) -> list[str]:
    sets = [("in-distribution (held out)", "held-out A/B"), ("{b}-option.jsonl", "option 1/2"),
            ("{b}-statement.jsonl", "yes/no statements"), ("open/{b}-open.txt", "open-ended (judge)")]
    out = ["| behaviour | size | " + " | ".join(label for _, label in sets) + " |",
           "|---|---|" + "---|" * len(sets)]
    for b in BEHAVIOURS:
        for size in SIZES:
            s = load(root, b, size)["summary"]
            runs = per_seed(root, b, size)
            cells = []
            for key, _ in sets:
                name = key.format(b=b)
                steer = fmt(s["shift_effect"].get(name), 3, True)
                prompt = fmt(s.get("shift_effect_prompt_instruction", {}).get(name), 2, True)
                cells.append(f"{steer} (items {item_half(runs, 'shift_ci95', name)}); "
                             f"prompt {prompt}")
            out.append(f"| {b} | {size} | " + " | ".join(cells) + " |")
    return out


def unsteered_open(root: Path) -> list[str]:
    out = ["| behaviour | size | open-ended judge score unsteered (seed 0) |", "|---|---|---|"]
    for b in BEHAVIOURS:
        for size in SIZES:
            res = json.loads((root / b / f"organism_{size}" / "seed-0" / "results.json")
                             .read_text())
            row = next(r for r in res["distribution_shift"]
                       if r["name"].startswith("open/") and r["method"] == "steering")
            out.append(f"| {b} | {size} | {row['unsteered']:+.2f} -> steered {row['steered']:+.2f} |")
    return out


def efficiency_table(root: Path) -> list[str]:
    out = ["| behaviour | size | cosine to the disjoint-half vector, n = 1 / 4 / 16 / 48 "
           "(ceiling) | length-matched effect, n = 1 / 4 / 16 / 48 | own length / full, n = 1 | "
           "n_flat cosine per seed | n_flat effect per seed |", "|---|---|---|---|---|---|---|"]
    for b in BEHAVIOURS:
        for size in SIZES:
            s = load(root, b, size)["summary"]
            cos, eff = s["efficiency_cosine"], s["efficiency_effect"]
            ns = [n for n in ("1", "4", "16", "48") if n in cos]
            out.append(
                f"| {b} | {size} | " + " / ".join(f"{cos[n]['mean']:.2f}" for n in ns)
                + f" ({s['efficiency_reference_cosine']['mean']:.2f}) | "
                + " / ".join(f"{eff[n]['mean']:.2f}" for n in ns)
                + f" | {s['efficiency_length_ratio']['1']['mean']:.1f} | "
                f"{s['n_flat_cosine']['values']} | {s['n_flat_effect']['values']} |")
    return out


def adversarial_table(root: Path) -> list[str]:
    out = ["| behaviour | size | reversed before the search | reversed after | "
           "cross-entropy before -> after | forward rows / item |", "|---|---|---|---|---|---|"]
    for b in BEHAVIOURS:
        for size in SIZES:
            a = load(root, b, size)["summary"].get("adversarial")
            if not a:
                continue
            out.append(f"| {b} | {size} | {fmt(a['reversed_before_search'], 2)} | "
                       f"{fmt(a['success_rate'], 2)} | {a['cross_entropy_before']['mean']:.2f} -> "
                       f"{a['cross_entropy_after']['mean']:.2f} | "
                       f"{a['forward_rows_per_item']['mean']:.0f} |")
    return out


def perplexity_table(root: Path) -> list[str]:
    ms = ["-0.5", "-0.25", "-0.1", "0.1", "0.25", "0.5"]
    out = ["| behaviour | size | unsteered | " + " | ".join(f"m = {m}" for m in ms) + " |",
           "|---|---|---|" + "---|" * len(ms)]
    for b in BEHAVIOURS:
        for size in SIZES:
            s = load(root, b, size)["summary"]
            inc = s["perplexity_increase"]
            out.append(f"| {b} | {size} | {s['perplexity_baseline']['mean']:.2f} | "
                       + " | ".join(f"{100 * inc[m]['mean']:+.1f}% [{100 * inc[m]['ci95'][0]:+.1f}, "
                                    f"{100 * inc[m]['ci95'][1]:+.1f}]" for m in ms) + " |")
    return out


def sizes_table(root: Path) -> list[str]:
    out = ["| behaviour | size | multiplier for +0.05 | perplexity increase there | per seed |",
           "|---|---|---|---|---|"]
    for b in BEHAVIOURS:
        data = json.loads((root / b / "sizes.json").read_text())
        for size in SIZES:
            s = data["over_seeds"][f"organism:{size}"]
            vals = s["perplexity_increase_at_shift"]["values"]
            out.append(f"| {b} | {size} | {fmt(s['multiplier_at_shift'])} | "
                       f"{fmt(s['perplexity_increase_at_shift'], 3, True)} | "
                       + ", ".join("none" if v is None else f"{100 * v:+.1f}%" for v in vals)
                       + " |")
    return out


def side_table(root: Path) -> list[str]:
    out = ["| vector | size | other behaviour: p(matching) at m = -0.5 / 0 / +0.5 | "
           "quiz accuracy at m = -0.5 / 0 / +0.5 |", "|---|---|---|---|"]
    for b in BEHAVIOURS:
        other = "power" if b == "kind" else "kind"
        for size in SIZES:
            side = load(root, b, size)["summary"].get("side_effects", {})
            row = side.get(f"side-{other}.jsonl")
            quiz = side.get("quiz.jsonl")
            if not row or not quiz:
                continue
            p, acc = row["mean_p_matching"], quiz["accuracy"]
            out.append(f"| {b} | {size} | " + " / ".join(fmt(p[m]) for m in ("-0.5", "0.0", "0.5"))
                       + " | " + " / ".join(fmt(acc[m], 2) for m in ("-0.5", "0.0", "0.5"))
                       + " |")
    return out


TABLES = {"behaviour": behaviour_table, "prompting": prompting_table, "shift": shift_table,
          "open_unsteered": unsteered_open, "efficiency": efficiency_table,
          "adversarial": adversarial_table, "perplexity": perplexity_table,
          "sizes": sizes_table, "side_effects": side_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the FINDINGS directory of make cae-findings")
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    args = parser.parse_args()
    for name in args.tables:
        sys.stdout.write(f"\n### {name}\n\n" + "\n".join(TABLES[name](args.root)) + "\n")


if __name__ == "__main__":
    main()
