"""Reading and writing NIfTI volumes with nibabel, with errors a user can act on.

Real files carry scale slope/intercept, integer or big-endian data and any orientation:
nibabel applies the scaling, we convert to native float32 and reorient to RAS+ so that
input and target, and every site, share one axis convention.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from petite_fl.atomic import atomic_path
from petite_fl.data.nifti_safe import load_nifti
from petite_fl.errors import DataError

AFFINE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class Volume:
    """A 3D volume in RAS+ orientation, float32, with its world affine (mm)."""

    data: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def zooms(self) -> tuple[float, float, float]:
        return tuple(float(z) for z in np.linalg.norm(self.affine[:3, :3], axis=0))


def load_volume(path: str | Path, what: str | None = None) -> Volume:
    """Load and validate one 3D PET volume; `what` prefixes errors (e.g. 'row 3 input')."""
    path = Path(path)
    label = f"{what}: {path}" if what else str(path)
    if not path.is_file():
        raise DataError(f"{label}: file not found")
    img = load_nifti(path, label)  # the header checked against the file before any voxel is allocated
    shape = img.shape
    if len(shape) < 3:
        raise DataError(f"{label}: a {len(shape)}D image (shape {shape}); a 3D volume is required")
    if len(shape) == 4 and shape[3] != 1:
        raise DataError(
            f"{label}: a 4D image with {shape[3]} frames (shape {shape}); give one 3D volume "
            "(e.g. the first frame for the input, the frame average for the target)"
        )
    if len(shape) > 4:
        raise DataError(f"{label}: a {len(shape)}D image (shape {shape}); a 3D volume is required")
    try:
        canonical = nib.as_closest_canonical(img)
        data = np.asarray(canonical.get_fdata(dtype=np.float32))
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise DataError(f"{label}: truncated or corrupt image data ({_why(exc)})") from None
    data = np.ascontiguousarray(data.reshape(shape[:3]) if data.ndim == 4 else data)
    _check_values(data, label)
    return Volume(data=data, affine=canonical.affine.copy(), path=path)


def _why(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_values(data: np.ndarray, label: str) -> None:
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum() - n_nan)
        raise DataError(f"{label}: contains {n_nan} NaN and {n_inf} Inf voxels")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi == 0.0:
        raise DataError(f"{label}: the volume is all zeros")
    if lo == hi:
        raise DataError(f"{label}: the volume is constant ({lo}); nothing to learn from")


def check_pair(input_vol: Volume, other: Volume, where: str, what: str = "target") -> None:
    """The input and the `what` volume (target, truth, regions) must share one voxel grid in world space."""
    if input_vol.data.shape != other.data.shape:
        raise DataError(f"{where}: input shape {input_vol.data.shape} differs from {what} shape {other.data.shape}")
    if not np.allclose(input_vol.affine, other.affine, atol=AFFINE_TOLERANCE_MM):
        delta = float(np.abs(input_vol.affine - other.affine).max())
        raise DataError(
            f"{where}: input and {what} affines differ (largest difference {delta:.4g} mm); "
            "they must be on the same voxel grid"
        )


def save_volume(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    dtype: type = np.float32,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Write a NIfTI atomically; integer dtypes get nibabel's slope/intercept scaling."""
    img = nib.Nifti1Image(np.asarray(data), affine, header=header)
    img.set_data_dtype(dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return Path(path)
