"""The comparison's results: every arm's runs by seed, and paired differences between arms.

Each arm's run writes `summary.json` with every test subject's metrics by position in
the split. For an arm A and a baseline B (local PEFT, no fine-tuning) the paired
difference A − B of each (seed, scanner, subject) is summarised per scanner and pooled
over scanners by `petite_fl.statistics` (mean, 95 % interval, verdict). An arm that lost
a site is compared on the sites both arms have; a seed that failed is left out and named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petite_fl.errors import PetiteError
from petite_fl.federation.server.arms import arm_dir
from petite_fl.statistics import Interval, paired_interval

VERDICT_METRIC = "psnr_fg"
#: (metric, label, higher is better, digits) of the difference tables, verdict metric first
DIFF_METRICS = (("psnr_fg", "head-mask PSNR (dB)", True, 2), ("ssim_fg", "head-mask SSIM", True, 4),
                ("psnr", "whole-volume PSNR (dB)", True, 2))


@dataclass
class ArmRuns:
    """One arm's summaries by seed (an arm with zero rounds runs once and stands for every seed)."""

    arm: str
    runs: dict[int, dict[str, Any]]

    @property
    def seedless(self) -> bool:
        """Zero rounds: no training, so one run stands for every seed."""
        return int(self.first.get("rounds", 1)) == 0

    def has(self, seed: int) -> bool:
        return seed in self.runs or self.seedless

    def seed(self, seed: int) -> dict[str, Any]:
        """That seed's run; never another seed's (a failed seed is left out, not replaced)."""
        if seed in self.runs:
            return self.runs[seed]
        if self.seedless:
            return self.first
        raise KeyError(f"{self.arm} has no run for seed {seed}")

    @property
    def first(self) -> dict[str, Any]:
        return next(iter(self.runs.values()))

    def sites(self) -> set[str]:
        """Sites with per-subject test results in every seed."""
        sets = [{s for s, v in r["sites"].items() if v.get("test_subjects")} for r in self.runs.values()]
        return set.intersection(*sets) if sets else set()

    def subjects(self, seed: int, site: str, metric: str) -> np.ndarray:
        rows = self.seed(seed)["sites"][site]["test_subjects"]
        return np.array([r[metric] for r in sorted(rows, key=lambda r: r["position"])], dtype=np.float64)


def load_arms(folder: Path, arms: list[str], seeds: list[int]) -> tuple[dict[str, ArmRuns], dict[str, str]]:
    """({arm: its runs}, {arm: why it has none}) from <folder>/arms/<arm>/seed-<s>/."""
    out, missing = {}, {}
    for arm in arms:
        runs = {}
        for seed in seeds:
            path = arm_dir(folder, arm, seed) / "summary.json"
            if path.is_file():
                runs[seed] = json.loads(path.read_text())
        if runs:
            out[arm] = ArmRuns(arm, runs)
        else:
            err = next((arm_dir(folder, arm, s) / "error.json" for s in seeds
                        if (arm_dir(folder, arm, s) / "error.json").is_file()), None)
            missing[arm] = json.loads(err.read_text())["error"] if err else f"no results in {folder / 'arms' / arm}"
    if not out:
        raise PetiteError(f"no arm has results in {folder / 'arms'}: "
                          + "; ".join(f"{a}: {w}" for a, w in missing.items()))
    return out, missing


def differences(data: dict[str, ArmRuns], arm: str, base: str, seeds: list[int], sites: list[str],
                metric: str) -> tuple[dict[str, Interval], Interval | None, list[str], list[int]]:
    """({site: interval}, pooled interval, sites left out, seeds left out) of `arm` − `base` in `metric`.

    Only the seeds both arms completed are paired: a failed seed is left out and named.
    """
    common = [s for s in sites if s in data[arm].sites() and s in data[base].sites()]
    both = [seed for seed in seeds if data[arm].has(seed) and data[base].has(seed)]
    strata = {}
    for site in common if both else []:
        a = np.stack([data[arm].subjects(seed, site, metric) for seed in both])
        b = np.stack([data[base].subjects(seed, site, metric) for seed in both])
        if a.shape != b.shape:  # another split size: not the same subjects, nothing to pair
            continue
        strata[site] = a - b
    per_site = {site: paired_interval({site: d}) for site, d in strata.items()}
    pooled = paired_interval(strata) if strata else None
    return per_site, pooled, [s for s in sites if s not in strata], [seed for seed in seeds if seed not in both]


def all_differences(data: dict[str, ArmRuns], arms: list[str], seeds: list[int], sites: list[str],
                    baselines: list[str]) -> list[dict[str, Any]]:
    """Every arm against every baseline, per site and pooled, in every metric of DIFF_METRICS."""
    rows = []
    for base in baselines:
        for arm in arms:
            if arm == base:
                continue
            for metric, _, higher, _ in DIFF_METRICS:
                per_site, pooled, left_out, seeds_out = differences(data, arm, base, seeds, sites, metric)
                for where, iv in [*per_site.items(), ("pooled", pooled)]:
                    if iv is None:
                        continue
                    rows.append({"arm": arm, "baseline": base, "metric": metric, "site": where, "mean": iv.mean,
                                 "low": iv.low, "high": iv.high, "subjects": iv.subjects, "seeds": iv.seeds,
                                 "method": iv.method, "verdict": iv.verdict(higher),
                                 "sites_left_out": ",".join(left_out) if where == "pooled" else "",
                                 "seeds_left_out": ",".join(map(str, seeds_out))})
    return rows
