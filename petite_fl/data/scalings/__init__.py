"""Intensity scalings, one file each: how input, target and truth reach the network's units.

`grey-matter` (the default): one factor from the input alone, dividing input and target
alike; `minmax`: the PETITE paper's, each volume to [0, 1] on its own; `none`: as stored.
"""

from petite_fl.data.scalings.base import Intensity, Scaling
from petite_fl.data.scalings.registry import SCALINGS, available_scalings, get_scaling, register_scaling

__all__ = ["SCALINGS", "Intensity", "Scaling", "available_scalings", "get_scaling", "register_scaling"]
