"""The final metrics a site reports are read and checked before the server keeps any of them: a
real site's (against its target only) and a simulated site's (against its truth too)."""

from __future__ import annotations

import math

import pytest

from petite_fl.federation.server.evaluation import read_final_metrics
from petite_fl.training.inference import METRICS, RATIO_METRICS, TRUTH_METRICS

SPLITS = ("val", "test")


def reply(n: int = 3, truth: bool = False) -> dict:
    """A final evaluation as a site sends it: means per split, and per test subject by position."""
    keys = METRICS + (TRUTH_METRICS + RATIO_METRICS if truth else ())
    out = {"val_subjects": 2, "test_subjects": n, **{f"val_{k}": 20.0 for k in METRICS if not k.endswith("_fg")}}
    for i, key in enumerate(keys):
        values = [10.0 + i + 0.5 * j for j in range(n)]
        out[f"test_{key}"] = sum(values) / n
        out[f"test_subject_{key}"] = values
    return out


def test_a_real_sites_reply_without_truth_is_read_as_before():
    means, subjects = read_final_metrics(reply(), SPLITS)
    assert set(means["test"]) == {"subjects", *METRICS} and len(subjects) == 3
    assert all(set(row) == set(METRICS) for row in subjects)


def test_a_simulated_sites_truth_metrics_are_kept_per_subject_and_in_the_means():
    metrics = reply(truth=True)
    means, subjects = read_final_metrics(metrics, SPLITS)
    assert set(means["test"]) == {"subjects", *METRICS, *TRUTH_METRICS, *RATIO_METRICS}
    assert [row["ratio_bias"] for row in subjects] == metrics["test_subject_ratio_bias"]
    assert means["test"]["truth_psnr_fg"] == metrics["test_truth_psnr_fg"]


@pytest.mark.parametrize("change, why", [
    ({"test_subject_truth_psnr_fg": [1.0, 2.0]}, "test_subject_truth_psnr_fg must list one value per test subject (3)"),
    ({"test_subject_ratio_bias": [1.0, math.nan, 2.0]}, "test_subject_ratio_bias holds a value that is not a finite"),
    ({"test_truth_ssim_fg": math.inf}, "test_truth_ssim_fg is missing or not a finite number"),
    ({"test_ratio_abs_err": None}, "test_ratio_abs_err is missing or not a finite number"),
    ({"test_subject_psnr": None}, "test_subject_psnr must list one value per test subject (3)"),
])
def test_a_malformed_truth_metric_is_refused_in_one_line(change, why):
    metrics = {**reply(truth=True), **change}
    metrics = {k: v for k, v in metrics.items() if v is not None}
    read = read_final_metrics(metrics, SPLITS)
    assert isinstance(read, str) and read.startswith(why) and "\n" not in read


def test_a_truth_list_without_its_mean_is_refused():
    metrics = reply(truth=True)
    del metrics["test_truth_psnr"]
    assert read_final_metrics(metrics, SPLITS) == "test_truth_psnr is missing or not a finite number"


def test_the_run_logs_means_and_per_site_rows_carry_the_truth_only_where_every_site_has_it():
    from petite_fl.federation.server.runlog import RunLog

    log = RunLog()
    for site, truth in (("a", True), ("b", True)):
        means, subjects = read_final_metrics(reply(n=2 if site == "a" else 4, truth=truth), SPLITS)
        log.final(2, site, means, subjects)
    mean = log.weighted_mean(2, "test")
    assert set(TRUTH_METRICS + RATIO_METRICS) <= set(mean)
    a, b = (log.site_summary(s, None, 0) for s in ("a", "b"))
    assert mean["truth_psnr_fg"] == pytest.approx((2 * a["test"]["truth_psnr_fg"] + 4 * b["test"]["truth_psnr_fg"]) / 6)
    assert all("ratio_bias" in row for row in a["test_subjects"] + b["test_subjects"])
    # a real site beside a simulated one: the mean over sites has no truth metric (only some sites have it)
    means, subjects = read_final_metrics(reply(n=3), SPLITS)
    log.final(2, "c", means, subjects)
    assert not set(TRUTH_METRICS + RATIO_METRICS) & set(log.weighted_mean(2, "test"))
    assert "truth_psnr" in log.site_summary("a", None, 0)["test"]
