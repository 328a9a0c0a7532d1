"""PSNR, SSIM and NRMSE agree with scikit-image's reference implementations; the regional uptake ratio
and its bias give a constructed case's known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from petite_fl.data.synthetic import synthesize_subject
from petite_fl.metrics import compute_metrics, foreground_mask, nrmse, psnr, ratio_metrics, ssim, uptake_ratio
from petite_fl.scanners import get_scanner
from tests.conftest import small_spec

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _random_pair(seed: int):
    rng = np.random.default_rng(seed)
    target = rng.random((32, 30, 28))
    pred = np.clip(target + 0.1 * rng.standard_normal(target.shape), 0, 1)
    return pred, target


def _synthetic_pair():
    scan = synthesize_subject(get_scanner("scanner5"), 0, small_spec())
    scale = lambda v: (v - v.min()) / (v.max() - v.min())  # noqa: E731 - the paper's min-max
    return scale(scan.input.astype(np.float64)), scale(scan.target.astype(np.float64))


PAIRS = {"random-0": lambda: _random_pair(0), "random-1": lambda: _random_pair(1),
         "synthetic-scanner5": _synthetic_pair}


@pytest.fixture(params=sorted(PAIRS), scope="module")
def pair(request):
    return PAIRS[request.param]()


@pytest.mark.parametrize("device", DEVICES)
def test_psnr_and_nrmse_match_skimage(pair, device):
    pred, target = pair
    p, t = torch.tensor(pred, device=device), torch.tensor(target, device=device)
    assert float(psnr(p, t)) == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=1.0), abs=1e-4)
    assert float(nrmse(p, t)) == pytest.approx(normalized_root_mse(target, pred, normalization="min-max"), abs=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_ssim_matches_skimage_uniform_window(pair, device):
    pred, target = pair
    ref = structural_similarity(target, pred, data_range=target.max(), win_size=7)
    got = ssim(torch.tensor(pred, device=device), torch.tensor(target, device=device))
    assert float(got) == pytest.approx(ref, abs=1e-3)


def test_ssim_matches_skimage_gaussian_window(pair):
    pred, target = pair
    ref = structural_similarity(target, pred, data_range=target.max(), gaussian_weights=True,
                                sigma=1.5, use_sample_covariance=False)
    assert float(ssim(torch.tensor(pred), torch.tensor(target), window="gaussian")) == pytest.approx(ref, abs=1e-3)


def test_masked_metrics_match_skimage_on_the_masked_voxels(pair):
    pred, target = pair
    mask = foreground_mask(torch.tensor(target), 0.3).numpy()
    p, t, m = torch.tensor(pred), torch.tensor(target), torch.tensor(mask)
    assert float(psnr(p, t, m)) == pytest.approx(
        peak_signal_noise_ratio(target[mask], pred[mask], data_range=1.0), abs=1e-4)
    assert float(nrmse(p, t, m)) == pytest.approx(
        normalized_root_mse(target[mask], pred[mask], normalization="min-max"), abs=1e-4)
    _, smap = structural_similarity(target, pred, data_range=target.max(), win_size=7, full=True)
    inner = (slice(3, -3),) * 3
    assert float(ssim(p, t, m)) == pytest.approx(smap[inner][mask[inner]].mean(), abs=1e-3)


def test_identical_volumes_are_perfect_and_noise_lowers_every_metric():
    _, target = _random_pair(2)
    t = torch.tensor(target)
    assert float(ssim(t, t)) == pytest.approx(1.0)
    assert float(nrmse(t, t)) == 0.0
    noisy = compute_metrics(t + 0.05 * torch.randn_like(t), t)
    noisier = compute_metrics(t + 0.2 * torch.randn_like(t), t)
    assert noisy["psnr"] > noisier["psnr"] and noisy["ssim"] > noisier["ssim"]
    assert noisy["nrmse"] < noisier["nrmse"]


def test_background_inflates_psnr_which_the_mask_reveals():
    pred, target = _synthetic_pair()
    p, t = torch.tensor(pred), torch.tensor(target)
    out = compute_metrics(p, t, foreground_mask(t))
    assert set(out) == {"psnr", "ssim", "nrmse", "psnr_fg", "ssim_fg", "nrmse_fg"}
    assert out["psnr"] > out["psnr_fg"]


@pytest.mark.parametrize(
    "args, fragment",
    [((torch.zeros(4, 4, 4), torch.zeros(4, 4, 5)), "differ in shape"),
     ((torch.zeros(4, 4), torch.zeros(4, 4)), "expected a 3D volume")],
)
def test_bad_shapes_are_refused(args, fragment):
    with pytest.raises(ValueError, match=fragment):
        psnr(*args)


def test_batched_single_volume_shapes_are_accepted():
    _, target = _random_pair(3)
    t = torch.tensor(target)
    assert float(psnr(t[None, None] * 0.9, t[None, None])) == pytest.approx(float(psnr(t * 0.9, t)))


def _regions_case():
    """Measured regions (label 1) at 0.9 in the prediction and 0.8 in the truth, the reference (label 2) at 1.2
    in both, background 0.3: ratios 0.75 and 2/3, a bias of +12.5 %."""
    regions = torch.zeros(12, 12, 12, dtype=torch.int16)
    regions[2:6, 2:6, 2:6] = 1
    regions[7:11, 7:11, 7:11] = 2
    pred = torch.full((12, 12, 12), 0.3, dtype=torch.float64)
    pred[regions == 1], pred[regions == 2] = 0.9, 1.2
    truth = pred.clone()
    truth[regions == 1] = 0.8
    return pred, truth, regions


def test_the_uptake_ratio_and_its_bias_against_the_truth_give_the_known_answer():
    pred, truth, regions = _regions_case()
    assert float(uptake_ratio(pred, regions)) == pytest.approx(0.75)
    assert float(uptake_ratio(truth, regions)) == pytest.approx(2 / 3)
    m = ratio_metrics(pred, truth, regions)
    assert m["ratio_bias"] == pytest.approx(12.5) and m["ratio_abs_err"] == pytest.approx(12.5)
    flipped = ratio_metrics(truth, pred, regions)  # the other way round: r_pred below r_truth
    assert flipped["ratio_bias"] == pytest.approx(100 * (2 / 3 / 0.75 - 1)) and flipped["ratio_abs_err"] > 0
    # a ratio has no units: the scaling of prediction and truth cannot move it
    assert ratio_metrics(7.0 * pred, 0.1 * truth, regions)["ratio_bias"] == pytest.approx(12.5)
    assert ratio_metrics(truth, truth, regions)["ratio_bias"] == 0.0


def test_regions_without_a_reference_voxel_are_refused():
    pred, _, regions = _regions_case()
    regions[regions == 2] = 0
    with pytest.raises(ValueError, match="no voxel labelled 2"):
        uptake_ratio(pred, regions)
