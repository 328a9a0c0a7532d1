"""A folder of PET DICOM (or a DICOMDIR) → DynamicSeries, through dcm2niix.

dcm2niix is the community's converter: it sorts slices, applies per-slice rescale slopes and
the vendors' geometry quirks, and writes a BIDS-PET sidecar, so no slice sorter is written here.
pydicom reads only the tags the sidecar leaves out: the identifying ones (kept in `identity`)
the gantry tilt and the slice positions (`slices.py`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from petite_fl.data.dynamic import DynamicSeries
from petite_fl.data.readers.nifti import clock_seconds, normalise_units, read_nifti
from petite_fl.data.readers.slices import slice_problems

IDENTITY_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate")
TIMEOUT_S = 600


def dcm2niix_binary() -> str | None:
    """The binary of the `dcm2niix` pip package, else one beside this Python or on PATH."""
    try:
        import dcm2niix
        if Path(dcm2niix.bin).is_file():
            return dcm2niix.bin
    except ImportError:
        pass
    return shutil.which("dcm2niix", path=str(Path(sys.executable).parent)) or shutil.which("dcm2niix")


def read_dicom(folder: Path) -> DynamicSeries:
    """Convert with dcm2niix into a temporary folder, read that, add what pydicom tells."""
    series = DynamicSeries(folder, "dicom", np.zeros((0, 0, 0, 0), np.float32), np.eye(4), [], [])
    every = read_headers(folder)
    headers = first_headers(every)
    if not headers:
        series.problems.append(f"{series.label}: no readable DICOM file")
        return series
    slices = slice_problems(series.label, every)   # also told when dcm2niix then gives up
    binary = dcm2niix_binary()
    if binary is None:
        series.problems.append(f"{series.label}: dcm2niix not found (pip install dcm2niix)")
        return series
    with tempfile.TemporaryDirectory(prefix="petite-dcm2niix-") as tmp:
        args = [binary, "-b", "y", "-z", "n", "-f", "%s_%j", "-o", tmp, str(folder)]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            series.problems.append(f"{series.label}: dcm2niix failed ({exc})")
            return series
        images = sorted(Path(tmp).glob("*.nii"))
        if not images:
            why = _last_error(done.stdout + done.stderr)
            series.problems += slices
            series.problems.append(f"{series.label}: dcm2niix made no image ({why})")
            return series
        parts = [read_nifti(image, fmt="dicom") for image in images]
    series = combine(folder, parts)
    add_header_facts(series, headers)
    for line in slices:
        if not ("bed position" in line and any("bed position" in p for p in series.problems)):
            series.problems.append(line)
    return series


def combine(folder: Path, parts: list[DynamicSeries]) -> DynamicSeries:
    """One image is the series; several single-frame images on one grid are one frame each."""
    for part in parts:   # name the DICOM folder, not dcm2niix's temporary file
        old = part.label
        part.source = folder
        part.problems = [line.replace(old, part.label, 1) for line in part.problems]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    same_grid = all(p.frames.shape[:3] == first.frames.shape[:3] and np.allclose(p.affine, first.affine, atol=1e-3)
                    for p in parts)
    out = DynamicSeries(folder, "dicom", first.frames, first.affine, [], [], first.units, first.decay_corrected,
                        dict(first.info))
    if not same_grid or any(p.n_frames != 1 for p in parts):
        shapes = ", ".join(f"{tuple(p.frames.shape)}" for p in parts)
        out.problems.append(f"{out.label}: {len(parts)} images of different grids or several multi-frame series "
                            f"(several bed positions or series in one folder?): {shapes}")
        return out
    if len({p.frame_start[0] for p in parts if p.frame_start}) < len(parts) and not restart_clock(out, parts):
        return out
    parts = sorted(parts, key=lambda p: p.frame_start[0] if p.frame_start else 0.0)
    out.frames = np.concatenate([p.frames for p in parts], axis=3)
    for p in parts:
        out.frame_start += p.frame_start
        out.frame_duration += p.frame_duration
        out.problems += [line for line in p.problems if line not in out.problems]
    out.notes.append(f"{out.label}: {len(parts)} frames, one series each, stacked by frame start")
    return out


def restart_clock(out: DynamicSeries, parts: list[DynamicSeries]) -> bool:
    """Frames whose series each restart SeriesTime: time them by AcquisitionTime from the first frame."""
    clocks = [clock_seconds(p.info.get("AcquisitionTime")) for p in parts]
    if None in clocks or len(set(clocks)) < len(parts):
        out.problems.append(f"{out.label}: {len(parts)} single-frame series without distinct start times "
                            "(frame order unknown)")
        return False
    first = min(c for c in clocks if c is not None)
    for part, clock in zip(parts, clocks, strict=True):
        part.frame_start = [float(clock) - first] if clock is not None else []
    out.notes.append(f"{out.label}: frame starts from AcquisitionTime, counted from the first frame")
    return True


def read_headers(folder: Path) -> list[Any]:
    """Every readable DICOM header under `folder` (no pixel data), in path order."""
    headers = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
            continue
    return headers


def first_headers(every: list[Any]) -> dict[str, Any]:
    """The first header of each series."""
    headers: dict[str, Any] = {}
    for ds in every:
        uid = str(ds.get("SeriesInstanceUID", ""))
        if uid and uid not in headers:
            headers[uid] = ds
    return headers


def add_header_facts(series: DynamicSeries, headers: dict[str, Any]) -> None:
    """Identity (kept apart), modality, units, decay correction and tilt from the DICOM tags."""
    first = next(iter(headers.values()))
    series.identity.update({tag: str(first.get(tag, "")) for tag in IDENTITY_TAGS})
    series.identity["SeriesInstanceUID"] = sorted(headers)
    modality = str(first.get("Modality", "")).upper()
    series.info.setdefault("Modality", modality)
    if modality and modality != "PT" and not any("not PET" in p for p in series.problems):
        series.problems.append(f"{series.label}: not PET (Modality {modality})")
    if series.units is None and "Units" in first:
        series.units = normalise_units(first.Units)
    if series.decay_corrected is None and "DecayCorrection" in first:
        series.decay_corrected = str(first.DecayCorrection).upper() != "NONE"
    tilts = {float(ds.get("GantryDetectorTilt", 0) or 0) for ds in headers.values()}
    if any(abs(t) > 1e-3 for t in tilts):
        series.problems.append(f"{series.label}: gantry tilt {max(tilts, key=abs):g}°; untilted slices are needed")


def _last_error(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "warning" in line.lower()]
    return (errors or lines or ["no output"])[-1]
