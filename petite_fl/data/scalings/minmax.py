"""`minmax`: each volume to [0, 1] on its own, the PETITE paper's protocol (`compare=paper`).

Input and target are divided by their own ranges, so k = input max / target max stands
between them and varies per subject (the input's maximum is its noisiest voxel): on the
synthetic scanners k = 1.28 ± 0.03 (scanner1) to 1.48 ± 0.14 (scanner5), a scale a
network that sees one window cannot know. Kept to reproduce the paper; the truth, where
there is one, takes the target's map (a prediction lives in the target's units).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from petite_fl.data.scalings.base import Intensity, Scaling
from petite_fl.data.scalings.registry import register_scaling


def minmax_map(volume: np.ndarray) -> Intensity:
    lo, hi = float(np.min(volume)), float(np.max(volume))
    return Intensity(lo, hi - lo if hi > lo else 1.0)


@register_scaling
class MinMax(Scaling):
    name = "minmax"
    summary = "each volume to [0, 1] on its own (the PETITE paper's; a per-subject scale between input and target)"

    def of_input(self, input: np.ndarray, voxel_mm: Sequence[float]) -> Intensity:
        return minmax_map(input)

    def of_target(self, target: np.ndarray, input_map: Intensity) -> Intensity:
        return minmax_map(target)
