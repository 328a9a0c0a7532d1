"""Paired comparisons with their uncertainty: is arm A better than arm B on these subjects?

Every difference the comparison reports is a mean of paired per-subject differences
(same test subject, same scanner, same seed, two arms) with a 95 % confidence interval:

- **t-interval over subjects and seeds** while a scanner has fewer than `BOOTSTRAP_MIN`
  test subjects (every preset here): the squared standard error is the variance of the
  per-subject means (over seeds) over n plus the variance of the per-seed means (over
  subjects) over S — a seed effect shared by all subjects widens it, and the residual is
  counted twice, which errs wide — with Welch–Satterthwaite degrees of freedom. With one
  seed it is Student's one-sample t over subjects (tested against `scipy.stats`). A
  percentile bootstrap of few values is too narrow: with 6 subjects its 95 % interval is
  about 0.7 of the t-interval's width, i.e. ~85 % coverage;
- **two-level bootstrap** (seeds, then subjects within each scanner; percentile interval)
  from `BOOTSTRAP_MIN` subjects per scanner on, so that both training randomness and the
  choice of test subjects widen the interval, and scanners keep their sizes (stratified).
  Hand-written because `scipy.stats.bootstrap` resamples each sample independently but has
  no nested (seeds × subjects) resampling; with one seed it is scipy's stratified bootstrap
  (tested).

A verdict reads the interval and nothing else: *better* when it lies above zero, *worse*
below, and otherwise *no detectable difference at this sample size* — not "equal".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_MIN = 20  # test subjects per scanner below which the t-interval is used
RESAMPLES = 10_000
BETTER, WORSE, UNCLEAR = "better", "worse", "no detectable difference at this sample size"


@dataclass(frozen=True)
class Interval:
    """Mean paired difference and its confidence interval."""

    mean: float
    low: float
    high: float
    subjects: int  # distinct test subjects behind it
    seeds: int
    method: str  # "t", "bootstrap" or "none" (too few subjects for any interval)

    def verdict(self, higher_is_better: bool = True) -> str:
        if not np.isfinite(self.low) or not np.isfinite(self.high):
            return UNCLEAR
        if self.low > 0:
            return BETTER if higher_is_better else WORSE
        if self.high < 0:
            return WORSE if higher_is_better else BETTER
        return UNCLEAR

    def text(self, digits: int = 2) -> str:
        """'+0.42 [+0.10, +0.74]'."""
        if not np.isfinite(self.low):
            return f"{self.mean:+.{digits}f} [–]"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of Student's t-interval; NaN bounds for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if values.size else float("nan")
    if values.size < 2:
        return mean, float("nan"), float("nan")
    sem = float(values.std(ddof=1)) / np.sqrt(values.size)
    if sem == 0.0:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, df=values.size - 1)) * sem
    return mean, mean - half, mean + half


def seeds_t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) over a (seeds, subjects) array: see the module docstring.

    With one seed, `t_interval` of the subjects; NaN bounds with fewer than two subjects.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    n_seeds, n = values.shape
    if n_seeds == 1 or n < 2:
        return t_interval(values.mean(axis=0), confidence)
    mean = float(values.mean())
    parts = [(float(values.mean(axis=0).var(ddof=1)) / n, n - 1),          # subjects
             (float(values.mean(axis=1).var(ddof=1)) / n_seeds, n_seeds - 1)]  # seeds
    var = sum(v for v, _ in parts)
    if var == 0.0:
        return mean, mean, mean
    df = var ** 2 / sum(v ** 2 / d for v, d in parts)  # Welch–Satterthwaite
    half = float(stats.t.ppf(0.5 + confidence / 2, df=df)) * np.sqrt(var)
    return mean, mean - half, mean + half


def two_level_bootstrap(strata: Mapping[str, np.ndarray], confidence: float = CONFIDENCE,
                        resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean over every (seed, subject) cell.

    `strata` maps a scanner to its differences, shape (seeds, subjects); every scanner has
    the same seeds. Each resample draws the seeds with replacement, then within each
    scanner its subjects with replacement.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in strata.values()]
    n_seeds = arrays[0].shape[0]
    if any(a.ndim != 2 or a.shape[0] != n_seeds for a in arrays):
        raise ValueError("every stratum must be a (seeds, subjects) array with the same seeds")
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    total = np.zeros(resamples)
    count = 0
    for a in arrays:
        subjects = rng.integers(0, a.shape[1], size=(resamples, a.shape[1]))
        total += a[seeds[:, :, None], subjects[:, None, :]].sum(axis=(1, 2))
        count += a.size
    means = total / count
    alpha = (1.0 - confidence) / 2
    mean = float(np.concatenate([a.ravel() for a in arrays]).mean())
    return mean, float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_interval(strata: Mapping[str, np.ndarray], confidence: float = CONFIDENCE,
                    resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """The interval of the mean paired difference over the given scanners (one or several).

    `strata`: scanner → differences of shape (seeds, subjects), same seeds everywhere.
    """
    strata = {k: np.atleast_2d(np.asarray(v, dtype=np.float64)) for k, v in strata.items()}
    if not strata or any(v.size == 0 for v in strata.values()):
        raise ValueError("no paired differences to summarise")
    n_seeds = next(iter(strata.values())).shape[0]
    subjects = sum(v.shape[1] for v in strata.values())
    if min(v.shape[1] for v in strata.values()) >= BOOTSTRAP_MIN:
        mean, low, high = two_level_bootstrap(strata, confidence, resamples, seed)
        method = "bootstrap"
    else:
        mean, low, high = seeds_t_interval(np.concatenate(list(strata.values()), axis=1), confidence)
        method = "t" if np.isfinite(low) else "none"
    return Interval(mean, low, high, subjects, n_seeds, method)
