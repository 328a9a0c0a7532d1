"""Random foreground-weighted training patches with MONAI transforms (paper: 4 per volume)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.data import Dataset
from monai.transforms import (
    Compose,
    DeleteItemsd,
    EnsureTyped,
    RandCropByPosNegLabeld,
    SpatialPadd,
)

from petite_fl.data.site import SiteData
from petite_fl.errors import DataError
from petite_fl.scanners import get_scanner

KEYS = ("input", "target")


def patch_dataset(
    volumes: Sequence[tuple[str, np.ndarray, np.ndarray]],
    patch: Sequence[int],
    patches_per_volume: int = 4,
    foreground_threshold: float = 0.1,
    foreground_ratio: float = 0.9,
    seed: int = 0,
) -> Dataset:
    """Each item is a list of `patches_per_volume` dicts {input, target}: (1, *patch) tensors.

    Patch centres fall on foreground (scaled target > threshold) with probability
    `foreground_ratio`, elsewhere otherwise; volumes smaller than the patch are padded.
    Use `monai.data.list_data_collate` (MONAI's DataLoader does) to batch them.
    """
    if not 0.0 <= foreground_ratio <= 1.0:
        raise ValueError("foreground_ratio must be in [0, 1]")
    items = [
        {"id": sid, "input": x[None], "target": y[None], "fg": (y > foreground_threshold)[None]}
        for sid, x, y in volumes
    ]
    crop = RandCropByPosNegLabeld(
        keys=[*KEYS],
        label_key="fg",
        spatial_size=tuple(int(p) for p in patch),
        pos=foreground_ratio,
        neg=1.0 - foreground_ratio,
        num_samples=patches_per_volume,
        allow_smaller=False,
    )
    transform = Compose(
        [
            SpatialPadd(keys=[*KEYS, "fg"], spatial_size=tuple(int(p) for p in patch)),
            crop,
            DeleteItemsd(keys="fg"),
            EnsureTyped(keys=[*KEYS], track_meta=False),
        ]
    )
    transform.set_random_state(seed=seed)  # after Compose, which reseeds its members
    return Dataset(data=items, transform=transform)


def site_patch_dataset(site: SiteData, split: str, loader: Any, seed: int = 0,
                       patch: Sequence[int] | None = None) -> Dataset:
    """Training patches of a site's split, sized by its scanner (registry) unless given."""
    if patch is None:
        if site.manifest.scanner is None:
            raise DataError(f"{site.manifest.path}: no 'scanner' field, so the patch size must be given")
        patch = get_scanner(site.manifest.scanner).patch
    return patch_dataset(
        site.arrays(split), patch,
        patches_per_volume=int(loader.patches_per_volume),
        foreground_threshold=float(loader.foreground_threshold),
        foreground_ratio=float(loader.foreground_ratio),
        seed=seed,
    )
