"""Opening a NIfTI someone else wrote: its header is checked against the file before a voxel is allocated.

nibabel allocates what a header claims (shape × data type) and only then reads, so a 200-byte
`.nii.gz` can claim 48 GiB. Here the claim is bounded first (a PET image has at most
`max_voxels()` voxels), an uncompressed file must hold it, and a compressed one is decompressed
with the claim as its cap into memory that grows only with what the file really holds; nibabel
then reads that stream. Hand-written because nibabel has no such bound (its `mmap` helps only
uncompressed files, and a gzip's size trailer is a hint a forger writes too).
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Callable
from math import prod
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import Opener
from nibabel.spatialimages import HeaderDataError

from petite_fl.console import human_bytes
from petite_fl.errors import ConfigError, DataError

#: the default bound on voxels of one image (all frames): a 1024³ volume twice over, 8 GiB as float32
MAX_VOXELS = 2**31
MAX_VOXELS_ENV = "PETITE_FL_MAX_VOXELS"
#: header extensions before the image data: PET files carry a few KiB at most
MAX_DATA_OFFSET = 2**24
CHUNK = 2**20
COMPRESSED = frozenset(ext for ext in Opener.compress_ext_map if ext)
#: sizeof_hdr → the single-file image class and its magic
KINDS = {348: (nib.Nifti1Image, b"n+1"), 540: (nib.Nifti2Image, b"n+2")}
READ_ERRORS = (EOFError, OSError, zlib.error, ValueError, KeyError, HeaderDataError)


def max_voxels() -> int:
    """The voxel bound: `PETITE_FL_MAX_VOXELS` when set (a site with larger images raises it), else MAX_VOXELS."""
    raw = os.environ.get(MAX_VOXELS_ENV)
    if raw is None or not raw.strip():
        return MAX_VOXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{MAX_VOXELS_ENV}={raw!r} is not a positive whole number of voxels")
    return value


def describe(shape: tuple[int, ...], dtype: np.dtype) -> str:
    """'a 2048×2048×3072 float32 image (48.0 GiB)': what a header claims, for a refusal line."""
    return f"a {'×'.join(str(n) for n in shape)} {dtype.name} image ({human_bytes(prod(shape) * dtype.itemsize)})"


def check_claim(label: str, shape: tuple[int, ...], dtype: np.dtype, available: int | None = None,
                limit: int | None = None) -> None:
    """Refuse a claimed shape over the voxel bound, or larger than the `available` bytes that hold it."""
    limit = max_voxels() if limit is None else limit
    if prod(shape) > limit:
        raise DataError(f"{label}: the header claims {describe(shape, dtype)}, more than the {limit} voxels "
                        f"petite reads as one PET image ({MAX_VOXELS_ENV} raises the bound); refused before reading")
    if available is not None and prod(shape) * dtype.itemsize > available:
        raise DataError(f"{label}: the header claims {describe(shape, dtype)} but the file holds only "
                        f"{human_bytes(max(available, 0))} of it; truncated, or a header that lies")


def load_nifti(path: str | Path, label: str | None = None, limit: int | None = None) -> nib.Nifti1Image:
    """A single-file NIfTI-1/2 image whose voxels are known to be in the file; every failure one DataError line."""
    path = Path(path)
    label = label or str(path)
    klass, header = _header(path, label)
    shape, dtype = tuple(int(n) for n in header.get_data_shape()), header.get_data_dtype()
    offset = int(header.get_data_offset())
    if not 0 <= offset <= MAX_DATA_OFFSET:
        raise DataError(f"{label}: the header puts the image data at byte {offset}; a NIfTI's data starts "
                        f"within {human_bytes(MAX_DATA_OFFSET)}")
    check_claim(label, shape, dtype, limit=limit)
    needed = offset + prod(shape) * dtype.itemsize
    if path.suffix.lower() not in COMPRESSED:
        check_claim(label, shape, dtype, available=path.stat().st_size - offset, limit=limit)
        return _parsed(label, lambda: nib.load(path))
    stream = _read_capped(path, needed, label)
    check_claim(label, shape, dtype, available=stream.getbuffer().nbytes - offset, limit=limit)
    stream.seek(0)
    return _parsed(label, lambda: klass.from_stream(stream))


def _header(path: Path, label: str) -> tuple[type, nib.Nifti1Header]:
    """The header alone (no extension, no voxel), and the image class it belongs to."""
    try:
        with Opener(path) as fh:
            block = fh.read(540)
    except READ_ERRORS as exc:
        raise DataError(f"{label}: cannot read the NIfTI header ({_why(exc)})") from None
    sizes = {int(np.frombuffer(block[:4], order + "i4")[0]) for order in "<>"} if len(block) >= 4 else set()
    kind = next((KINDS[size] for size in sizes if size in KINDS and len(block) >= size), None)
    if kind is None:
        raise DataError(f"{label}: not a NIfTI file")
    klass, magic = kind
    try:
        header = klass.header_class(block[: klass.header_class.sizeof_hdr])
    except READ_ERRORS as exc:
        raise DataError(f"{label}: cannot read the NIfTI header ({_why(exc)})") from None
    found = bytes(header["magic"]).rstrip(b"\0")
    if found != magic:
        raise DataError(f"{label}: not a single-file NIfTI (magic {found!r})")
    return klass, header


def _read_capped(path: Path, needed: int, label: str) -> io.BytesIO:
    """Decompress at most `needed` bytes; memory follows what the file holds, never what it claims."""
    out = io.BytesIO()
    try:
        with Opener(path) as fh:
            while out.tell() < needed:
                chunk = fh.read(min(CHUNK, needed - out.tell()))
                if not chunk:
                    break
                out.write(chunk)
    except READ_ERRORS as exc:
        raise DataError(f"{label}: truncated or corrupt image data ({_why(exc)})") from None
    return out


def _parsed(label: str, load: Callable[[], nib.Nifti1Image]) -> nib.Nifti1Image:
    try:
        img = load()
    except ImageFileError:
        raise DataError(f"{label}: not a NIfTI file") from None
    except READ_ERRORS as exc:
        raise DataError(f"{label}: cannot read the NIfTI header ({_why(exc)})") from None
    return img


def _why(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
