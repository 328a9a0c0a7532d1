"""An ECAT 7 `.v` file (the HR+ class, as ADNI distributes it) → DynamicSeries, with nibabel.

nibabel reads the frames with their scale factors and the main header and per-frame
subheaders; timing is in the subheaders (ms), units in the main header.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.wrapstruct import WrapStructError

from petite_fl.data.dynamic import DynamicSeries
from petite_fl.data.nifti_safe import check_claim
from petite_fl.data.readers.nifti import normalise_units
from petite_fl.errors import DataError

ECAT_IMAGE_FILE_TYPES = {7}   # 7: "Volume16", the reconstructed image; others are sinograms or normalisations


def read_ecat(path: Path) -> DynamicSeries:
    """Read every frame of one ECAT 7 file; problems become lines, not exceptions."""
    series = DynamicSeries(path, "ecat", np.zeros((0, 0, 0, 0), np.float32), np.eye(4), [], [])
    try:
        img = nib.ecat.load(path)
        header, subs = img.header, img.get_subheaders().subheaders
        # nibabel allocates every frame the subheaders claim before reading one: bound the claim first
        check_claim(series.label, tuple(img.shape), img.get_data_dtype(0), available=path.stat().st_size)
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except DataError as exc:
        series.problems.append(str(exc))
        return series
    except (ImageFileError, WrapStructError, EOFError, OSError, zlib.error, ValueError, IndexError) as exc:
        series.problems.append(f"{series.label}: unreadable ECAT 7 file ({_why(exc)})")
        return series
    if data.ndim == 3:
        data = data[..., None]
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    series.frames = np.asarray(canonical.dataobj, dtype=np.float32)
    series.affine = canonical.affine.copy()
    series.frame_start = [float(s["frame_start_time"]) / 1000.0 for s in subs]
    series.frame_duration = [float(s["frame_duration"]) / 1000.0 for s in subs]
    series.units = normalise_units(_text(header["data_units"])) or None
    factors = [float(s["decay_corr_fctr"]) for s in subs]
    series.decay_corrected = True if any(f > 1.0 for f in factors) else None
    if series.decay_corrected is None:
        series.notes.append(f"{series.label}: decay correction not stated (every decay_corr_fctr ≤ 1)")
    series.info.update({
        "Modality": "PT", "Manufacturer": "CTI/Siemens", "ManufacturersModelName": f"ECAT {int(header['system_type'])}",
        "Isotope": _text(header["isotope_name"]), "matrix": [int(n) for n in series.frames.shape[:3]],
        "voxel_mm": [round(float(z), 6) for z in np.linalg.norm(series.affine[:3, :3], axis=0)],
    })
    series.identity.update({"PatientName": _text(header["patient_name"]), "PatientID": _text(header["patient_id"]),
                            "PatientBirthDate": str(int(header["patient_birth_date"])),
                            "StudyDate": str(int(header["scan_start_time"]))})
    if int(header["file_type"]) not in ECAT_IMAGE_FILE_TYPES:
        kind = int(header["file_type"])
        series.problems.append(f"{series.label}: ECAT file type {kind} is not a reconstructed image (7)")
    tilt = float(header["gantry_tilt"])
    if abs(tilt) > 1e-3:
        series.problems.append(f"{series.label}: gantry tilt {tilt:g}°; untilted slices are needed")
    if int(header["num_bed_pos"]) > 0:
        series.problems.append(f"{series.label}: {int(header['num_bed_pos']) + 1} bed positions; one is needed")
    series.notes.append(f"{series.label}: orientation from nibabel's ECAT affine (ECAT 7 has no patient orientation)")
    return series


def _text(value: np.ndarray) -> str:
    return bytes(value).split(b"\0")[0].decode("latin-1").strip()


def _why(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
