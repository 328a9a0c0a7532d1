"""Index a source tree's DICOM files by series: a series is its SeriesInstanceUID, not a folder (#28).

Media exports and PACS downloads split one series over several folders, or mix several series
(several patients) in one; reading folder by folder then finds "missing slices" or "several bed
positions" everywhere. So every DICOM file under the source (a DICOMDIR's files included) is
opened for its header only, the files are grouped by SeriesInstanceUID across
the whole tree, and each group is handed to dcm2niix alone (`dicom.read_dicom`). Folders stay
only as a hint in messages.

A dynamic acquisition written as one series per frame is grouped back into one series by
`frame_families` (its docstring gives the rule). Links out of the tree are never opened here:
`source_tree.screen` names them in one line.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from petite_fl.data.source_tree import source_top, stays_in

#: Every tag the index, the slice checks and the reader use: headers are read with these only (speed).
HEADER_TAGS = [Tag(keyword) for keyword in [
    "SOPClassUID", "SOPInstanceUID", "Modality", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID",
    "PatientName", "PatientID", "PatientBirthDate", "StudyDate", "SeriesDescription", "SeriesNumber", "SeriesType",
    "Rows", "Columns", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "NumberOfSlices",
    "NumberOfTimeSlices", "ImageIndex", "FrameReferenceTime", "AcquisitionDate", "AcquisitionTime",
    "ActualFrameDuration", "Units", "DecayCorrection", "CorrectedImage", "ReconstructionMethod", "GantryDetectorTilt",
]]  # as tags: pydicom would convert each keyword again for every file
_UNREADABLE = (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, IndexError)


@dataclass(frozen=True)
class DicomSeriesFiles:
    """One DICOM series of a source tree (a `find_series` candidate): its files, wherever they lie."""

    files: tuple[Path, ...]              # path order, as found under the source
    uids: tuple[str, ...]                # SeriesInstanceUID(s): several when each frame was written as a series
    modality: str = ""
    duplicates: int = 0                  # files left out: the same SOP instance seen again (a copied file)

    @property
    def folders(self) -> tuple[Path, ...]:
        return tuple(sorted({f.parent for f in self.files}))

    @property
    def folder(self) -> Path:
        """The first of its folders in path order: the hint messages give for where the series lies."""
        return self.folders[0]

    @property
    def hint(self) -> str:
        """'series 3f2a9c1e of 6 frame series, +2 folders': a hash of the UIDs, never an identity value."""
        text = f"series {uid_hash(self.uids)}"
        if len(self.uids) > 1:
            text += f" of {len(self.uids)} frame series"
        more = len(self.folders) - 1
        return text + (f", +{more} folder{'s' if more > 1 else ''}" if more else "")

    @property
    def label(self) -> str:
        return f"{self.folder} (dicom {self.hint})"

    def label_in(self, top: Path) -> str:
        """The label with the folder relative to the source (for the link screen's lines)."""
        folder = self.folder.relative_to(top) if self.folder.is_relative_to(top) else self.folder
        return f"{folder} ({self.hint})"

    def __str__(self) -> str:
        return self.label


def uid_hash(uids: tuple[str, ...] | list[str]) -> str:
    """First 8 hex digits of sha256 of the UIDs joined by '\\' (DICOM's multi-value separator)."""
    return hashlib.sha256("\\".join(sorted(uids)).encode()).hexdigest()[:8]


def read_header(path: Path, force: bool = False) -> Any | None:
    """The header (HEADER_TAGS only, no pixels) of a DICOM file, or None when it is not one."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=force, specific_tags=HEADER_TAGS)
    except _UNREADABLE:
        return None


@dataclass
class _Group:
    first: Any
    files: list[Path] = field(default_factory=list)
    sops: set[str] = field(default_factory=set)
    times: set[tuple[str, str, str]] = field(default_factory=set)
    duplicates: int = 0

    def add(self, path: Path, ds: Any) -> None:
        sop = str(ds.get("SOPInstanceUID", "")) or str(path.resolve())
        if sop in self.sops:
            self.duplicates += 1
            return
        self.sops.add(sop)
        self.files.append(path)
        self.times.add(frame_time(ds))


def frame_time(ds: Any) -> tuple[str, str, str]:
    """When a file's frame starts, as the header tells: acquisition date, time and frame reference time."""
    return (str(ds.get("AcquisitionDate", "")), str(ds.get("AcquisitionTime", "")),
            str(ds.get("FrameReferenceTime", "")))


def index_dicom(src: Path) -> list[DicomSeriesFiles]:
    """Every DICOM series under `src` (a folder or a DICOMDIR's folder), by SeriesInstanceUID, in path order."""
    top = source_top(src)
    groups: dict[str, _Group] = {}
    for path in dicom_paths(Path(src), top):
        ds = read_header(path)
        uid = str(ds.get("SeriesInstanceUID", "")) if ds is not None else ""
        if not uid:  # not DICOM (no 'DICM' after the preamble), or no image of a series
            continue
        groups.setdefault(uid, _Group(first=ds)).add(path, ds)
    found = []
    for family in frame_families(groups):
        files = tuple(sorted(f for uid in family for f in groups[uid].files))
        found.append(DicomSeriesFiles(files, tuple(sorted(family)), str(groups[family[0]].first.get("Modality", "")),
                                      sum(groups[uid].duplicates for uid in family)))
    return sorted(found, key=lambda s: s.files)


def dicom_paths(src: Path, top: Path) -> Iterator[Path]:
    """Each file under `src` to open (path order), none that is a link out of `top` (os.walk follows no folder link).

    A DICOMDIR needs no reading: media files are DICOM Part 10 files under its folder
    (PS3.10 §7, §8), so the walk finds every file it lists, and its own header has no series.
    """
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and name.upper() != "DICOMDIR" and stays_in(path, top):
                yield path


def frame_families(groups: dict[str, _Group]) -> list[list[str]]:
    """Series UIDs grouped into acquisitions: a dynamic scan written one series per frame becomes one.

    Some scanners and archives (and tests/pet_dicom.py's "series-per-frame" layout) write each
    frame of a dynamic PET acquisition as its own series, with its own SeriesInstanceUID and
    SeriesNumber. Such series are one acquisition when they all are PET (Modality PT), single
    frame (NumberOfTimeSlices ≤ 1 and one frame start among their files), not marked
    STATIC/WHOLE BODY/GATED in SeriesType, and share patient, StudyInstanceUID,
    FrameOfReferenceUID, SeriesDescription, reconstruction, units and corrections, matrix, pixel
    spacing and orientation; and their frame starts are distinct (two reconstructions of one
    frame are not two frames). Slice positions are not compared: frames at two bed positions
    stay one series so that the reader refuses it as multi-bed in one line. Anything else is
    one series per UID.
    """
    families: dict[tuple, list[str]] = {}
    alone: list[list[str]] = []
    for uid, group in groups.items():
        key = _family_key(group)
        if key is None:
            alone.append([uid])
        else:
            families.setdefault(key, []).append(uid)
    for members in families.values():
        starts = [next(iter(groups[uid].times)) for uid in members]
        if len(set(starts)) == len(members):
            alone.append(sorted(members))
        else:
            alone += [[uid] for uid in members]
    return alone


def _family_key(group: _Group) -> tuple | None:
    ds = group.first
    kind = ds.get("SeriesType") or [""]
    kind = str(kind if isinstance(kind, str) else kind[0]).upper()
    try:
        slots = int(ds.get("NumberOfTimeSlices") or 1)
    except (TypeError, ValueError):
        slots = 2  # unreadable: not known to be one frame
    if str(ds.get("Modality", "")).upper() != "PT" or kind not in ("", "DYNAMIC") or len(group.times) != 1 \
            or slots > 1:
        return None
    words = ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID", "SeriesDescription", "ReconstructionMethod",
             "Units", "DecayCorrection", "CorrectedImage", "Rows", "Columns", "NumberOfSlices")
    values = tuple(str(ds.get(word, "")) for word in words)
    grid = tuple(round(float(v), 4) for name in ("PixelSpacing", "ImageOrientationPatient") for v in ds.get(name) or [])
    return values + grid
