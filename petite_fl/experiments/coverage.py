"""Do the comparison's intervals cover what they claim? A simulation of thousands of comparisons.

A paired difference Δ (arm − baseline, dB) of subject j of scanner k under training seed s:

    Δ_ksj = μ + u_k + a_kj + b_s + c_ks + e_ksj

u: scanner-by-arm effect, what a new scanner draws (sd 0.2 dB between scanners, issue 25's
figure); a: subject (0.1 dB within a scanner); b: a seed effect shared by every scanner of a
training run; c: scanner-by-seed; e: subject-by-seed (0.05 dB each, half the subject sd).
What each interval claims to cover, drawn afresh in every data set:

- per scanner: μ + u_k, that scanner's mean over subjects and training seeds;
- fixed over scanners: μ + mean(u_k), these scanners' mean;
- random over scanners: μ, the mean over scanners like these, i.e. what a new site can
  expect on average (not one new site's own Δ, which scatters around it by sd(u)).

With one seed the run's training randomness is not in any interval, and the targets are
conditional on that run (μ + u_k + b + c_k, …); `coverage` also reports how often the
one-seed intervals cover the unconditional targets, to show what they leave out.

Every interval is computed by `petite_fl.statistics.variance_of_mean`, the function the
report uses, vectorised over data sets. `python -m petite_fl.experiments.coverage` prints
the figures for the presets' sizes, the equivalence test's error rates at the margin, the
failing cases (a fixed-effect interval read for a new site; a bootstrap) and a sensitivity
grid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from petite_fl.statistics import ALPHA, CONFIDENCE, FIXED, PER_SCANNER, RANDOM, t_bounds, variance_of_mean

SETS = 4000  # data sets per case: Monte-Carlo sd of a 95 % coverage ≈ 0.34 %
NEW_SITE_FIXED = "fixed over scanners, read for a new site"
NEW_SITE_POOLED_T = "one-sample t over all subjects, read for a new site"
UNCONDITIONAL = " (unconditional: training randomness)"


@dataclass(frozen=True)
class Model:
    """Standard deviations (dB) of the effects on a paired difference."""

    scanner: float = 0.2
    subject: float = 0.1
    seed: float = 0.05
    scanner_seed: float = 0.05
    residual: float = 0.05
    last_scanner_scale: float = 1.0  # one scanner's subject and residual sd × this (scanner5's spread doubles)


@dataclass(frozen=True)
class Design:
    scanners: int = 5
    subjects: int = 6  # test subjects per scanner
    seeds: int = 3


PRESETS = {"default": Design(5, 2, 1), "study": Design(5, 6, 3), "paper": Design(5, 10, 3)}
#: issue 25's failing case: scanners vary (sd 0.2 between, 0.1 within), one seed, 5 × 6 subjects
ISSUE_CASE = (Model(scanner=0.2, subject=0.1, seed=0.0, scanner_seed=0.0, residual=0.0), Design(5, 6, 1))
#: a model whose effects are small against a 0.1 dB margin: where TOST's error rate at the margin shows
PRECISE = Model(scanner=0.01, subject=0.02, seed=0.005, scanner_seed=0.005, residual=0.01)


@dataclass(frozen=True)
class Draw:
    """Simulated differences (sets, scanners, seeds, subjects) and the quantities intervals claim."""

    d: np.ndarray
    per_scanner: np.ndarray  # (sets, scanners)
    fixed: np.ndarray  # (sets,)
    random: np.ndarray  # (sets,)
    unconditional: dict[str, np.ndarray]  # the one-seed targets without the run's seed effects


def simulate(model: Model, design: Design, sets: int, rng: np.random.Generator) -> Draw:
    k, s, n = design.scanners, design.seeds, design.subjects
    scale = np.ones((1, k, 1, 1))
    scale[0, -1] = model.last_scanner_scale
    u = rng.normal(0, model.scanner, (sets, k, 1, 1))
    b = rng.normal(0, model.seed, (sets, 1, s, 1))
    c = rng.normal(0, model.scanner_seed, (sets, k, s, 1))
    d = (u + rng.normal(0, model.subject, (sets, k, 1, n)) * scale + b + c
         + rng.normal(0, model.residual, (sets, k, s, n)) * scale)
    per, shared = u[..., 0, 0], np.zeros(sets)
    if s == 1:  # one run: its seed effects are part of what the intervals estimate
        per, shared = per + b[:, 0, 0, :] + c[:, :, 0, 0], b[:, 0, 0, 0]
    uncond = {PER_SCANNER: u[..., 0, 0], FIXED: u[..., 0, 0].mean(axis=1), RANDOM: np.zeros(sets)}
    return Draw(d, per, per.mean(axis=1), shared, uncond)


def _intervals(draw: Draw, confidence: float) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """kind → (estimate, low, high), per scanner with a scanners axis."""
    d = draw.d
    out = {}
    per = [variance_of_mean([d[:, i]]) for i in range(d.shape[1])]
    m, v, df = (np.stack(x, axis=1) for x in zip(*per, strict=True))
    out[PER_SCANNER] = (m, *t_bounds(m, v, df, confidence))
    m, v, df = variance_of_mean([d[:, i] for i in range(d.shape[1])])
    out[FIXED] = (m, *t_bounds(m, v, df, confidence))
    m, v, df = variance_of_mean([d.mean(axis=-1).swapaxes(-1, -2)])  # (sets, seeds, scanners)
    out[RANDOM] = (m, *t_bounds(m, v, df, confidence))
    return out


def _covered(low, high, target) -> float:
    return float(np.mean((low <= target) & (target <= high)))


def coverage(model: Model = Model(), design: Design = PRESETS["study"], sets: int = SETS,
             seed: int = 0) -> dict[str, float]:
    """How often each 95 % interval covers what it claims (and the failing readings, as documentation)."""
    draw = simulate(model, design, sets, np.random.default_rng(seed))
    iv = _intervals(draw, CONFIDENCE)
    targets = {PER_SCANNER: draw.per_scanner, FIXED: draw.fixed, RANDOM: draw.random}
    out = {kind: _covered(iv[kind][1], iv[kind][2], targets[kind]) for kind in targets}
    if design.seeds == 1:
        out.update({kind + UNCONDITIONAL: _covered(iv[kind][1], iv[kind][2], draw.unconditional[kind])
                    for kind in targets})
    out[NEW_SITE_FIXED] = _covered(iv[FIXED][1], iv[FIXED][2], draw.unconditional[RANDOM])
    # what the comparison reported before: one t over every (subject, seed-mean) as if from one scanner
    flat = draw.d.mean(axis=2).reshape(sets, -1)
    half = t_bounds(0.0, flat.var(ddof=1, axis=1) / flat.shape[1], flat.shape[1] - 1)[1]
    out[NEW_SITE_POOLED_T] = float(np.mean(np.abs(flat.mean(axis=1) - draw.unconditional[RANDOM]) <= half))
    return out


def tost_error(model: Model = PRECISE, design: Design = PRESETS["study"], margin: float = 0.1,
               sets: int = SETS, seed: int = 1) -> dict[str, float]:
    """P(verdict 'equivalent' | true Δ exactly at ±margin), each interval: TOST's error, nominally ≤ α.

    The same draws serve both sides: each data set is shifted so that the quantity its
    interval claims sits at +margin (then −margin); a shift moves estimate and bounds alike.
    """
    draw = simulate(model, design, sets, np.random.default_rng(seed))
    iv = _intervals(draw, 1 - 2 * ALPHA)
    targets = {PER_SCANNER: draw.per_scanner, FIXED: draw.fixed, RANDOM: draw.random}
    out = {}
    for kind, target in targets.items():
        _, low, high = iv[kind]
        rates = [np.mean((-margin < low - target + at) & (high - target + at < margin)) for at in (margin, -margin)]
        out[kind] = float(np.mean(rates))
    return out


def bootstrap_coverage(model: Model = Model(), design: Design = PRESETS["study"], sets: int = 2000,
                       resamples: int = 1000, seed: int = 2) -> float:
    """Coverage of these scanners' mean by a two-level percentile bootstrap (seeds, then subjects
    within each scanner), the interval the report used from 20 subjects per scanner before."""
    rng = np.random.default_rng(seed)
    draw = simulate(model, design, sets, rng)
    k, s, n = design.scanners, design.seeds, design.subjects
    seeds = np.stack([np.bincount(r, minlength=s) for r in rng.integers(0, s, (resamples, s))])  # counts
    means = np.zeros((sets, resamples))
    for i in range(k):
        subj = np.stack([np.bincount(r, minlength=n) for r in rng.integers(0, n, (resamples, n))])
        means += np.einsum("Nsj,rj,rs->Nr", draw.d[:, i], subj, seeds, optimize=True) / (s * n * k)
    low, high = np.quantile(means, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2], axis=1)
    return _covered(low, high, draw.fixed)


def main() -> None:
    """Print every figure: the presets' sizes, TOST at the margin, the failing readings, a sensitivity grid."""
    print(f"Coverage of nominal 95 % intervals, {SETS} simulated comparisons each (model: {Model()})")
    for name, design in PRESETS.items():
        print(f"\n{name}: {design}")
        for kind, value in coverage(Model(), design).items():
            print(f"  {kind:<55} {100 * value:5.1f} %")
    issue = coverage(*ISSUE_CASE)
    print(f"\nissue 25's case {ISSUE_CASE[1]}, no seed effects: a new site's expected Δ is covered by the "
          f"t over all 30 subjects {100 * issue[NEW_SITE_POOLED_T]:.1f} %, by the fixed-effect interval "
          f"{100 * issue[NEW_SITE_FIXED]:.1f} %, by the random-effects interval {100 * issue[RANDOM]:.1f} %")
    print(f"\nTOST at the margin (±0.1 dB): P(equivalent | Δ = ±margin), nominal ≤ {100 * ALPHA:.0f} %")
    for label, model in (("precise model", PRECISE), ("issue-25 model", Model())):
        for name in ("study", "paper"):
            rates = tost_error(model, PRESETS[name])
            print(f"  {label}, {name}: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in rates.items()))
    print("\nTwo-level percentile bootstrap (seeds, then subjects), these scanners' mean:")
    for name in ("study", "paper"):
        print(f"  {name}: {100 * bootstrap_coverage(design=PRESETS[name]):.1f} %")
    print(f"  20 subjects × 3 seeds: {100 * bootstrap_coverage(design=Design(5, 20, 3)):.1f} %")
    print("\nSensitivity: per scanner / fixed / random")
    grid = {"no seed effects": replace(Model(), seed=0, scanner_seed=0, residual=0.1),
            "shared seed dominates": replace(Model(), seed=0.15, scanner_seed=0, residual=0.02),
            "scanner-specific seeds": replace(Model(), seed=0, scanner_seed=0.15),
            "similar scanners": replace(Model(), scanner=0.05, seed=0.1, scanner_seed=0.1, residual=0.1),
            "one scanner 3× spread": replace(Model(), last_scanner_scale=3.0)}
    for name in ("study", "paper"):
        for label, model in grid.items():
            c = coverage(model, PRESETS[name])
            print(f"  {name}, {label:<24} " + " / ".join(f"{100 * c[k]:.1f} %" for k in (PER_SCANNER, FIXED, RANDOM)))


if __name__ == "__main__":
    main()
