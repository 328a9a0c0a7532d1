"""Whole-volume prediction (MONAI sliding window) and per-subject evaluation.

`region="head"` runs the network only on windows that touch the head and lets the short
scan itself fill the air; head-mask metrics are then exactly those of a whole-volume
prediction (tested). Measured on the five synthetic scanners with the tiny preset's 48³
windows it skips 0–3 % of the windows (the head spans nearly every window of a brain
PET field of view), so the default stays the paper's whole-volume prediction (`full`);
the time of an evaluation went mostly to 3D SSIM, which `petite_fl.metrics` now box-filters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from omegaconf import DictConfig
from rich.progress import Progress
from scipy.ndimage import maximum_filter
from torch import nn

from petite_fl.data.head import head_mask, smoothed
from petite_fl.data.site import ScaledSubject, SiteData
from petite_fl.data.sites import site_split
from petite_fl.metrics import compute_metrics, foreground_mask, ratio_metrics
from petite_fl.training.device import autocast

#: against the target, every subject: whole volume and in the foreground mask (the target above a threshold)
METRICS = ("psnr", "ssim", "nrmse", "psnr_fg", "ssim_fg", "nrmse_fg")
#: against the noise-free truth, for subjects whose manifest row has `truth` (simulation only);
#: the foreground mask is the target's, as for METRICS
TRUTH_METRICS = ("truth_psnr", "truth_psnr_fg", "truth_ssim_fg", "truth_nrmse_fg")
#: the regional uptake ratio (label 1 / label 2 of the row's `regions`) against the truth's, in percent
RATIO_METRICS = ("ratio_bias", "ratio_abs_err")
#: every metric a subject may have, METRICS always, the others where its site is simulated
ALL_METRICS = METRICS + TRUTH_METRICS + RATIO_METRICS


REGIONS = ("head", "full")


def head_region(volume: np.ndarray, *, threshold: float = 0.1, margin: int = 10) -> np.ndarray:
    """The head of a (scaled) short scan (`data.head`), `margin` voxels wider: where a prediction is needed.

    The margin (a box dilation) covers the foreground mask of the target and the 3 voxels
    around it that SSIM's 7³ window reads.
    """
    return maximum_filter(head_mask(smoothed(volume), threshold), size=2 * margin + 1)


@torch.no_grad()
def predict_volume(model: nn.Module, volume: np.ndarray, roi: Sequence[int], *, device: torch.device,
                   overlap: float = 0.5, sw_batch_size: int = 8, amp: bool = False,
                   region: str = "full") -> np.ndarray:
    """Predict a (scaled) volume with overlapping windows of the training patch size, ≥ 0.

    `region="head"`: the network runs only on windows that touch `head_region`, and the
    input itself fills everything outside that region. Every window that covers a voxel of
    the region is run, so inside it the prediction is the whole-volume one (tested).
    `"full"`: every window, everywhere (the paper's whole-volume prediction).
    """
    if region not in REGIONS:
        raise ValueError(f"unknown inference region '{region}' (allowed: {', '.join(REGIONS)})")
    model.eval()
    x = torch.as_tensor(volume, dtype=torch.float32, device=device)[None, None]
    if region == "head":
        keep = torch.as_tensor(head_region(volume), device=device)
        x = torch.cat([x, keep[None, None].float()], dim=1)  # MONAI windows (and pads) the mask with the image

        def predictor(windows: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(windows[:, :1])
            run = windows[:, 1].flatten(1).any(dim=1)
            if run.any():
                out[run] = model(windows[run][:, :1]).to(out.dtype)
            return out
    else:
        predictor = model
    with autocast(device, amp):
        y = sliding_window_inference(x, tuple(int(r) for r in roi), sw_batch_size, predictor,
                                     overlap=overlap, mode="gaussian")
    # PET activity is non-negative (the reconstructions the network learns from are too).
    pred = y[0, 0].float().clamp_min(0.0).cpu().numpy()
    if region == "head":
        pred = np.where(keep.cpu().numpy(), pred, np.asarray(volume, dtype=np.float32))
    return pred


def evaluate_site(model: nn.Module, site: SiteData, split: str, roi: Sequence[int], *, device: torch.device,
                  eval_cfg: Any, foreground_threshold: float, amp: bool = False,
                  quiet: bool = False) -> list[dict[str, Any]]:
    """PSNR / SSIM / NRMSE per subject of `split` (whole volume and in the foreground), and against
    the truth (TRUTH_METRICS, RATIO_METRICS) for subjects loaded with one."""
    rows = []
    subjects = site.subjects(split)
    with Progress(disable=quiet, transient=True) as progress:
        task = progress.add_task(f"evaluating {site.manifest.site}/{split}", total=len(subjects))
        for subject in subjects:
            pred = predict_volume(model, subject.input, roi, device=device, overlap=float(eval_cfg.overlap),
                                  sw_batch_size=int(eval_cfg.sw_batch_size), amp=amp,
                                  region=str(getattr(eval_cfg, "region", "full")))
            rows.append({"subject": subject.id, **subject_metrics(pred, subject, foreground_threshold)})
            progress.advance(task)
    return rows


def subject_metrics(pred: np.ndarray, subject: ScaledSubject, foreground_threshold: float) -> dict[str, float]:
    """METRICS against the target; where the subject has a truth, TRUTH_METRICS (the target's foreground
    mask) and, with region labels, RATIO_METRICS."""
    p, target = torch.as_tensor(pred), torch.as_tensor(subject.target)
    mask = foreground_mask(target, foreground_threshold)
    out = compute_metrics(p, target, mask)
    if subject.truth is not None:
        truth = torch.as_tensor(subject.truth)
        against = compute_metrics(p, truth, mask)
        out.update({f"truth_{k}": against[k] for k in ("psnr", "psnr_fg", "ssim_fg", "nrmse_fg")})
        if subject.regions is not None:
            out.update(ratio_metrics(p, truth, torch.as_tensor(subject.regions)))
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and (sample) standard deviation of each metric over the subjects that have it."""
    out = {}
    for key in ALL_METRICS:
        values = [float(r[key]) for r in rows if key in r]
        if not values:
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[key] = {"mean": mean, "std": std}
    return out


def present_metrics(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics of ALL_METRICS that every row has (a manifest has a truth for every subject or none)."""
    return [k for k in ALL_METRICS if rows and all(k in r for r in rows)]


@torch.no_grad()
def evaluate_patches(model: nn.Module, site: SiteData, split: str, roi: Sequence[int], *, device: torch.device,
                     patches: int, seed: int, foreground_threshold: float, amp: bool = False,
                     batch_size: int = 8) -> list[dict[str, Any]]:
    """PSNR / SSIM / NRMSE per subject, averaged over fixed patches centred in the head.

    The per-round validation of federated runs: whole-volume sliding windows cost tens of
    seconds per volume on a CPU, while `patches` fixed windows per subject (the same every
    round, drawn from foreground voxels with `seed`) track convergence at a fraction of it.
    Final test metrics stay whole-volume (`evaluate_site`).
    """
    model.eval()
    roi = tuple(int(r) for r in roi)
    rows = []
    for sid, x, y in site.arrays(split):
        rng = np.random.default_rng([seed, *(ord(c) for c in sid)])
        fg = np.argwhere(y > foreground_threshold * y.max())
        centres = fg[rng.choice(len(fg), size=min(patches, len(fg)), replace=False)]
        xs, ys = [], []
        for c in centres:
            lo = [int(min(max(0, c[d] - roi[d] // 2), max(0, x.shape[d] - roi[d]))) for d in range(3)]
            sl = tuple(slice(lo[d], lo[d] + roi[d]) for d in range(3))
            xs.append(_pad_to(x[sl], roi))
            ys.append(_pad_to(y[sl], roi))
        preds = []
        for i in range(0, len(xs), batch_size):
            batch = torch.as_tensor(np.stack(xs[i:i + batch_size]), dtype=torch.float32, device=device)[:, None]
            with autocast(device, amp):
                preds.append(model(batch).float().clamp_min(0.0)[:, 0].cpu())
        per_patch = [compute_metrics(p, torch.as_tensor(t)) for p, t in zip(torch.cat(preds), ys, strict=True)]
        rows.append({"subject": sid, **{k: float(np.mean([m[k] for m in per_patch])) for k in per_patch[0]}})
    return rows


def flat_metrics(prefix: str, summary: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {f"{prefix}_{k}": float(v["mean"]) for k, v in summary.items()}


def evaluate_split(cfg: DictConfig, site_name: str, manifest: Path, model: torch.nn.Module, split: str,
                   device: torch.device, amp: bool, per_round: bool = False,
                   per_subject: bool = False) -> dict[str, Any]:
    """Metrics of a site's split: the final test whole-volume, per-round validation per `federation.val`.

    `per_subject`: also each subject's metrics as lists (`<split>_subject_<metric>`) in the
    order of the split, so that the comparison can pair them across arms; by position
    only, never by subject id or file name, which stay at the site. Whole-volume evaluation
    of a simulated site adds the metrics against its truth (TRUTH_METRICS, RATIO_METRICS).
    """
    site, roi = site_split(cfg, manifest, split, model.size_multiple, site_name, "to evaluate",
                           truth=not (per_round and str(cfg.federation.val.mode) == "patches"))
    threshold = float(cfg.data.loader.foreground_threshold)
    val = cfg.federation.val
    if per_round and str(val.mode) == "patches":
        rows = evaluate_patches(model, site, split, roi, device=device, patches=int(val.patches),
                                seed=int(cfg.seed), foreground_threshold=threshold, amp=amp)
    else:
        eval_cfg = dict(cfg.train.eval)
        if per_round:
            eval_cfg["overlap"] = float(val.overlap)
        rows = evaluate_site(model, site, split, roi, device=device, eval_cfg=SimpleNamespace(**eval_cfg),
                             foreground_threshold=threshold, amp=amp, quiet=True)
    out: dict[str, Any] = {**flat_metrics(split, summarise(rows)), f"{split}_subjects": len(rows)}
    if per_subject:
        out.update({f"{split}_subject_{k}": [float(r[k]) for r in rows] for k in present_metrics(rows)})
    return out


def _pad_to(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    pad = [(0, int(s) - n) for n, s in zip(a.shape, shape, strict=True)]
    return np.pad(a, pad) if any(p[1] for p in pad) else a
