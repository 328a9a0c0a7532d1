"""What a scaling is: how a subject's volumes are brought to the network's units, and back.

A scaling maps each volume linearly, v ↦ (v − offset) / scale (`Intensity`). The map of the
input is computed from the input alone, since at inference there is nothing else; the map
of the target (and of the noise-free truth, in simulation) is the scaling's choice: the
input's own map (one factor for both, so that a network sees the same units on both sides)
or a map of its own (the paper's per-volume min-max). Metrics are computed on the
target's scaled units; a prediction goes back to the input's units with the input's map.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class Intensity:
    """v ↦ (v − offset) / scale: one volume's linear map to the network's units."""

    offset: float = 0.0
    scale: float = 1.0

    def apply(self, volume: np.ndarray) -> np.ndarray:
        if self.offset == 0.0 and self.scale == 1.0:
            return np.asarray(volume, dtype=np.float32)
        return ((np.asarray(volume, dtype=np.float32) - self.offset) / self.scale).astype(np.float32)

    def invert(self, scaled: np.ndarray) -> np.ndarray:
        """A volume in the network's units back in the units of the volume this map came from."""
        return (np.asarray(scaled, dtype=np.float32) * self.scale + self.offset).astype(np.float32)


class Scaling(ABC):
    """One registered scaling (`data.loader.scaling`); `summary` says in a line what it does."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    @abstractmethod
    def of_input(self, input: np.ndarray, voxel_mm: Sequence[float]) -> Intensity:
        """The input's map, from the input alone (inference has nothing else) and its voxel size (mm)."""

    def of_target(self, target: np.ndarray, input_map: Intensity) -> Intensity:
        """The target's map (and the truth's): by default the input's, one factor for all of them."""
        return input_map
