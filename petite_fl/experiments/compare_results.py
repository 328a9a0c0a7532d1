"""The comparison's results: every arm's runs by seed, and paired differences between arms.

Each arm's run writes `summary.json` with every test subject's metrics by position in
the split. For an arm A and a baseline B the paired difference A − B of each (seed,
scanner, subject) is summarised by `petite_fl.statistics` per scanner, over scanners with
a fixed-effect interval (these scanners) and a random-effects one (scanners like these),
each with a verdict; the worst scanner is named beside them. An arm that lost a site is
compared on the sites both arms have; a seed that failed is left out and named; a metric
a site does not report (no ground truth on real data) is compared where it is reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petite_fl.errors import PetiteError
from petite_fl.experiments.compare_endpoints import ALL, TARGET_VERDICT, TRUTH_VERDICT, Primary
from petite_fl.federation.server.arms import arm_dir
from petite_fl.statistics import Interval, fixed_over_scanners, per_scanner, random_over_scanners

PRIMARY, SECONDARY = "primary", "secondary"


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

    def reports(self, site: str, metric: str) -> bool:
        """Every seed's every test subject at `site` has `metric`."""
        rows = [r for run in self.runs.values() for r in (run["sites"].get(site) or {}).get("test_subjects") or []]
        return bool(rows) and all(r.get(metric) is not None for r in rows)

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


def verdict_metric(data: dict[str, ArmRuns], sites: list[str]) -> str:
    """PSNR against the truth when every arm reports it at every site it has results for, else the target's."""
    pairs = [(a, s) for a in data.values() for s in sites if s in a.sites()]
    return TRUTH_VERDICT if pairs and all(a.reports(s, TRUTH_VERDICT) for a, s in pairs) else TARGET_VERDICT


@dataclass
class Comparison:
    """arm − base in one metric: per scanner, over scanners (fixed and random), what was left out."""

    per_site: dict[str, Interval]
    fixed: Interval | None
    random: Interval | None  # None below two scanners
    left_out: list[str]
    seeds_out: list[int]

    def worst(self, higher_is_better: bool | None) -> str | None:
        """The scanner whose mean Δ is worst (picked by its estimate); None for a metric without direction."""
        if higher_is_better is None or not self.per_site:
            return None
        pick = min if higher_is_better else max
        return pick(self.per_site, key=lambda s: self.per_site[s].mean)


def differences(data: dict[str, ArmRuns], arm: str, base: str, seeds: list[int], sites: list[str],
                metric: str) -> Comparison:
    """`arm` − `base` in `metric` on the sites both have (and report the metric at), the seeds both finished."""
    both = [seed for seed in seeds if data[arm].has(seed) and data[base].has(seed)]
    strata = {}
    for site in sites if both else []:
        if not all(site in data[a].sites() and data[a].reports(site, metric) for a in (arm, base)):
            continue
        a = np.stack([data[arm].subjects(seed, site, metric) for seed in both])
        b = np.stack([data[base].subjects(seed, site, metric) for seed in both])
        if a.shape != b.shape:  # another split size: not the same subjects, nothing to pair
            continue
        strata[site] = a - b
    return Comparison({site: per_scanner(d) for site, d in strata.items()},
                      fixed_over_scanners(strata) if strata else None,
                      random_over_scanners(strata) if len(strata) > 1 else None,
                      [s for s in sites if s not in strata], [seed for seed in seeds if seed not in both])


def _row(arm: str, base: str, metric: str, site: str, iv: Interval, margin: float, cmp: Comparison,
         endpoint: str = SECONDARY, sites: list[str] | None = None) -> dict[str, Any]:
    m = ALL[metric]
    low, high = iv.bounds()
    low90, high90 = iv.bounds(0.90)
    over = iv.kind != "per scanner"
    worst = cmp.worst(m.higher_is_better) if over else None
    return {"arm": arm, "baseline": base, "metric": metric, "endpoint": endpoint, "interval": iv.kind, "site": site,
            "sites": ",".join(sites if sites is not None else list(cmp.per_site) if over else [site]),
            "mean": iv.mean, "low": low, "high": high, "low90": low90, "high90": high90, "se": iv.se, "df": iv.df,
            "margin": m.margin(margin), "subjects": iv.subjects, "seeds": iv.seeds, "scanners": iv.scanners,
            "method": iv.method, "verdict": iv.verdict(m.higher_is_better, m.margin(margin)),
            "worst_site": worst or "", "worst_mean": cmp.per_site[worst].mean if worst else None,
            "sites_left_out": ",".join(cmp.left_out) if over else "",
            "seeds_left_out": ",".join(map(str, cmp.seeds_out))}


def all_differences(data: dict[str, ArmRuns], arms: list[str], seeds: list[int], sites: list[str],
                    baselines: list[str], margin: float) -> list[dict[str, Any]]:
    """Every arm against every baseline, per site and over sites (fixed, random), in every metric reported."""
    rows = []
    for base in baselines:
        for arm in arms:
            if arm == base:
                continue
            for metric in ALL:
                cmp = differences(data, arm, base, seeds, sites, metric)
                rows += [_row(arm, base, metric, site, iv, margin, cmp) for site, iv in cmp.per_site.items()]
                rows += [_row(arm, base, metric, key, iv, margin, cmp)
                         for key, iv in (("fixed", cmp.fixed), ("random", cmp.random)) if iv is not None]
    return rows


def primary_difference(data: dict[str, ArmRuns], primary: Primary, seeds: list[int], sites: list[str],
                       margin: float) -> tuple[dict[str, Any] | None, str]:
    """(the primary endpoint's row, or None, and why not)."""
    for arm in (primary.arm, primary.baseline):
        if arm not in data:
            return None, f"{arm} has no results"
    where = list(primary.sites or sites)
    cmp = differences(data, primary.arm, primary.baseline, seeds, where, primary.metric)
    if cmp.left_out:
        return None, (f"{primary.metric} is not paired at {', '.join(cmp.left_out)} (no results, or the metric "
                      "is not reported there)")
    iv = cmp.fixed if primary.interval == "fixed" else cmp.random
    if iv is None:
        return None, "too few sites for a random-effects interval"
    return _row(primary.arm, primary.baseline, primary.metric, "primary", iv, margin, cmp, PRIMARY, where), ""
