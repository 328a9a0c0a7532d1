"""Where the head is in a short scan: the region a scaling measures and a prediction needs.

The head is the largest connected region above `threshold` × the maximum of the volume
smoothed with σ = 2 voxels: noise in the air, which after smoothing still peaks above any
low threshold somewhere in a million voxels, forms small separate specks that the largest
region leaves out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter, label

#: σ of the smoothing, in voxels
SMOOTHING = 2.0


def smoothed(volume: np.ndarray, sigma: float | Sequence[float] = SMOOTHING) -> np.ndarray:
    """`volume` smoothed with a Gaussian of `sigma` voxels (one per axis, or one for all)."""
    return gaussian_filter(np.asarray(volume, dtype=np.float32), sigma)


def head_mask(smooth: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """The largest connected region of a smoothed volume above `threshold` × its maximum
    (everything when nothing is above it)."""
    regions, count = label(smooth > threshold * float(smooth.max()))
    if not count:
        return np.ones(smooth.shape, dtype=bool)
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    return regions == int(sizes.argmax())
