"""The report's view of shared LoRA A: how far the sites' A moved, per arm that shares it and round.

Read from each arm's `lora_a_drift.csv` (written by the coordinator: `federation/server/drift.py`);
one table, so that a split-lora result can be read against how far its shared A moved at all.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from petite_fl.federation.server.arms import arm_dir
from petite_fl.federation.server.drift import GLOBAL


def drift_rows(folder: Path, data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every arm's and seed's rows of `lora_a_drift.csv` ({arm: ArmRuns}), with the arm and seed: from the
    arm's folder in the comparison's `folder` (what `--report` has), else from where its run wrote."""
    out = []
    for arm, runs in data.items():
        for seed, summary in runs.runs.items():
            places = [arm_dir(folder, arm, seed), *([Path(summary["run_dir"])] if summary.get("run_dir") else [])]
            path = next((p / "lora_a_drift.csv" for p in places if (p / "lora_a_drift.csv").is_file()), None)
            if path is None:
                continue
            with open(path, newline="") as fh:
                out += [{"arm": arm, "seed": seed, "round": int(r["round"]), "site": r["site"],
                         "a_from_init": float(r["a_from_init"]), "a_from_round": float(r["a_from_round"]),
                         "a_to_average": float(r["a_to_average"]) if r.get("a_to_average") else None}
                        for r in csv.DictReader(fh)]
    return out


def _span(values: list[float]) -> str:
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return f"{lo:.3g}" if lo == hi else f"{lo:.3g}–{hi:.3g}"


def drift_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The report's section: per arm and round, the sites' and the average's distance of A from its
    initialisation and from the round's starting global A (range over sites and seeds). Empty when
    no arm shares LoRA A."""
    if not rows:
        return []
    lines = ["## How far shared LoRA A moved", "",
             "For arms that share LoRA's A tensors (all of them together, Frobenius norm): the sites' uploaded "
             "A after each round, ‖Aᵢ − A₀‖/‖A₀‖ from its initialisation A₀ and ‖Aᵢ − A_g‖/‖A_g‖ from the global "
             "A_g the round started from, and the same for the averaged A; then ‖Aᵢ − Ā‖/‖A_g‖, how far the "
             "average Ā each site gets back is from what it sent (close to the round's own move: averaging undid "
             "it; much smaller: the sites moved A alike). Ranges over sites and seeds; per site and round: "
             "`lora_a_drift.csv`.", "",
             "| arm | round | sites: from A₀ | sites: in the round | average: from A₀ | average: in the round "
             "| sites: from the average |", "|---|---:|---:|---:|---:|---:|---:|"]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        for rnd in sorted({r["round"] for r in rows if r["arm"] == arm}):
            here = [r for r in rows if r["arm"] == arm and r["round"] == rnd]
            sites = [r for r in here if r["site"] != GLOBAL]
            avg = [r for r in here if r["site"] == GLOBAL]
            lines.append(f"| {arm} | {rnd} | {_span([r['a_from_init'] for r in sites])} | "
                         f"{_span([r['a_from_round'] for r in sites])} | {_span([r['a_from_init'] for r in avg])} | "
                         f"{_span([r['a_from_round'] for r in avg])} | "
                         f"{_span([r['a_to_average'] for r in sites if r['a_to_average'] is not None])} |")
    return lines
