"""Evaluation windows over the head's bounding box: the head mask inside it, its metrics unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import maximum_filter

from petite_fl.data.synthetic import synthesize_subject
from petite_fl.metrics import compute_metrics, foreground_mask
from petite_fl.models.registry import build_backbone
from petite_fl.scanners import get_scanner
from petite_fl.training.inference import head_region, predict_volume
from tests.conftest import small_spec


def scaled_pair(scanner: str, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    scan = synthesize_subject(get_scanner(scanner), index, small_spec())
    scale = lambda v: ((v - v.min()) / (v.max() - v.min())).astype(np.float32)  # noqa: E731 - as the loader
    return scale(scan.input), scale(scan.target)


@pytest.mark.parametrize("scanner", ["scanner1", "scanner3", "scanner5"])
def test_the_head_region_holds_the_head_mask_and_what_ssim_reads_around_it(scanner):
    x, y = scaled_pair(scanner)
    region = head_region(x)
    mask = foreground_mask(torch.as_tensor(y)).numpy()
    around = maximum_filter(mask, size=7)  # SSIM's 7³ window around every mask voxel
    assert region[around].all()
    assert region.mean() < 0.75  # and not the whole field of view


def test_head_mask_metrics_are_unchanged_by_the_head_box_and_the_input_fills_the_rest():
    torch.manual_seed(0)
    model = build_backbone("unetr", "tiny")
    with torch.no_grad():  # a network that changes its input, unlike the identity it starts as
        model.unetr.out.conv.conv.weight.normal_(0.0, 0.05)
    x, y = scaled_pair("scanner5")
    roi = (48, 48, 32)
    head = predict_volume(model, x, roi, device=torch.device("cpu"), overlap=0.25, region="head")
    full = predict_volume(model, x, roi, device=torch.device("cpu"), overlap=0.25, region="full")
    outside = ~head_region(x)
    assert np.array_equal(head[outside], x[outside])  # the short scan itself outside the head
    target = torch.as_tensor(y)
    mask = foreground_mask(target)
    a = compute_metrics(torch.as_tensor(head), target, mask)
    b = compute_metrics(torch.as_tensor(full), target, mask)
    # the same windows cover every voxel the head-mask metrics read: equal to rounding
    assert a["psnr_fg"] == pytest.approx(b["psnr_fg"], abs=1e-5)
    assert a["ssim_fg"] == pytest.approx(b["ssim_fg"], abs=1e-7)
    assert a["psnr_fg"] != pytest.approx(compute_metrics(torch.as_tensor(x), target, mask)["psnr_fg"], abs=0.05)


def test_an_unknown_region_is_refused():
    with pytest.raises(ValueError, match="unknown inference region 'brain'"):
        predict_volume(build_backbone("unetr", "tiny"), np.zeros((48, 48, 32), np.float32), (48, 48, 32),
                       device=torch.device("cpu"), region="brain")


def test_a_simulated_site_is_also_scored_against_its_truth_as_compute_metrics_scores_it(tmp_path):
    """Truth metrics are `compute_metrics` against the scaled truth with the target's head mask, and the
    ratio metrics `ratio_metrics` against the truth's ratio; a site without truth has neither."""
    from types import SimpleNamespace

    from petite_fl.data.site import load_site
    from petite_fl.metrics import ratio_metrics
    from petite_fl.training.inference import RATIO_METRICS, TRUTH_METRICS, evaluate_site, summarise
    from tests.conftest import write_site
    from tests.test_site_truth import add_truth

    torch.manual_seed(0)
    model = build_backbone("unetr", "tiny")
    with torch.no_grad():  # a network that changes its input
        model.unetr.out.conv.conv.weight.normal_(0.0, 0.05)
    ev = SimpleNamespace(overlap=0.0, sw_batch_size=1, region="full")
    manifest = add_truth(write_site(tmp_path / "sim"))
    site = load_site(manifest, truth=True)
    rows = evaluate_site(model, site, "test", (32, 32, 32), device=torch.device("cpu"), eval_cfg=ev,
                         foreground_threshold=0.1, quiet=True)
    (subject,) = site.subjects("test")
    pred = torch.as_tensor(predict_volume(model, subject.input, (32, 32, 32), device=torch.device("cpu"),
                                          overlap=0.0, sw_batch_size=1))
    target, truth = torch.as_tensor(subject.target), torch.as_tensor(subject.truth)
    mask = foreground_mask(target, 0.1)
    want = compute_metrics(pred, truth, mask)
    assert {k: rows[0][k] for k in TRUTH_METRICS} == pytest.approx({f"truth_{k}": want[k] for k in
                                                                     ("psnr", "psnr_fg", "ssim_fg", "nrmse_fg")})
    assert rows[0]["psnr_fg"] == pytest.approx(compute_metrics(pred, target, mask)["psnr_fg"])
    assert rows[0]["truth_psnr_fg"] != pytest.approx(rows[0]["psnr_fg"], abs=0.1)  # another reference
    assert {k: rows[0][k] for k in RATIO_METRICS} == pytest.approx(
        ratio_metrics(pred, truth, torch.as_tensor(subject.regions)))
    assert set(summarise(rows)) >= set(TRUTH_METRICS + RATIO_METRICS)

    plain = evaluate_site(model, load_site(write_site(tmp_path / "real"), truth=True), "test", (32, 32, 32),
                          device=torch.device("cpu"), eval_cfg=ev, foreground_threshold=0.1, quiet=True)
    assert not set(plain[0]) & set(TRUTH_METRICS + RATIO_METRICS)
    assert not set(summarise(plain)) & set(TRUTH_METRICS + RATIO_METRICS)
