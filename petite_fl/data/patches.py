"""Random foreground-weighted training patches with MONAI transforms (paper: 4 per volume)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.data import Dataset
from monai.transforms import (
    Compose,
    DeleteItemsd,
    EnsureTyped,
    RandCropByPosNegLabeld,
    SpatialPadd,
)

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
