"""`grey-matter` (the default): one factor from the input alone, dividing input and target alike.

The factor is the input's grey-matter level: the 98th percentile of the input smoothed with
a Gaussian of σ = 6 mm, inside the head (`data.head`). With input and target divided by the
same number no per-subject scale stands between them (min-max put k = input max / target
max there: 1.26 ± 0.04 on scanner1 to 1.50 ± 0.10 on scanner5 over 12 subjects), and the
image's grey matter (the median noise-free voxel above half the uptake) lands at 0.97–1.09
on the five synthetic scanners, so PSNR's data range of 1 is the grey-matter level.

Chosen by measurement (README → Data layout; `experiments/scaling_spread.py`): smoothing
in millimetres rather than voxels lands grey matter alike on every scanner, and at 6 mm the
factor moves by 0.2–1.1 % on scanners 1–4 and 7 % on scanner 5 when a scan's counts go
from half to double (2.7–12 % at σ = 2 voxels), so a subject's count level barely changes
its units; percentiles 95–99.5 spread subjects alike (sd of the short scan's head PSNR
0.24–0.65 dB per scanner, min-max 0.65–0.90, on 8 subjects of another seed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from petite_fl.data.head import head_mask, smoothed
from petite_fl.data.scalings.base import Intensity, Scaling
from petite_fl.data.scalings.registry import register_scaling

PERCENTILE = 98.0
SMOOTHING_MM = 6.0


def grey_matter_level(volume: np.ndarray, voxel_mm: Sequence[float]) -> float:
    """The input's grey-matter level: the PERCENTILE-th percentile of the volume smoothed with
    σ = SMOOTHING_MM, inside the head (the largest region above 10 % of the smoothed maximum)."""
    smooth = smoothed(volume, [SMOOTHING_MM / float(v) for v in voxel_mm])
    level = float(np.percentile(smooth[head_mask(smooth)], PERCENTILE))
    return level if level > 0 else 1.0


@register_scaling
class GreyMatter(Scaling):
    name = "grey-matter"
    summary = "input and target divided by one factor from the input: its grey-matter level (smoothed, in the head)"

    def of_input(self, input: np.ndarray, voxel_mm: Sequence[float]) -> Intensity:
        return Intensity(0.0, grey_matter_level(input, voxel_mm))
