"""Whole-volume prediction (MONAI sliding window) and per-subject evaluation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from rich.progress import Progress
from torch import nn

from petite_fl.data.site import SiteData
from petite_fl.metrics import compute_metrics, foreground_mask
from petite_fl.training.device import autocast

METRICS = ("psnr", "ssim", "nrmse", "psnr_fg", "ssim_fg", "nrmse_fg")


@torch.no_grad()
def predict_volume(model: nn.Module, volume: np.ndarray, roi: Sequence[int], *, device: torch.device,
                   overlap: float = 0.5, sw_batch_size: int = 4, amp: bool = False) -> np.ndarray:
    """Predict a whole (scaled) volume with overlapping windows of the training patch size, ≥ 0."""
    model.eval()
    x = torch.as_tensor(volume, dtype=torch.float32, device=device)[None, None]
    with autocast(device, amp):
        y = sliding_window_inference(x, tuple(int(r) for r in roi), sw_batch_size, model,
                                     overlap=overlap, mode="gaussian")
    # PET activity is non-negative (the reconstructions the network learns from are too).
    return y[0, 0].float().clamp_min(0.0).cpu().numpy()


def evaluate_site(model: nn.Module, site: SiteData, split: str, roi: Sequence[int], *, device: torch.device,
                  eval_cfg: Any, foreground_threshold: float, amp: bool = False,
                  quiet: bool = False) -> list[dict[str, Any]]:
    """PSNR / SSIM / NRMSE per subject of `split` (whole volume and in the foreground)."""
    rows = []
    volumes = site.arrays(split)
    with Progress(disable=quiet, transient=True) as progress:
        task = progress.add_task(f"evaluating {site.manifest.site}/{split}", total=len(volumes))
        for sid, x, y in volumes:
            pred = predict_volume(model, x, roi, device=device, overlap=float(eval_cfg.overlap),
                                  sw_batch_size=int(eval_cfg.sw_batch_size), amp=amp)
            target = torch.as_tensor(y)
            metrics = compute_metrics(torch.as_tensor(pred), target, foreground_mask(target, foreground_threshold))
            rows.append({"subject": sid, **metrics})
            progress.advance(task)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and (sample) standard deviation of each metric over subjects."""
    out = {}
    for key in METRICS:
        values = [float(r[key]) for r in rows if key in r]
        if not values:
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[key] = {"mean": mean, "std": std}
    return out
