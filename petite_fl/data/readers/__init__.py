"""Find a site's dynamic PET series under a folder and read each one into a DynamicSeries (#16).

One module per format: `dicom` (dcm2niix + pydicom), `ecat` (nibabel), `nifti` (nibabel +
BIDS-PET sidecar). A bad series is described in `DynamicSeries.problems`, never raised, so an
import goes on with the other subjects; only a SRC that does not exist is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from petite_fl.data.dynamic import DynamicSeries
from petite_fl.data.readers.dicom import read_dicom
from petite_fl.data.readers.ecat import read_ecat
from petite_fl.data.readers.nifti import read_nifti, sidecar_of
from petite_fl.data.source_tree import source_top, stays_in
from petite_fl.errors import DataError

__all__ = ["find_series", "read_series"]


def find_series(src: Path) -> list[Path]:
    """Candidate series under `src`: DICOM folders (or a DICOMDIR's folder), `.v` files, NIfTI with a sidecar."""
    src = Path(src)
    if not src.exists():
        raise DataError(f"{src}: no such file or folder")
    if src.is_file():
        return [src.parent] if src.name == "DICOMDIR" or is_dicom(src) else [src] if _format(src) else []
    found: list[Path] = []
    top = source_top(src)
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(root)
        if "DICOMDIR" in files:
            found.append(here)         # dcm2niix reads the folders below it
            dirs[:] = []
            continue
        # a link out of the tree is never opened here; the importer's screen names it in one line
        paths = [here / name for name in sorted(files) if not name.startswith(".") and stays_in(here / name, top)]
        found += [p for p in paths if _format(p) in ("ecat", "nifti-bids")]
        if any(is_dicom(p) for p in paths if _format(p) is None):
            found.append(here)
    return found


def read_series(path: Path) -> DynamicSeries:
    """Read one candidate from `find_series` with the reader of its format."""
    path = Path(path)
    if path.is_dir():
        return read_dicom(path)
    if path.name == "DICOMDIR":
        return read_dicom(path.parent)
    fmt = _format(path)
    if fmt == "ecat":
        return read_ecat(path)
    if fmt == "nifti-bids":
        return read_nifti(path)
    series = DynamicSeries(path, "dicom", np.zeros((0, 0, 0, 0), np.float32), np.eye(4), [], [])
    series.problems.append(f"{series.label}: not a DICOM folder, ECAT 7 (.v) or NIfTI file")
    return series


def is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _format(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".v"):
        return "ecat"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti-bids" if sidecar_of(path).is_file() else None
    return None
