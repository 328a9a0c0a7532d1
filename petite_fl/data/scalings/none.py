"""`none`: the volumes as stored (e.g. Bq/mL); PSNR's data range of 1 then means 1 stored unit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from petite_fl.data.scalings.base import Intensity, Scaling
from petite_fl.data.scalings.registry import register_scaling


@register_scaling
class NoScaling(Scaling):
    name = "none"
    summary = "the volumes as stored"

    def of_input(self, input: np.ndarray, voxel_mm: Sequence[float]) -> Intensity:
        return Intensity()
