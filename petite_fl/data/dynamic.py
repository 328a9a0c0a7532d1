"""A dynamic PET series as read from a site's own files, whatever its format (#16).

The one type every reader (`petite_fl/data/readers/`: DICOM through dcm2niix, ECAT 7 and
NIfTI + BIDS-PET through nibabel) returns and the pairing (`pairing.py`) consumes: frames in
Bq/mL on one RAS+ grid, their timing, and the header facts the import checks and records.
Identifying header values are kept in `identity` only, so that nothing written out can carry
them by accident.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: what `DynamicSeries.fmt` may be
FORMATS = ("dicom", "ecat", "nifti-bids")


@dataclass
class DynamicSeries:
    source: Path                     # the file or folder it was read from (named in every problem line)
    fmt: str                         # one of FORMATS
    frames: np.ndarray               # float32 (x, y, z, t), Bq/mL where `units` says so, RAS+ voxel order
    affine: np.ndarray               # 4×4 voxel → RAS+ world (mm)
    frame_start: list[float]         # seconds, as the header gives them (from injection or series start)
    frame_duration: list[float]      # seconds
    units: str | None = None         # normalised: "Bq/mL", or the header's own text if something else
    decay_corrected: bool | None = None
    # BIDS-PET keys (Modality, Manufacturer, ManufacturersModelName, ReconMethodName…), matrix, voxel_mm
    info: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)  # patient name/id/birth date, study date, series UID
    problems: list[str] = field(default_factory=list)       # header-level refusals found while reading
    notes: list[str] = field(default_factory=list)          # facts worth reporting, not refusals
    # DICOM only: every file of the series (path order), for what is written from its headers (#28)
    files: list[Path] = field(default_factory=list)
    # which series of `source` it is where a folder is not a series: "series 3f2a9c1e, +2 folders" (#28)
    hint: str = ""

    @property
    def label(self) -> str:
        """How a problem line names the series (no identifying value: a hash of the series UID at most)."""
        return f"{self.source} ({self.fmt}{' ' + self.hint if self.hint else ''})"

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[3]) if self.frames.ndim == 4 else 1
