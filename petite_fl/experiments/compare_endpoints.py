"""What a comparison claims, fixed before anything is trained: its metrics, the equivalence
margin and the primary endpoint.

A site reads one answer first. The **primary endpoint** (`compare.primary`: an arm against
a baseline, on named sites, in one metric, with a fixed- or random-effects interval) is
named in the preset's config and reported first with its interval and verdict; every
other difference is secondary. The **verdict metric** is head-mask PSNR against the
ground truth when every compared site has it (simulation), otherwise against the target
(real data). The **margin** (`compare.margin`, default 0.1 dB) applies to the PSNR
metrics, all in dB; SSIM, NRMSE and the regional uptake ratio have no equivalence verdict
because no margin for them is agreed here (an SSIM or ratio margin is a clinical decision
the config would have to make), so they read better / worse / no detectable difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petite_fl.errors import ConfigError
from petite_fl.training.inference import METRICS

try:
    from petite_fl.training.inference import TRUTH_METRICS
except ImportError:  # the metrics against the noise-free image land with issue 25's ground-truth work; same names
    TRUTH_METRICS = ("truth_psnr_fg", "truth_ssim_fg", "truth_nrmse_fg", "truth_psnr", "ratio_bias", "ratio_abs_err")

#: every per-subject metric a site may report (those against the truth only in simulation)
SUBJECT_METRICS = (*METRICS, *TRUTH_METRICS)
DEFAULT_MARGIN = 0.1  # dB
TRUTH_VERDICT, TARGET_VERDICT = "truth_psnr_fg", "psnr_fg"
INTERVALS = ("fixed", "random")


@dataclass(frozen=True)
class Metric:
    """A per-subject test metric as the comparison reads it."""

    key: str
    label: str
    higher_is_better: bool | None  # None: a signed quantity with no better direction
    digits: int
    unit: str  # "dB" metrics take compare.margin; the others have no equivalence verdict

    def margin(self, db_margin: float) -> float | None:
        return db_margin if self.unit == "dB" else None


#: every metric a difference is computed for, in the order of the report (verdict candidates first)
ALL = {m.key: m for m in (
    Metric("truth_psnr_fg", "head-mask PSNR vs truth (dB)", True, 2, "dB"),
    Metric("psnr_fg", "head-mask PSNR vs target (dB)", True, 2, "dB"),
    Metric("ratio_abs_err", "regional uptake-ratio error |bias| vs truth (%)", False, 2, "%"),
    Metric("ratio_bias", "regional uptake-ratio bias vs truth (%)", None, 2, "%"),
    Metric("truth_ssim_fg", "head-mask SSIM vs truth", True, 4, ""),
    Metric("ssim_fg", "head-mask SSIM vs target", True, 4, ""),
    Metric("truth_nrmse_fg", "head-mask NRMSE vs truth", False, 4, ""),
    Metric("nrmse_fg", "head-mask NRMSE vs target", False, 4, ""),
    Metric("truth_psnr", "whole-volume PSNR vs truth (dB)", True, 2, "dB"),
    Metric("psnr", "whole-volume PSNR vs target (dB)", True, 2, "dB"),
    Metric("ssim", "whole-volume SSIM vs target", True, 4, ""),
    Metric("nrmse", "whole-volume NRMSE vs target", False, 4, ""),
)}


@dataclass(frozen=True)
class Primary:
    """The one comparison a preset commits to before it runs."""

    arm: str
    baseline: str
    sites: tuple[str, ...] | None  # None: every site of the run
    metric: str
    interval: str  # "fixed" (these sites' mean) or "random" (sites like these)

    def describe(self, sites: Sequence[str]) -> str:
        return (f"{self.arm} vs {self.baseline} on {', '.join(self.sites or sites)}, "
                f"{ALL[self.metric].label}, {self.interval} effect over those sites")


def margin_of(cfg: DictConfig) -> float:
    """compare.margin, checked: a number > 0 (the equivalence margin in dB)."""
    value = cfg.compare.get("margin", DEFAULT_MARGIN)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ConfigError(f"compare.margin must be a number > 0 (the equivalence margin in dB of the verdict "
                          f"metric), got {value!r}")
    return float(value)


def primary_of(cfg: DictConfig) -> Primary | None:
    """compare.primary as a Primary (None when the preset names none), its shape checked."""
    raw = cfg.compare.get("primary")
    if raw is None:
        return None
    spec: Any = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else raw
    if not isinstance(spec, Mapping) or not {"arm", "baseline", "metric"} <= set(spec):
        raise ConfigError("compare.primary must be a mapping with arm, baseline and metric "
                          f"(and optionally sites, interval), got {spec!r}")
    unknown = set(spec) - {"arm", "baseline", "metric", "sites", "interval"}
    if unknown:
        raise ConfigError(f"compare.primary has unknown key(s) {', '.join(sorted(unknown))} "
                          "(arm, baseline, metric, sites, interval)")
    sites = spec.get("sites")
    if sites is not None and (isinstance(sites, str) or not isinstance(sites, Sequence) or not sites):
        raise ConfigError(f"compare.primary.sites must be a non-empty list of sites (or null: all), got {sites!r}")
    return Primary(str(spec["arm"]), str(spec["baseline"]), tuple(map(str, sites)) if sites else None,
                   str(spec["metric"]), str(spec.get("interval") or "fixed"))


def check_endpoints(cfg: DictConfig, arms: Sequence[str], sites: Sequence[str],
                    truth_sites: Sequence[str]) -> None:
    """The margin and the primary endpoint, against this run's arms and sites: one line each, before training.

    `truth_sites`: the sites that will have a ground truth (simulated scanners).
    """
    margin_of(cfg)
    p = primary_of(cfg)
    if p is None:
        return
    for key, arm in (("arm", p.arm), ("baseline", p.baseline)):
        if arm not in arms:
            raise ConfigError(f"compare.primary.{key} {arm} is not an arm of this run ({', '.join(arms)}): add it "
                              "with --arms, or name no primary endpoint (compare.primary=null)")
    if p.arm == p.baseline:
        raise ConfigError(f"compare.primary compares {p.arm} with itself: arm and baseline must differ")
    missing = [s for s in p.sites or () if s not in sites]
    if missing:
        raise ConfigError(f"compare.primary.sites: {', '.join(missing)} not in this run ({', '.join(sites)})")
    if p.metric not in ALL:
        raise ConfigError(f"compare.primary.metric {p.metric} is unknown (one of {', '.join(ALL)})")
    no_truth = [s for s in p.sites or sites if s not in truth_sites]
    if p.metric in TRUTH_METRICS and no_truth:
        raise ConfigError(f"compare.primary.metric {p.metric} is measured against the ground truth, which "
                          f"{', '.join(no_truth)} do(es) not have (simulated scanners only): use "
                          f"{p.metric.removeprefix('truth_') if p.metric.startswith('truth_') else 'psnr_fg'} "
                          "or other sites")
    if p.interval not in INTERVALS:
        raise ConfigError(f"compare.primary.interval must be fixed or random, got {p.interval}")
    if p.interval == "random" and len(p.sites or sites) < 2:
        raise ConfigError("compare.primary.interval random needs at least two sites (the site is its unit)")
