"""Who is scanned and how: the per-subject protocol that sets a scan's count level.

A scanner's `counts_per_voxel` is its count level for a reference patient (185 MBq, the
ADNI protocol's dose, 75 kg, frames from 30 min after injection). Real patients differ:
the brain's activity concentration scales with the injected activity over the body
weight (the SUV normalisation), and the counts of a frame also with the decay of
fluorine-18 between injection and the scan. The ranges live in the data config
(`data.synth.patients`), each with its source; every subject draws its own, so count
levels overlap across scanners while each scanner keeps its typical level (sensitivity)
and noise texture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from petite_fl.errors import ConfigError

F18_HALF_LIFE_MIN = 109.77
REFERENCE_DOSE_MBQ, REFERENCE_WEIGHT_KG, REFERENCE_UPTAKE_MIN = 185.0, 75.0, 30.0

Range = tuple[float, float]
FIELDS = ("dose_mbq", "weight_kg", "uptake_min", "motion_mm")


@dataclass(frozen=True)
class Population:
    """Uniform ranges of the per-subject protocol (`data.synth.patients`)."""

    dose_mbq: Range = (REFERENCE_DOSE_MBQ, REFERENCE_DOSE_MBQ)
    weight_kg: Range = (REFERENCE_WEIGHT_KG, REFERENCE_WEIGHT_KG)
    uptake_min: Range = (REFERENCE_UPTAKE_MIN, REFERENCE_UPTAKE_MIN)
    motion_mm: Range = (0.0, 0.0)  # head motion over the scan, as a blur FWHM (mm)

    @classmethod
    def from_config(cls, raw: object) -> Population:
        if raw is None:
            return cls()
        try:
            values = {k: tuple(float(v) for v in raw[k]) for k in FIELDS if k in raw or k != "motion_mm"}
        except (KeyError, TypeError, ValueError):
            raise ConfigError("data.synth.patients: needs dose_mbq, weight_kg, uptake_min (and may have motion_mm), "
                              f"each a [low, high] pair of numbers, got {raw!r}") from None
        population = cls(**values)
        population.validate()
        return population

    def validate(self) -> None:
        for name in FIELDS:
            pair = getattr(self, name)
            least = 0.0 if name == "motion_mm" else 1e-9  # no motion is a motion; no dose is not a dose
            if len(pair) != 2 or not least <= pair[0] <= pair[1]:
                raise ConfigError(f"data.synth.patients.{name}: expected [low, high] with "
                                  f"{'0 ≤' if not least else '0 <'} low ≤ high, got {list(pair)}")

    def count_scale_range(self) -> Range:
        """The smallest and largest count scale a subject of this population can draw."""
        low = Patient(self.dose_mbq[0], self.weight_kg[1], self.uptake_min[1], 0.0).count_scale
        high = Patient(self.dose_mbq[1], self.weight_kg[0], self.uptake_min[0], 0.0).count_scale
        return low, high


@dataclass(frozen=True)
class Patient:
    """One subject's protocol."""

    dose_mbq: float
    weight_kg: float
    uptake_min: float  # injection to the start of the first frame
    motion_mm: float  # head motion over the scan, as a blur FWHM added in quadrature to the scanner's

    @property
    def concentration_scale(self) -> float:
        """Decay-corrected activity concentration relative to the reference patient (images'
        units): dose over weight, as the SUV normalises it."""
        return (self.dose_mbq / REFERENCE_DOSE_MBQ) * (REFERENCE_WEIGHT_KG / self.weight_kg)

    @property
    def count_scale(self) -> float:
        """Counts of a frame relative to the reference patient: concentration × the decay since
        the reference uptake time (decay within the 30-min acquisition is left out, as for all)."""
        decay = 2.0 ** (-(self.uptake_min - REFERENCE_UPTAKE_MIN) / F18_HALF_LIFE_MIN)
        return self.concentration_scale * decay


def draw_patient(rng: np.random.Generator, population: Population) -> Patient:
    """Dose, weight, uptake time and motion drawn independently and uniformly over their ranges
    (no motion drawn where its range is [0, 0]: the other subjects' streams stay as they were)."""
    return Patient(*(float(rng.uniform(*getattr(population, name))) if getattr(population, name) != (0.0, 0.0)
                     else 0.0 for name in FIELDS))
