"""Find a site's dynamic PET series under a folder and read each one into a DynamicSeries (#16, #28).

One module per format: `dicom` (dcm2niix + pydicom), `ecat` (nibabel), `nifti` (nibabel +
BIDS-PET sidecar). A DICOM series is its SeriesInstanceUID, wherever its files lie
(`series_index`); an ECAT or NIfTI series is its file. A bad series is described in
`DynamicSeries.problems`, never raised, so an import goes on with the other subjects; only a
SRC that does not exist is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from petite_fl.data.dynamic import DynamicSeries
from petite_fl.data.readers.dicom import read_dicom
from petite_fl.data.readers.ecat import read_ecat
from petite_fl.data.readers.nifti import read_nifti, sidecar_of
from petite_fl.data.readers.series_index import DicomSeriesFiles, index_dicom
from petite_fl.data.source_tree import source_top, stays_in
from petite_fl.errors import DataError

__all__ = ["Candidate", "DicomSeriesFiles", "find_series", "read_series"]

#: What `find_series` returns and `read_series` reads: a DICOM series' files, or an ECAT/NIfTI file.
Candidate = DicomSeriesFiles | Path


def find_series(src: Path) -> list[Candidate]:
    """Candidate series under `src`, in path order: DICOM series by UID (DICOMDIRs' too), `.v` files, BIDS NIfTI.

    `src` may be a folder, a DICOMDIR (its folder's series), a DICOM file (its series, found in
    its folder) or an ECAT/NIfTI file.
    """
    src = Path(src)
    if not src.exists():
        raise DataError(f"{src}: no such file or folder")
    if src.is_file():
        if src.name.upper() == "DICOMDIR":
            return list(index_dicom(src.parent))
        if is_dicom(src):
            return [s for s in index_dicom(src.parent) if src.resolve() in {f.resolve() for f in s.files}]
        return [src] if _format(src) else []
    top = source_top(src)
    found: list[Candidate] = list(index_dicom(src))
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(root)
        # a link out of the tree is never opened here; the importer's screen names it in one line
        found += [here / name for name in sorted(files) if not name.startswith(".") and stays_in(here / name, top)
                  and _format(here / name) in ("ecat", "nifti-bids")]
    return sorted(found, key=lambda c: (c.files[0] if isinstance(c, DicomSeriesFiles) else c, str(c)))


def read_series(candidate: Candidate) -> DynamicSeries:
    """Read one candidate from `find_series` with the reader of its format (a DICOM folder holding one series too)."""
    if isinstance(candidate, DicomSeriesFiles):
        return read_dicom(candidate)
    path = Path(candidate)
    if path.is_dir():
        return read_dicom(path)
    if path.name.upper() == "DICOMDIR":
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
