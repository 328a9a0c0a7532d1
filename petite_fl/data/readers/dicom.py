"""One PET DICOM series (its files, found by `series_index`) → DynamicSeries, through dcm2niix.

dcm2niix is the community's converter: it sorts slices, applies per-slice rescale slopes and
the vendors' geometry quirks, and writes a BIDS-PET sidecar, so no slice sorter is written here.
pydicom reads only the tags the sidecar leaves out: the identifying ones (kept in `identity`)
the gantry tilt and the slice positions (`slices.py`).

dcm2niix converts a folder, and a series' files may lie in several folders beside other
series: it is given a temporary folder of symbolic links to that series' files alone.
Links, not copies (no data is copied) nor hard links (those fail across file systems and on
read-only media); dcm2niix opens a linked file as the file itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from petite_fl.data.dynamic import DynamicSeries
from petite_fl.data.readers.nifti import clock_seconds, normalise_units, read_nifti
from petite_fl.data.readers.series_index import DicomSeriesFiles, index_dicom, read_header
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


def read_dicom(source: Path | DicomSeriesFiles) -> DynamicSeries:
    """Read one series: a `find_series` candidate, or a folder (or DICOMDIR's folder) holding exactly one."""
    if isinstance(source, DicomSeriesFiles):
        return read_series_files(source)
    folder = Path(source)
    found = index_dicom(folder)
    if len(found) == 1:
        return read_series_files(found[0])
    series = _empty(folder)
    why = "no readable DICOM file" if not found else (
        f"{len(found)} DICOM series ({', '.join(s.hint for s in found[:3])}{', …' if len(found) > 3 else ''}); "
        "read each one found by find_series")
    series.problems.append(f"{series.label}: {why}")
    return series


def read_series_files(source: DicomSeriesFiles) -> DynamicSeries:
    """Convert the series' files with dcm2niix in a temporary folder, read that, add what pydicom tells."""
    series = _empty(source.folder, source)
    every = [ds for ds in (read_header(path, force=True) for path in source.files) if ds is not None]
    headers = first_headers(every)
    if not headers:
        series.problems.append(f"{series.label}: no readable DICOM file")
        return series
    owners = {(str(ds.get("StudyInstanceUID", "")), str(ds.get("PatientID", ""))) for ds in every}
    if len(owners) > 1:  # a UID reused across patients or studies (a faulty exporter): never one subject
        series.problems.append(f"{series.label}: its files belong to {len(owners)} different studies or patients "
                               "under one SeriesInstanceUID (a UID reused by an exporter or anonymiser?); refused")
        return series
    modality = str(next(iter(headers.values())).get("Modality", "")).upper()
    if modality and modality != "PT":   # refused from its header alone: no conversion
        series.problems.append(f"{series.label}: not PET (Modality {modality})")
        return series
    slices = slice_problems(series.label, every)   # also told when dcm2niix then gives up
    with tempfile.TemporaryDirectory(prefix="petite-dcm2niix-") as tmp:
        parts, why = _convert(source, Path(tmp))
        if why:
            series.problems += slices if "made no image" in why else []
            series.problems.append(f"{series.label}: {why}")
            return series
    series = combine(source, parts)
    add_header_facts(series, headers)
    if any("bed position" in line for line in slices):  # the slice check says it more precisely, and
        series.problems = [line for line in series.problems if "images of different grids" not in line]
        series.frames = np.zeros((0, 0, 0, 0), np.float32)   # a volume of several beds has nothing more to check
    series.problems += slices
    if source.duplicates:
        series.notes.append(f"{series.label}: {source.duplicates} duplicate file(s) of one instance left out")
    return series


def _convert(source: DicomSeriesFiles, tmp: Path) -> tuple[list[DynamicSeries], str | None]:
    """dcm2niix on a folder of links to the series' files alone: (images read back, or why none)."""
    binary = dcm2niix_binary()
    if binary is None:
        return [], "dcm2niix not found (pip install dcm2niix)"
    linked, out = tmp / "in", tmp / "out"
    linked.mkdir()
    out.mkdir()
    for k, path in enumerate(source.files):  # numbered: two folders may hold files of one name
        (linked / f"{k:06d}_{path.name}").symlink_to(path.resolve())
    args = [binary, "-b", "y", "-z", "n", "-f", "%s_%j", "-o", str(out), str(linked)]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"dcm2niix failed ({exc})"
    images = sorted(out.glob("*.nii"))
    if not images:
        return [], f"dcm2niix made no image ({_last_error(done.stdout + done.stderr)})"
    return [read_nifti(image, fmt="dicom") for image in images], None


def _empty(folder: Path, source: DicomSeriesFiles | None = None) -> DynamicSeries:
    hint, files = (source.hint, list(source.files)) if source else ("", [])
    return DynamicSeries(folder, "dicom", np.zeros((0, 0, 0, 0), np.float32), np.eye(4), [], [], files=files,
                         hint=hint)


def combine(source: DicomSeriesFiles, parts: list[DynamicSeries]) -> DynamicSeries:
    """One image is the series; several single-frame images on one grid are one frame each."""
    for part in parts:   # name the series, not dcm2niix's temporary file
        old = part.label
        part.source, part.hint, part.files = source.folder, source.hint, list(source.files)
        part.problems = [line.replace(old, part.label, 1) for line in part.problems]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    same_grid = all(p.frames.shape[:3] == first.frames.shape[:3] and np.allclose(p.affine, first.affine, atol=1e-3)
                    for p in parts)
    out = DynamicSeries(source.folder, "dicom", first.frames, first.affine, [], [], first.units,
                        first.decay_corrected, dict(first.info), files=list(source.files), hint=source.hint)
    if not same_grid or any(p.n_frames != 1 for p in parts):
        shapes = ", ".join(f"{tuple(p.frames.shape)}" for p in parts)
        out.problems.append(f"{out.label}: {len(parts)} images of different grids or several multi-frame series "
                            f"(several bed positions?): {shapes}")
        out.frames = np.zeros((0, 0, 0, 0), np.float32)   # no frame to check further
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
