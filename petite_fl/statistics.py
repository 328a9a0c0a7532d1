"""Paired comparisons with their uncertainty, for the question a site asks.

Every difference is a mean of paired differences (same test subject, same scanner, same
training seed, two arms). Three intervals answer three questions; each is a Student t
interval whose squared standard error is an unbiased sum of variance components:

- **per scanner** — *this scanner's* mean Δ over its subjects and over training seeds:
  subjects × seeds crossed, SE² = (MS_subjects + MS_seeds − MS_residual) ÷ (subjects·seeds),
  the two-way ANOVA estimate of the variance of a grand mean (with one seed, Student's
  one-sample t over subjects);
- **fixed effect over scanners** — *these scanners'* mean Δ (each scanner counts once):
  the per-scanner subject components add with weight 1/K², the seed component is the
  variance of the seeds' mean over scanners (a seed shared by every scanner does not
  average out), minus the residual counted twice;
- **random effects over scanners** — the mean Δ *over scanners like these*, what a new
  site can expect on average: the same crossed formula over the scanners × seeds table of
  scanner means, so the scanner is the unit (with one seed, t over the K scanner means,
  df = K − 1). With five scanners it is wide, and that is the answer.

Degrees of freedom are Satterthwaite's (1946), with two corrections that the coverage
simulation (`petite_fl.experiments.coverage`) showed necessary: the scanners' subject
components combine with unbiased plug-ins (each squared variance × df/(df + 2)), without
which two subjects per scanner gave 98 % coverage; and components combine with seeds after
scaling each to its value at the lower quartile of its χ² (a variance from 3 seeds is
usually under its expectation, and the plug-in df then jumps to the subjects' df exactly
when the interval is already too narrow: 92–93 % coverage without it). Both are
hand-written because scipy has no variance-components interval.

A verdict reads intervals only (`Interval.verdict`): *equivalent within ±margin* when the
(1 − 2α) interval lies inside ±margin — two one-sided tests at level α (Schuirmann 1987) —
else *better* / *worse* when the 95 % interval excludes zero, else *no detectable
difference at this sample size* (not "equal"). No bootstrap: at the presets' sizes (≤ 10
subjects, ≤ 3 seeds) its coverage is below 93 % (measured in the coverage module).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05  # two one-sided tests at this level ⇔ the (1 − 2α) = 90 % interval inside ±margin
SEED_QUANTILE = 0.25  # components enter the seeds' df at their lower χ² quartile (see the docstring)
BETTER, WORSE, EQUIVALENT = "better", "worse", "equivalent"
HIGHER, LOWER = "higher", "lower"  # for a metric with no better direction (a signed bias)
UNCLEAR = "no detectable difference at this sample size"
PER_SCANNER, FIXED, RANDOM = "per scanner", "fixed over scanners", "random over scanners"


@dataclass(frozen=True)
class Interval:
    """A mean paired difference, its standard error and degrees of freedom, and what it covers."""

    mean: float
    se: float  # NaN: too few units for any interval
    df: float
    kind: str  # PER_SCANNER, FIXED or RANDOM
    subjects: int  # distinct test subjects behind it
    seeds: int
    scanners: int

    @property
    def method(self) -> str:
        return "t" if np.isfinite(self.se) else "none"

    def bounds(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        low, high = t_bounds(self.mean, self.se ** 2, self.df, confidence)
        return float(low), float(high)

    @property
    def low(self) -> float:
        return self.bounds()[0]

    @property
    def high(self) -> float:
        return self.bounds()[1]

    def equivalent(self, margin: float, alpha: float = ALPHA) -> bool:
        """Two one-sided tests at level α: the (1 − 2α) interval lies strictly inside ±margin."""
        low, high = self.bounds(1 - 2 * alpha)
        return bool(-margin < low and high < margin)

    def tost_pvalue(self, margin: float) -> float:
        """max of the two one-sided p-values (H0: Δ ≤ −margin; H0: Δ ≥ +margin)."""
        if not np.isfinite(self.se) or self.se == 0:
            return 0.0 if abs(self.mean) < margin else 1.0
        return float(max(stats.t.sf((self.mean + margin) / self.se, self.df),
                         stats.t.cdf((self.mean - margin) / self.se, self.df)))

    def verdict(self, higher_is_better: bool | None = True, margin: float | None = None,
                alpha: float = ALPHA) -> str:
        """Equivalent (if a margin is given and TOST holds), else the 95 % interval's side, else unclear."""
        if not np.isfinite(self.se):
            return UNCLEAR
        if margin is not None and self.equivalent(margin, alpha):
            return EQUIVALENT
        low, high = self.bounds(1 - alpha)
        up, down = {True: (BETTER, WORSE), False: (WORSE, BETTER), None: (HIGHER, LOWER)}[higher_is_better]
        return up if low > 0 else down if high < 0 else UNCLEAR

    def text(self, digits: int = 2) -> str:
        """'+0.42 [+0.10, +0.74]'."""
        low, high = self.bounds()
        if not np.isfinite(low):
            return f"{self.mean:+.{digits}f} [–]"
        return f"{self.mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def t_bounds(mean, var, df, confidence: float = CONFIDENCE):
    """mean ± t(df)·√var, vectorised; a zero variance gives a zero-width interval."""
    q = stats.t.ppf(0.5 + confidence / 2, np.where(np.asarray(var) > 0, df, np.inf))
    half = q * np.sqrt(var)
    return mean - half, mean + half


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of Student's one-sample t-interval; NaN bounds for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if values.size else float("nan")
    if values.size < 2:
        return mean, float("nan"), float("nan")
    low, high = t_bounds(mean, values.var(ddof=1) / values.size, values.size - 1, confidence)
    return mean, float(low), float(high)


def _satterthwaite(terms: Sequence[tuple[np.ndarray, float]], *, unbiased: bool = False,
                   quantile: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Σ v, df) of variance components v with df each; see the module docstring for the options."""
    var = sum(v for v, _ in terms)
    if quantile is not None:  # each component at its lower-quantile value, for the df only
        terms = [(v * d / stats.chi2.ppf(quantile, d), d) for v, d in terms]
    if unbiased:
        den = sum(v ** 2 / (d + 2) for v, d in terms)
        num = sum(v for v, _ in terms) ** 2 - 2 * den
    else:
        den = sum(v ** 2 / d for v, d in terms)
        num = sum(v for v, _ in terms) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.inf)
    if unbiased:  # the unbiased plug-ins can stray past what any mixture of these components allows
        df = np.clip(df, min(d for _, d in terms), sum(d for _, d in terms))
    return var, df


def variance_of_mean(strata: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, variance of the mean, df) of the equal-weight mean over strata (see the docstring).

    Each stratum has shape (..., seeds, units) with the same seeds; leading axes are data sets
    (the coverage simulation runs thousands at once through this very function).
    """
    strata = [np.asarray(s, dtype=np.float64) for s in strata]
    k, n_seeds = len(strata), strata[0].shape[-2]
    mean = sum(s.mean(axis=(-2, -1)) for s in strata) / k
    if min(s.shape[-1] for s in strata) < 2:  # a stratum with one unit: no within-stratum variance
        nan = np.full(np.shape(mean), np.nan)
        return mean, nan, nan
    units = [(s.mean(axis=-2).var(ddof=1, axis=-1) / (k ** 2 * s.shape[-1]), s.shape[-1] - 1) for s in strata]
    var_u, df_u = _satterthwaite(units, unbiased=True) if k > 1 else units[0]
    if n_seeds == 1:
        return mean, var_u, np.broadcast_to(df_u, np.shape(var_u)).astype(np.float64)
    seed_means = sum(s.mean(axis=-1) for s in strata) / k
    var_s, df_s = seed_means.var(ddof=1, axis=-1) / n_seeds, n_seeds - 1
    var_r, df_r = 0.0, 0
    for s in strata:
        n = s.shape[-1]
        resid = s - s.mean(axis=-1, keepdims=True) - s.mean(axis=-2, keepdims=True) + s.mean(axis=(-2, -1),
                                                                                             keepdims=True)
        var_r = var_r + (resid ** 2).sum(axis=(-2, -1)) / ((n - 1) * (n_seeds - 1) * k ** 2 * n * n_seeds)
        df_r += (n - 1) * (n_seeds - 1)
    var, df = _satterthwaite([(var_u, df_u), (var_s, df_s), (-var_r, df_r)], quantile=SEED_QUANTILE)
    # each of the subjects' and the seeds' components alone is a lower bound of the variance
    pick = np.argmax(np.stack(np.broadcast_arrays(var, var_u, var_s)), axis=0)
    var = np.choose(pick, np.broadcast_arrays(var, var_u, var_s))
    df = np.choose(pick, np.broadcast_arrays(df, df_u, np.float64(df_s)))
    return mean, var, df


def _interval(strata: Sequence[np.ndarray], kind: str, subjects: int, scanners: int) -> Interval:
    mean, var, df = variance_of_mean(strata)
    return Interval(float(mean), float(np.sqrt(var)), float(df), kind, subjects, strata[0].shape[-2], scanners)


def _check(strata: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: np.atleast_2d(np.asarray(v, dtype=np.float64)) for k, v in strata.items()}
    if not out or any(v.size == 0 for v in out.values()):
        raise ValueError("no paired differences to summarise")
    if len({v.shape[0] for v in out.values()}) > 1:
        raise ValueError("every scanner must have the same seeds")
    return out


def per_scanner(differences: np.ndarray) -> Interval:
    """This scanner's mean Δ: differences of shape (seeds, subjects)."""
    d = _check({"s": differences})["s"]
    return _interval([d], PER_SCANNER, d.shape[1], 1)


def fixed_over_scanners(strata: Mapping[str, np.ndarray]) -> Interval:
    """These scanners' mean Δ (each scanner once): scanner → (seeds, subjects)."""
    s = _check(strata)
    return _interval(list(s.values()), FIXED, sum(v.shape[1] for v in s.values()), len(s))


def random_over_scanners(strata: Mapping[str, np.ndarray]) -> Interval:
    """The mean Δ over scanners like these (the scanner is the unit): scanner → (seeds, subjects)."""
    s = _check(strata)
    table = np.stack([v.mean(axis=1) for v in s.values()], axis=1)  # (seeds, scanners)
    return _interval([table], RANDOM, sum(v.shape[1] for v in s.values()), len(s))
