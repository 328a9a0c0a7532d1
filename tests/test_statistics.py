"""The comparison's statistics: against scipy.stats where a reference exists, on constructed data, and
by simulation (does each interval cover what it claims?)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from petite_fl.experiments import coverage as cov
from petite_fl.statistics import (
    BETTER,
    EQUIVALENT,
    FIXED,
    HIGHER,
    LOWER,
    PER_SCANNER,
    RANDOM,
    UNCLEAR,
    WORSE,
    Interval,
    fixed_over_scanners,
    per_scanner,
    random_over_scanners,
    t_interval,
)


def scipy_ci(x, confidence=0.95):
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(confidence)
    return ci.low, ci.high


def test_t_interval_matches_scipy_one_sample_t_test():
    x = np.array([0.31, -0.12, 0.44, 0.05, 0.27, 0.19, -0.02])
    mean, low, high = t_interval(x)
    assert mean == pytest.approx(x.mean())
    assert (low, high) == pytest.approx(scipy_ci(x), abs=1e-12)


def test_t_interval_of_two_subjects_is_wide_and_of_one_is_undefined():
    _, low, high = t_interval(np.array([0.1, 0.3]))
    assert (high - low) / 2 == pytest.approx(stats.t.ppf(0.975, 1) * 0.1)  # sd/√2 = 0.1; t(0.975, 1) = 12.7
    assert np.isnan(t_interval(np.array([0.2]))[1])


def test_one_seed_per_scanner_interval_is_students_t_over_subjects():
    x = np.random.default_rng(5).normal(0.3, 0.2, 6)
    iv = per_scanner(x[None, :])
    assert iv.kind == PER_SCANNER and iv.method == "t" and (iv.subjects, iv.seeds, iv.df) == (6, 1, 5)
    assert (iv.mean, *iv.bounds()) == pytest.approx((x.mean(), *scipy_ci(x)))
    assert iv.bounds(0.9) == pytest.approx(scipy_ci(x, 0.9))
    assert per_scanner(np.array([[0.4]])).method == "none"


def test_seeds_that_agree_add_nothing_and_a_shared_seed_effect_widens_the_interval():
    subjects = np.random.default_rng(5).normal(0.3, 0.2, 6)
    agree = per_scanner(np.stack([subjects] * 3))
    assert agree.bounds() == pytest.approx(scipy_ci(subjects)) and agree.df == pytest.approx(5)
    shifted = np.stack([subjects - 0.3, subjects, subjects + 0.3])  # a seed effect every subject shares
    assert shifted.mean(axis=0) == pytest.approx(subjects)  # invisible in the per-subject means …
    wide = per_scanner(shifted)
    assert wide.high - wide.low > 3 * (agree.high - agree.low)  # … not in the interval
    assert wide.df < 3  # the seeds' variance dominates: about seeds − 1 degrees of freedom


def test_crossed_subjects_and_seeds_use_the_two_way_anova_variance_of_the_grand_mean():
    d = np.random.default_rng(8).normal(0, 1, (3, 6)) + np.linspace(-1, 1, 6)  # seeds × subjects
    s, n = d.shape
    resid = d - d.mean(0) - d.mean(1, keepdims=True) + d.mean()
    ms_subj, ms_seed = s * d.mean(0).var(ddof=1), n * d.mean(1).var(ddof=1)
    ms_res = (resid ** 2).sum() / ((n - 1) * (s - 1))
    iv = per_scanner(d)
    assert iv.se ** 2 == pytest.approx(max(ms_subj + ms_seed - ms_res, ms_subj, ms_seed) / (n * s))
    assert 2 <= iv.df <= (n - 1) + (s - 1) + (n - 1) * (s - 1)


def test_random_effects_with_one_seed_is_t_over_the_scanner_means():
    rng = np.random.default_rng(3)
    strata = {f"s{i}": rng.normal(m, 0.1, (1, 6)) for i, m in enumerate([0.1, 0.4, -0.2, 0.3, 0.0])}
    means = np.array([v.mean() for v in strata.values()])
    iv = random_over_scanners(strata)
    assert iv.kind == RANDOM and iv.df == pytest.approx(4) and (iv.scanners, iv.subjects) == (5, 30)
    assert (iv.mean, *iv.bounds()) == pytest.approx((means.mean(), *scipy_ci(means)))


def test_fixed_effect_weights_each_scanner_once_and_adds_their_variances_like_welch():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.2, 0.1, 8), rng.normal(-0.1, 0.4, 4)
    iv = fixed_over_scanners({"a": a[None], "b": b[None]})
    assert iv.kind == FIXED and iv.mean == pytest.approx((a.mean() + b.mean()) / 2)  # not the 12 subjects' mean
    welch = stats.ttest_ind(a, b, equal_var=False)
    se_welch = (a.mean() - b.mean()) / welch.statistic  # the same variance sum, for a difference
    assert iv.se == pytest.approx(abs(se_welch) / 2)
    assert 3 <= iv.df <= 10  # between the smaller scanner's df and the sum
    # scanners that differ from each other widen the random-effects interval, not the fixed one
    apart = {"a": a[None], "b": a[None] + 1.0}
    assert random_over_scanners(apart).se > 5 * fixed_over_scanners(apart).se


def test_tost_is_the_90_percent_interval_inside_the_margin_and_matches_scipys_one_sided_tests():
    rng = np.random.default_rng(11)
    seen = set()
    for loc, sd in [(0.02, 0.05), (0.09, 0.05), (0.3, 0.05), (-0.05, 0.3)]:
        x = rng.normal(loc, sd, 8)
        iv = per_scanner(x[None])
        p = max(stats.ttest_1samp(x, -0.1, alternative="greater").pvalue,
                stats.ttest_1samp(x, 0.1, alternative="less").pvalue)
        assert iv.tost_pvalue(0.1) == pytest.approx(p)
        low, high = iv.bounds(0.90)
        assert iv.equivalent(0.1) == (p < 0.05) == (low > -0.1 and high < 0.1)
        seen.add(iv.equivalent(0.1))
    assert seen == {True, False}


def iv_of(x) -> Interval:
    return per_scanner(np.asarray(x, dtype=float)[None])


@pytest.mark.parametrize(("values", "margin", "higher", "verdict"), [
    ([0.01, 0.03, -0.01, 0.02, 0.00, 0.02], 0.1, True, EQUIVALENT),   # 90 % interval inside ±0.1
    ([0.04, 0.05, 0.06, 0.05, 0.04, 0.06], 0.1, True, EQUIVALENT),    # detectably above zero, yet inside ±0.1
    ([0.04, 0.05, 0.06, 0.05, 0.04, 0.06], None, True, BETTER),       # no margin: the 95 % interval's side
    ([0.30, 0.35, 0.28, 0.33, 0.31, 0.29], 0.1, True, BETTER),        # outside the margin, above zero
    ([0.30, 0.35, 0.28, 0.33, 0.31, 0.29], 0.1, False, WORSE),        # lower is better
    ([-0.30, -0.35, -0.28, -0.33, -0.31, -0.29], 0.1, True, WORSE),
    ([0.05, 0.25, -0.10, 0.15, -0.05, 0.20], 0.1, True, UNCLEAR),     # straddles zero and the margin
    ([0.06, 0.09, 0.12, 0.08, 0.10, 0.11], 0.1, True, BETTER),        # straddles the margin, above zero
    ([0.30, 0.35, 0.28, 0.33, 0.31, 0.29], None, None, HIGHER),       # no direction (a signed bias)
    ([-0.3, -0.35, -0.28, -0.33, -0.31, -0.29], None, None, LOWER),
])
def test_four_verdicts_on_constructed_data(values, margin, higher, verdict):
    assert iv_of(values).verdict(higher, margin) == verdict


def test_an_undefined_interval_reads_no_detectable_difference():
    assert Interval(0.2, float("nan"), float("nan"), PER_SCANNER, 1, 1, 1).verdict(True, 0.1) == UNCLEAR


def test_identical_arms_are_equivalent_not_worse():
    assert iv_of([0.0] * 6).verdict(True, 0.1) == EQUIVALENT and iv_of([0.0] * 6).text() == "+0.00 [+0.00, +0.00]"


# Coverage by simulation: fixed seeds, 4000 data sets per case, a few seconds in all.

@pytest.mark.parametrize("preset", ["default", "study", "paper"])
def test_every_interval_the_report_uses_covers_what_it_claims_at_the_presets_sizes(preset):
    figures = cov.coverage(cov.Model(), cov.PRESETS[preset])
    print(f"\ncoverage at {preset} sizes {cov.PRESETS[preset]}: "
          + ", ".join(f"{k} {100 * v:.1f} %" for k, v in figures.items()))
    for kind in (PER_SCANNER, FIXED, RANDOM):
        assert 0.93 <= figures[kind] <= 0.97, (kind, figures[kind])


@pytest.mark.parametrize("model", ["no seed effects", "shared seed dominates", "one scanner 3x spread"])
def test_coverage_holds_when_the_seeds_or_one_scanner_dominate(model):
    m = {"no seed effects": cov.Model(seed=0, scanner_seed=0, residual=0.1),
         "shared seed dominates": cov.Model(seed=0.15, scanner_seed=0, residual=0.02),
         "one scanner 3x spread": cov.Model(last_scanner_scale=3.0)}[model]
    figures = cov.coverage(m, cov.PRESETS["study"])
    for kind in (PER_SCANNER, FIXED, RANDOM):
        assert 0.93 <= figures[kind] <= 0.97, (model, kind, figures[kind])


def test_tost_declares_equivalence_at_the_margin_at_most_alpha_of_the_time():
    precise = cov.tost_error(cov.PRECISE, cov.PRESETS["study"])
    wide = cov.tost_error(cov.Model(), cov.PRESETS["study"])
    print(f"\nP(equivalent | Δ = ±0.1 dB): precise {precise}, issue-25 model {wide}")
    for kind in (PER_SCANNER, FIXED, RANDOM):
        assert 0.03 <= precise[kind] <= 0.07, (kind, precise[kind])  # i.e. 93–97 % correct at the margin
        assert wide[kind] <= 0.07  # wider intervals: conservative (5 scanners, SE ≈ margin: ~1 %)


def test_documented_failures_fixed_effect_for_a_new_site_and_the_bootstrap():
    """Not passing claims: what the report no longer does, and why."""
    issue = cov.coverage(*cov.ISSUE_CASE)
    boot = cov.bootstrap_coverage(design=cov.PRESETS["study"])
    print(f"\nissue 25's case: t over 30 subjects for a new site {100 * issue[cov.NEW_SITE_POOLED_T]:.1f} %, "
          f"fixed effect for a new site {100 * issue[cov.NEW_SITE_FIXED]:.1f} %, random effects "
          f"{100 * issue[RANDOM]:.1f} %; two-level bootstrap at study sizes {100 * boot:.1f} %")
    assert 0.5 <= issue[cov.NEW_SITE_POOLED_T] <= 0.66  # the issue's 58 %
    assert issue[cov.NEW_SITE_FIXED] < 0.9 and 0.93 <= issue[RANDOM] <= 0.97
    assert boot < 0.9


def test_one_seed_intervals_leave_training_randomness_out():
    figures = cov.coverage(cov.Model(), cov.PRESETS["default"])
    assert figures[FIXED + cov.UNCONDITIONAL] < 0.9 < figures[FIXED]
