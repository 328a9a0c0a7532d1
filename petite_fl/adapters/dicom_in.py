"""DICOM series as `petite infer --site` inputs: found and read by the importer's readers, their input
frames chosen by the importer's rules (#28).

`readers.find_series` / `read_series` find and convert a series (dcm2niix); its candidates are
opaque here. `pairing.check_series` refuses what the importer refuses (not PET, several bed
positions, not Bq/mL…), a static series is refused because the model denoises the first
`--input-minutes` of a dynamic one, and `pairing.make_pair` makes that input. A refused series
is one line (`DataError`), so a batch goes on with the next.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from petite_fl.adapters.dicom_out import frames_in_time_order
from petite_fl.data import readers
from petite_fl.data.dynamic import DynamicSeries
from petite_fl.data.pairing import check_series, input_frames, make_pair
from petite_fl.errors import DataError


@dataclass
class DicomInput:
    """One DICOM series ready to denoise: the input volume (RAS+ on `series.affine`) and its source headers."""

    series: DynamicSeries
    volume: np.ndarray
    frames: list[int]                    # the source frames (time order) the input is made of
    headers: list[list[Dataset]]         # the source's headers by frame (time order), slices along the normal
    input_minutes: float
    notes: list[str] = field(default_factory=list)

    @property
    def source_uid(self) -> str:
        """The SeriesInstanceUID of the input's first frame (the series the derived one refers to)."""
        return str(self.headers[self.frames[0]][0].SeriesInstanceUID)

    @property
    def uid_sha256(self) -> str:
        return hashlib.sha256(self.source_uid.encode()).hexdigest()

    @property
    def stem(self) -> str:
        """How its outputs are named: a hash, never a patient's or a folder's name."""
        return f"series-{self.uid_sha256[:16]}"

    @property
    def window(self) -> str:
        return f"first {self.input_minutes:g} min"


def is_dicom_source(path: Path) -> bool:
    """A DICOMDIR or a DICOM Part 10 file."""
    return path.name == "DICOMDIR" or readers.is_dicom(path)


def dicom_candidates(path: Path) -> list[Any]:
    """The DICOM series `find_series` finds under `path` (its NIfTI and ECAT files are left out)."""
    return [c for c in readers.find_series(path)
            if not (isinstance(c, Path) and c.is_file() and c.name != "DICOMDIR")]


def read_input(candidate: Any, input_minutes: float = 5.0) -> DicomInput:
    """Read, check and pair one candidate; a refused series raises one `DataError` line naming it."""
    series = readers.read_series(candidate)
    problems, notes = refusals(series, input_minutes)
    if problems:
        raise DataError(one_line(series.label, problems))
    headers = frames_in_time_order(series_files(series))
    if len(headers) != series.n_frames:
        raise DataError(f"{series.label}: the headers hold {len(headers)} frame(s) with geometry, "
                        f"the converted series {series.n_frames}")
    frames, _ = input_frames(series, input_minutes)
    volume, _ = make_pair(series, input_minutes)
    return DicomInput(series, volume, frames, headers, input_minutes, notes)


def refusals(series: DynamicSeries, input_minutes: float) -> tuple[list[str], list[str]]:
    """(problems, notes): the importer's refusals (any frame count will do) and a static series."""
    if series.fmt != "dicom":
        return [f"{series.label}: not a DICOM series"], []
    if series.n_frames == 1 and series.problems:   # the reader's lines say why (e.g. beds read as one frame)
        return list(series.problems), []
    if series.n_frames == 1 and series.frames.size:
        return [f"{series.label}: a static series (one frame); inference needs a dynamic series, "
                f"whose first {input_minutes:g} min are the short scan"], []
    return check_series(series, expect_frames=max(series.n_frames, 1), input_minutes=input_minutes)


def one_line(label: str, problems: Sequence[str]) -> str:
    """`label: a; b; c`: a series' problems as one skip line."""
    parts = [p.removeprefix(f"{label}: ") for p in problems]
    return f"{label}: {'; '.join(dict.fromkeys(parts))}"


def series_files(series: DynamicSeries) -> list[Path]:
    """Every DICOM file of the series: the reader's `files`, else those under its folder with its series UID(s)."""
    if series.files:
        return list(series.files)
    uids = set(series.identity.get("SeriesInstanceUID") or [])
    folder = Path(series.source)
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            uid = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).get(
                "SeriesInstanceUID")
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
            continue
        if uid is not None and str(uid) in uids:
            found.append(path)
    series.files = found
    return found
