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
from torch.utils.data import ConcatDataset, Sampler

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

    Patch centres fall on foreground (target > threshold × its maximum, the foreground mask of
    the metrics, whatever the scaling) with probability
    `foreground_ratio`, elsewhere otherwise; volumes smaller than the patch are padded.
    Use `monai.data.list_data_collate` (MONAI's DataLoader does) to batch them.
    """
    if not 0.0 <= foreground_ratio <= 1.0:
        raise ValueError("foreground_ratio must be in [0, 1]")
    items = [
        {"id": sid, "input": x[None], "target": y[None], "fg": (y > foreground_threshold * float(y.max()))[None]}
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


class SiteBatches(Sampler[list[int]]):
    """Batches of a `ConcatDataset` of sites, each from one site (patch sizes differ between
    scanners), the site drawn in proportion to its number of volumes: pooled training sees
    every scan equally often, as one data set would."""

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int = 0) -> None:
        self.sizes = [int(n) for n in sizes]
        if not self.sizes or min(self.sizes) < 1:
            raise DataError(f"pooled training needs at least one volume per site, got {self.sizes}")
        self.batch_size = int(batch_size)
        self.offsets = np.cumsum([0, *self.sizes[:-1]])
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return max(1, sum(self.sizes) // self.batch_size)

    def __iter__(self):
        p = np.asarray(self.sizes, dtype=np.float64) / sum(self.sizes)
        for _ in range(len(self)):
            k = int(self.rng.choice(len(self.sizes), p=p))
            picked = self.rng.choice(self.sizes[k], size=min(self.batch_size, self.sizes[k]), replace=False)
            yield [int(i) for i in picked + self.offsets[k]]


def pooled_patch_dataset(datasets: Sequence[Dataset], batch_size: int, seed: int = 0
                         ) -> tuple[ConcatDataset, SiteBatches]:
    """Several sites' patch data sets as one, with batches that never mix sites."""
    return ConcatDataset(list(datasets)), SiteBatches([len(d) for d in datasets], batch_size, seed)
