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
    MapTransform,
    RandCropByPosNegLabeld,
    SpatialPadd,
)
from torch.utils.data import ConcatDataset, Sampler

from petite_fl.data.scalings import Intensity
from petite_fl.data.site import SiteData
from petite_fl.errors import DataError
from petite_fl.scanners import get_scanner

KEYS = ("input", "target")


class _Indices(MapTransform):
    """`fg` → the flat foreground and background indices RandCropByPosNegLabeld would compute, with numpy
    (MONAI's own `map_binary_to_indices` takes torch's nonzero: ~7× slower on a 192²×136 mask, per step)."""

    def __call__(self, data):
        d = dict(data)
        mask = np.asarray(d["fg"][0]).ravel()
        d["fg_indices"], d["bg_indices"] = np.flatnonzero(mask), np.flatnonzero(~mask)
        return d


class _Scale(MapTransform):
    """Each cut patch to the network's units with its volume's maps: a patch is scaled, not its whole volume
    (the maps are elementwise, so the values are those of cutting the scaled volume)."""

    def __call__(self, data):
        d = dict(data)
        x_map, y_map = d.pop("maps")
        d["input"], d["target"] = x_map.apply(np.asarray(d["input"])), y_map.apply(np.asarray(d["target"]))
        return d


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
    items = [{"id": sid, "input": x[None], "target": y[None], "fg": (y > foreground_threshold * float(y.max()))[None],
              "maps": (Intensity(), Intensity())} for sid, x, y in volumes]
    return _patches(items, patch, patches_per_volume, foreground_ratio, seed)


def _patches(items: list[dict[str, Any]], patch: Sequence[int], patches_per_volume: int, foreground_ratio: float,
             seed: int) -> Dataset:
    """Items {id, input, target, fg, maps} → random patches in the network's units."""
    if not 0.0 <= foreground_ratio <= 1.0:
        raise ValueError("foreground_ratio must be in [0, 1]")
    crop = RandCropByPosNegLabeld(
        keys=[*KEYS],
        label_key="fg",
        spatial_size=tuple(int(p) for p in patch),
        pos=foreground_ratio,
        neg=1.0 - foreground_ratio,
        num_samples=patches_per_volume,
        allow_smaller=False,
        fg_indices_key="fg_indices",
        bg_indices_key="bg_indices",
    )
    transform = Compose(
        [
            SpatialPadd(keys=[*KEYS, "fg"], spatial_size=tuple(int(p) for p in patch)),
            _Indices(keys="fg"),
            crop,
            DeleteItemsd(keys="fg"),
            _Scale(keys=[*KEYS]),
            EnsureTyped(keys=[*KEYS], track_meta=False),
        ]
    )
    transform.set_random_state(seed=seed)  # after Compose, which reseeds its members
    return Dataset(data=items, transform=transform)


def site_patch_dataset(site: SiteData, split: str, loader: Any, seed: int = 0,
                       patch: Sequence[int] | None = None) -> Dataset:
    """Training patches of a site's split, sized by its scanner (registry) unless given.

    Patches are cut from the volumes as loaded and scaled one by one (`_Scale`): no scaled copy of
    a whole volume is made or held. A volume smaller than the patch is scaled whole first, so that
    its padding is zero in the network's units, as `patch_dataset`'s is.
    """
    if patch is None:
        if site.manifest.scanner is None:
            raise DataError(f"{site.manifest.path}: no 'scanner' field, so the patch size must be given")
        patch = get_scanner(site.manifest.scanner).patch
    threshold = float(loader.foreground_threshold)
    items = []
    for pair in site.pairs.get(split, []):
        maps = site.maps(pair)
        x, y = pair.input.data, pair.target.data
        if any(n < int(p) for n, p in zip(x.shape, patch, strict=True)):
            x, y, maps = maps[0].apply(x), maps[1].apply(y), (Intensity(), Intensity())
        items.append({"id": pair.entry.id, "input": x[None], "target": y[None],
                      "fg": site.foreground(pair, threshold)[None], "maps": maps})
    return _patches(items, patch, int(loader.patches_per_volume), float(loader.foreground_ratio), seed)


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
