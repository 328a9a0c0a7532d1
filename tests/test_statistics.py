"""The comparison's statistics against scipy.stats on known data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from petite_fl.statistics import BETTER, UNCLEAR, WORSE, Interval, paired_interval, t_interval, two_level_bootstrap


def test_t_interval_matches_scipy_one_sample_t_test():
    x = np.array([0.31, -0.12, 0.44, 0.05, 0.27, 0.19, -0.02])
    mean, low, high = t_interval(x)
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert mean == pytest.approx(x.mean())
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_t_interval_of_two_subjects_is_wide_and_of_one_is_undefined():
    _, low, high = t_interval(np.array([0.1, 0.3]))
    assert (high - low) / 2 == pytest.approx(stats.t.ppf(0.975, 1) * 0.1)  # sd/√2 = 0.1; t(0.975, 1) = 12.7
    assert np.isnan(t_interval(np.array([0.2]))[1])


def test_bootstrap_with_one_seed_is_scipys_stratified_bootstrap():
    rng = np.random.default_rng(7)
    strata = {"a": rng.normal(0.3, 1.0, 40), "b": rng.normal(-0.1, 0.5, 25), "c": rng.normal(1.0, 2.0, 30)}

    def pooled_mean(*samples, axis=-1):
        return np.concatenate(samples, axis=axis).mean(axis=axis)

    ref = stats.bootstrap(tuple(strata.values()), pooled_mean, paired=False, vectorized=True,
                          n_resamples=40_000, method="percentile", random_state=1).confidence_interval
    mean, low, high = two_level_bootstrap({k: v[None, :] for k, v in strata.items()}, resamples=40_000)
    assert mean == pytest.approx(np.concatenate(list(strata.values())).mean())
    # Monte-Carlo error of a 2.5 % quantile with 40 000 resamples is ~1 % of the interval width
    width = ref.high - ref.low
    assert low == pytest.approx(ref.low, abs=0.03 * width)
    assert high == pytest.approx(ref.high, abs=0.03 * width)


def test_bootstrap_over_seeds_widens_the_interval_when_seeds_disagree():
    rng = np.random.default_rng(3)
    subjects = rng.normal(0.2, 0.3, 12)
    agree = np.stack([subjects, subjects, subjects])
    disagree = agree + np.array([[-0.4], [0.0], [0.4]])  # a seed effect shared by all subjects
    _, lo1, hi1 = two_level_bootstrap({"s": agree})
    _, lo2, hi2 = two_level_bootstrap({"s": disagree})
    assert hi2 - lo2 > 1.5 * (hi1 - lo1)


def test_paired_interval_picks_t_for_small_scanners_and_bootstrap_for_large_ones():
    small = paired_interval({"s1": np.array([[0.1, 0.3]]), "s2": np.array([[0.2, 0.4]])})
    assert small.method == "t" and small.subjects == 4
    per_subject = np.array([0.1, 0.3, 0.2, 0.4])
    ci = stats.ttest_1samp(per_subject, 0.0).confidence_interval(0.95)
    assert (small.low, small.high) == pytest.approx((ci.low, ci.high))
    large = paired_interval({"s1": np.full((3, 20), 0.5) + np.arange(20) * 0.01})
    assert large.method == "bootstrap" and large.seeds == 3 and large.subjects == 20
    assert paired_interval({"s1": np.full((3, 6), 0.5) + np.arange(6) * 0.01}).method == "t"
    assert paired_interval({"s1": np.array([[0.4]])}).method == "none"


def test_seed_t_interval_with_one_seed_is_students_t_and_a_shared_seed_effect_widens_it():
    rng = np.random.default_rng(5)
    subjects = rng.normal(0.3, 0.2, 6)
    one = paired_interval({"s": subjects[None, :]})
    ci = stats.ttest_1samp(subjects, 0.0).confidence_interval(0.95)
    assert (one.mean, one.low, one.high) == pytest.approx((subjects.mean(), ci.low, ci.high))
    # three seeds that agree: the per-subject means are the subjects, no seed variance
    agree = paired_interval({"s": np.stack([subjects] * 3)})
    assert (agree.low, agree.high) == pytest.approx((ci.low, ci.high))
    # a seed effect shared by every subject cancels in the per-subject means, yet widens the interval
    shifted = np.stack([subjects - 0.3, subjects, subjects + 0.3])
    assert shifted.mean(axis=0) == pytest.approx(subjects)
    wide = paired_interval({"s": shifted})
    assert wide.method == "t" and wide.high - wide.low > 1.5 * (ci.high - ci.low)
    # the squared standard error adds the two variances; Welch–Satterthwaite degrees of freedom
    v1, v2 = subjects.var(ddof=1) / 6, shifted.mean(axis=1).var(ddof=1) / 3
    df = (v1 + v2) ** 2 / (v1 ** 2 / 5 + v2 ** 2 / 2)
    half = stats.t.ppf(0.975, df) * np.sqrt(v1 + v2)
    assert (wide.low, wide.high) == pytest.approx((shifted.mean() - half, shifted.mean() + half))


@pytest.mark.parametrize(("low", "high", "higher", "verdict"), [
    (0.1, 0.5, True, BETTER), (-0.5, -0.1, True, WORSE), (-0.1, 0.3, True, UNCLEAR),
    (-0.5, -0.1, False, BETTER), (float("nan"), float("nan"), True, UNCLEAR)])
def test_verdict_reads_only_the_interval(low, high, higher, verdict):
    assert Interval(0.2, low, high, 4, 1, "t").verdict(higher) == verdict
