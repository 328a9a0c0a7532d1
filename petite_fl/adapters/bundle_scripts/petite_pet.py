"""PET intensity units and the head region for a petite-fl MONAI bundle (numpy/scipy/MONAI, no petite_fl).

Hand-written because MONAI has no transform for petite-fl's `grey-matter` factor (the 98th
percentile of the input smoothed with σ = 6 mm, inside the largest connected region above
10 % of the smoothed maximum), and its Gaussian (a torch convolution with its own
truncation and padding) would not give scipy's numbers. The same computation as
petite_fl.data.scalings and petite_fl.data.head; petite-fl's tests compare the two.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import MapTransform
from scipy.ndimage import gaussian_filter, label, maximum_filter

SCALINGS = ("grey-matter", "minmax", "none")
PERCENTILE, SMOOTHING_MM = 98.0, 6.0  # grey-matter: the percentile of the input smoothed with σ = 6 mm
HEAD_SMOOTHING, HEAD_THRESHOLD, HEAD_MARGIN = 2.0, 0.1, 10  # voxels; of the smoothed maximum; voxels


def smoothed(volume: np.ndarray, sigma: float | Sequence[float] = HEAD_SMOOTHING) -> np.ndarray:
    return gaussian_filter(np.asarray(volume, dtype=np.float32), sigma)


def head_mask(smooth: np.ndarray, threshold: float = HEAD_THRESHOLD) -> np.ndarray:
    """The largest connected region above `threshold` × the maximum (everything when nothing is above it)."""
    regions, count = label(smooth > threshold * float(smooth.max()))
    if not count:
        return np.ones(smooth.shape, dtype=bool)
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    return regions == int(sizes.argmax())


def grey_matter_level(volume: np.ndarray, voxel_mm: Sequence[float]) -> float:
    smooth = smoothed(volume, [SMOOTHING_MM / float(v) for v in voxel_mm])
    level = float(np.percentile(smooth[head_mask(smooth)], PERCENTILE))
    return level if level > 0 else 1.0


def input_map(scaling: str, volume: np.ndarray, voxel_mm: Sequence[float]) -> tuple[float, float]:
    """(offset, scale): the input's map v ↦ (v − offset) / scale to the network's units, from the input alone."""
    if scaling == "grey-matter":
        return 0.0, grey_matter_level(volume, voxel_mm)
    if scaling == "minmax":
        lo, hi = float(np.min(volume)), float(np.max(volume))
        return lo, hi - lo if hi > lo else 1.0
    if scaling == "none":
        return 0.0, 1.0
    raise ValueError(f"unknown scaling '{scaling}' (known: {', '.join(SCALINGS)})")


def _voxel_mm(image: Any) -> list[float]:
    affine = np.asarray(image.affine, dtype=np.float64)  # a MetaTensor's affine, after Orientationd
    return [float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)]


class ToNetworkd(MapTransform):
    """The input in the network's units; its map stays in `map_key` for FromNetworkd."""

    def __init__(self, keys: Any, scaling: str, map_key: str = "petite_map") -> None:
        super().__init__(keys)
        if scaling not in SCALINGS:
            raise ValueError(f"unknown scaling '{scaling}' (known: {', '.join(SCALINGS)})")
        self.scaling, self.map_key = scaling, map_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            volume = np.asarray(image[0].detach().cpu().numpy(), dtype=np.float32)  # channel first, one channel
            offset, scale = input_map(self.scaling, volume, _voxel_mm(image))
            d[self.map_key] = (offset, scale)
            if (offset, scale) != (0.0, 1.0):
                d[key] = (image.float() - offset) / scale
        return d


class FromNetworkd(MapTransform):
    """A prediction back in the input's units, with the input's own map."""

    def __init__(self, keys: Any, map_key: str = "petite_map") -> None:
        super().__init__(keys)
        self.map_key = map_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        offset, scale = d[self.map_key]
        for key in self.key_iterator(d):
            d[key] = d[key].float() * scale + offset
        return d


class HeadRegionInferer(SlidingWindowInferer):
    """Windows only where the head is (petite-fl's `region: head`), the input itself elsewhere; ≥ 0 inside.

    The head region is the head mask at σ = 2 voxels, widened by a box of HEAD_MARGIN voxels;
    MONAI windows the mask with the image, and a window without any of it is not run.
    """

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        volume = inputs[0, 0].detach().cpu().numpy().astype(np.float32)
        region = maximum_filter(head_mask(smoothed(volume)), size=2 * HEAD_MARGIN + 1)
        keep = torch.as_tensor(region, device=inputs.device)
        x = torch.cat([torch.as_tensor(inputs).float(), keep[None, None].float()], dim=1)

        def predictor(windows: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(windows[:, :1])
            run = windows[:, 1].flatten(1).any(dim=1)
            if run.any():
                out[run] = network(windows[run][:, :1]).to(out.dtype)
            return out

        y = super().__call__(x, predictor, *args, **kwargs)
        return torch.where(keep[None, None], y.float().clamp_min(0.0), torch.as_tensor(inputs).float())
