"""4D NIfTI with a BIDS-PET `.json` sidecar → DynamicSeries (nibabel; BIDS-PET keys).

Also the second half of the DICOM path: dcm2niix writes exactly this (a 4D NIfTI and a
BIDS sidecar), so both formats share one reading of timing, units and decay correction.
"""

from __future__ import annotations

import json
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.wrapstruct import WrapStructError

from petite_fl.data.dynamic import DynamicSeries
from petite_fl.data.nifti_safe import load_nifti
from petite_fl.errors import DataError

#: BIDS-PET / dcm2niix sidecar keys copied into `info`
INFO_KEYS = ("Modality", "Manufacturer", "ManufacturersModelName", "ReconMethodName", "ReconstructionMethod",
             "SeriesDescription", "TracerName", "BodyPart")
BQML = {"bq/ml", "bqml", "bq/cc", "bq/cm3"}


def sidecar_of(image: Path) -> Path:
    """`x.nii.gz` / `x.nii` → `x.json`."""
    name = image.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]
    return image.with_name(stem + ".json")


def read_nifti(path: Path, fmt: str = "nifti-bids") -> DynamicSeries:
    """Read a 4D NIfTI and its sidecar; bad files become problem lines, never exceptions."""
    empty = DynamicSeries(path, fmt, np.zeros((0, 0, 0, 0), np.float32), np.eye(4), [], [])
    try:
        img = nib.as_closest_canonical(load_nifti(path, empty.label))  # the header bounded before allocation
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except DataError as exc:
        empty.problems.append(f"{empty.label}: unreadable image file ({str(exc).removeprefix(empty.label + ': ')})")
        return empty
    except (ImageFileError, WrapStructError, EOFError, OSError, zlib.error, ValueError) as exc:
        empty.problems.append(f"{empty.label}: unreadable image file ({_why(exc)})")
        return empty
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        empty.problems.append(f"{empty.label}: a {data.ndim}D image (shape {data.shape}); a 3D or 4D PET image needed")
        return empty
    series = DynamicSeries(path, fmt, data, img.affine.copy(), [], [])
    sidecar = load_sidecar(sidecar_of(path), series)
    apply_sidecar(series, sidecar)
    return series


def load_sidecar(path: Path, series: DynamicSeries) -> dict[str, Any]:
    """The sidecar as a dict; a missing or broken one is a problem line (timing is unknown)."""
    if not path.is_file():
        series.problems.append(f"{series.label}: no BIDS-PET sidecar {path.name} (frame times and units unknown)")
        return {}
    try:
        value = json.loads(path.read_text(), strict=False)  # dcm2niix copies control characters raw
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        series.problems.append(f"{series.label}: unreadable sidecar {path.name} ({_why(exc)})")
        return {}
    if not isinstance(value, dict):
        series.problems.append(f"{series.label}: sidecar {path.name} is not a JSON object")
        return {}
    return value


def apply_sidecar(series: DynamicSeries, sidecar: dict[str, Any]) -> None:
    """Timing, units, decay correction and scanner facts from BIDS-PET keys into `series`."""
    series.info.update({k: sidecar[k] for k in INFO_KEYS if k in sidecar})
    series.info["matrix"] = [int(n) for n in series.frames.shape[:3]]
    series.info["voxel_mm"] = [round(float(z), 6) for z in np.linalg.norm(series.affine[:3, :3], axis=0)]
    modality = sidecar.get("Modality")
    if modality is not None and str(modality).upper() not in ("PT", "PET"):
        series.problems.append(f"{series.label}: not PET (Modality {modality})")
    series.units = normalise_units(sidecar.get("Units"))
    series.decay_corrected = decay_corrected(sidecar)
    starts, durations = sidecar.get("FrameTimesStart"), sidecar.get("FrameDuration")
    starts = _floats(starts) if starts is not None else None
    durations = _floats(durations) if durations is not None else None
    n = series.n_frames
    if n == 1:  # a frame of a series per frame: `readers.dicom.restart_clock` orders them by it
        series.info["AcquisitionTime"] = sidecar.get("AcquisitionTime")
    if starts is None and n == 1 and durations is not None:
        starts = [clock_offset(sidecar)]       # dcm2niix gives a single-frame series no FrameTimesStart
    if starts is None or durations is None:
        series.problems.append(f"{series.label}: no FrameTimesStart/FrameDuration in the sidecar (timing unknown)")
        return
    if len(starts) != n or len(durations) != n:
        series.problems.append(
            f"{series.label}: the sidecar times {len(starts)} starts / {len(durations)} durations for {n} frames")
        return
    series.frame_start, series.frame_duration = starts, durations


def normalise_units(units: Any) -> str | None:
    if units is None:
        return None
    return "Bq/mL" if str(units).strip().lower() in BQML else str(units)


def decay_corrected(sidecar: dict[str, Any]) -> bool | None:
    """BIDS `ImageDecayCorrected`, else DICOM's DecayCorrection (NONE = not corrected)."""
    if isinstance(sidecar.get("ImageDecayCorrected"), bool):
        return sidecar["ImageDecayCorrected"]
    dc = sidecar.get("DecayCorrection")
    return None if dc is None else str(dc).strip().upper() not in ("", "NONE")


def clock_offset(sidecar: dict[str, Any]) -> float:
    """Seconds from SeriesTime to AcquisitionTime (0 when either is missing)."""
    a, s = clock_seconds(sidecar.get("AcquisitionTime")), clock_seconds(sidecar.get("SeriesTime"))
    return 0.0 if a is None or s is None else a - s


def clock_seconds(text: Any) -> float | None:
    """'HH:MM:SS[.ffffff]' (dcm2niix's times of day) → seconds since midnight."""
    for pattern in ("%H:%M:%S.%f", "%H:%M:%S"):
        try:
            t = datetime.strptime(str(text), pattern)
        except ValueError:
            continue
        return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6
    return None


def _floats(value: Any) -> list[float]:
    return [float(v) for v in (value if isinstance(value, list) else [value])]


def _why(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
