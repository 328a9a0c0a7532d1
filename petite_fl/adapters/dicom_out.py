"""A prediction → a derived PET DICOM series beside its source, in the site's own PACS record (#28).

The derived series keeps the source's patient and study modules (it stays the site's own
record), its geometry slice by slice, its Units and timing, and gets ImageType DERIVED\\PRIMARY
(value 2 of the PET Image IOD is PRIMARY only: dciodvfy calls SECONDARY an error), a
DerivationDescription naming the adapter's and backbone's SHA-256, and references to the source
images (SourceImageSequence, ReferencedSeriesSequence). Its UIDs are derived from the source
series UID, both hashes and the input window (`pydicom.uid.generate_uid(entropy_srcs=…)`), so
denoising the same series with the same model again gives the same UIDs: a PACS store that
failed midway is completed by a rerun, not duplicated. Values are signed 16-bit with a
per-slice RescaleSlope (|error| ≤ slope / 2).

pydicom reads and writes the files; the headers are the source's own, edited, because no
library derives a series from a source series. The prediction lives on dcm2niix's RAS+ grid:
it is put back onto the DICOM column/row/slice order by matching the two grids' affines
(nibabel orientations), and refused when they do not match.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

from petite_fl import __version__
from petite_fl.data.readers.slices import frame_key
from petite_fl.data.synthetic import _swap_in  # the importer's build-beside-and-swap steps
from petite_fl.errors import DataError

#: how far (mm) the prediction's grid may sit from the one the source's headers give
GRID_TOLERANCE_MM = 0.01
#: how the DerivationDescription of every series petite-fl derives begins (the clinic loop passes such series over)
DERIVED_BY = "Denoised by petite-fl"
#: a derived series is numbered after its source's, as scanners number their reformats
SERIES_NUMBER_OFFSET = 1000
INT16_MAX = 32767
#: the source's tags that describe its own pixel values or vendor state, not the derived series'
DROPPED = ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "SmallestImagePixelValue",
           "LargestImagePixelValue", "SmallestPixelValueInSeries", "LargestPixelValueInSeries", "PixelPaddingValue",
           "IconImageSequence", "SourceImageSequence", "DerivationCodeSequence", "ReferencedSeriesSequence",
           "NumberOfTimeSlices", "ImageComments", "LossyImageCompression", "LossyImageCompressionRatio",
           "LossyImageCompressionMethod", "RescaleType")


@dataclass(frozen=True)
class DerivedSeries:
    """What `write_derived_series` wrote: the folder, its series UID and how many instances."""

    folder: Path
    series_uid: str
    source_uid: str
    instances: int


def frames_in_time_order(files: Sequence[Path]) -> list[list[Dataset]]:
    """The series' headers (no pixels) grouped by frame, frames by start time, slices along the normal."""
    groups: dict[tuple[str, str], list[Dataset]] = defaultdict(list)
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: not readable as DICOM ({exc})") from None
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "SOPInstanceUID" in ds:
            groups[frame_key(ds)].append(ds)
    frames = [sorted(g, key=_along_normal) for g in groups.values()]
    return sorted(frames, key=lambda g: (_float(g[0].get("FrameReferenceTime")), str(g[0].get("AcquisitionTime", ""))))


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _along_normal(ds: Dataset) -> float:
    orient = np.asarray(ds.ImageOrientationPatient, float)
    return float(np.dot(np.asarray(ds.ImagePositionPatient, float), np.cross(orient[:3], orient[3:])))


def dicom_affine(slices: Sequence[Dataset]) -> np.ndarray:
    """Voxel (column, row, slice) → RAS+ world (mm) of slices sorted along their normal (DICOM is LPS)."""
    first = slices[0]
    orient = np.asarray(first.ImageOrientationPatient, float)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    step = (np.zeros(3) if len(slices) < 2 else
            (np.asarray(slices[-1].ImagePositionPatient, float) - np.asarray(first.ImagePositionPatient, float))
            / (len(slices) - 1))
    if not np.any(step):
        step = np.cross(orient[:3], orient[3:]) * float(first.get("SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = orient[:3] * col_spacing, orient[3:] * row_spacing, step
    lps[:3, 3] = np.asarray(first.ImagePositionPatient, float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def to_dicom_order(pred: np.ndarray, affine: np.ndarray, slices: Sequence[Dataset], label: str) -> np.ndarray:
    """The prediction (on `affine`'s grid) as an array indexed (column, row, slice) of `slices`, by geometry."""
    target = dicom_affine(slices)
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.io_orientation(target))
    data = nib.orientations.apply_orientation(pred, ornt)
    moved = affine @ nib.orientations.inv_ornt_aff(ornt, pred.shape)
    want = (int(slices[0].Columns), int(slices[0].Rows), len(slices))
    if data.shape != want or not np.allclose(moved, target, atol=GRID_TOLERANCE_MM):
        raise DataError(f"{label}: the converted grid {pred.shape} does not match the series' own geometry "
                        f"(columns × rows × slices {want}); no derived series written")
    return data


def derived_uids(source_uid: str, adapter_sha256: str, backbone_sha256: str, window: str, n: int,
                 made_with: str = "") -> list[str]:
    """[series UID, instance 1 UID, …]: the same source, model, settings and writer give the same UIDs (a rerun
    completes a store); anything that changes the pixels (`made_with`: inference settings, mixed precision,
    petite-fl's version) gives new ones, since a PACS keeps the first copy of an instance it already holds."""
    seed = [source_uid, adapter_sha256, backbone_sha256, window, made_with, __version__]
    return [str(generate_uid(entropy_srcs=[*seed, "series"]))] + [
        str(generate_uid(entropy_srcs=[*seed, f"instance {k}"])) for k in range(1, n + 1)]


def quantise(plane: np.ndarray) -> tuple[np.ndarray, str]:
    """int16 values and the RescaleSlope (DS text) that keep the plane's range: |error| ≤ slope / 2."""
    peak = float(np.abs(plane).max())
    slope_text = pydicom.valuerep.format_number_as_ds(peak / INT16_MAX) if peak > 0 else "1"
    slope = float(slope_text)
    stored = np.round(plane / slope).clip(-INT16_MAX - 1, INT16_MAX).astype("<i2")
    return stored, slope_text


def write_derived_series(pred: np.ndarray, affine: np.ndarray, groups: Sequence[Sequence[Dataset]], out_dir: Path,
                         *, adapter_sha256: str, backbone_sha256: str, frames: Sequence[int] = (0,),
                         window: str = "", made_with: str = "") -> DerivedSeries:
    """Write `pred` (float, on `affine`'s RAS+ grid) as a derived PET series into folder `out_dir`.

    `groups` are the source's headers, `frames_in_time_order(files)`; `frames` the source frames
    the input was made of: the first gives the template headers, all are referenced. `window`
    (e.g. "first 5 min") enters the UIDs and the DerivationDescription. The folder is built
    beside `out_dir` and renamed in."""
    label = f"{out_dir.name}"
    if not groups or max(frames) >= len(groups):
        raise DataError(f"{label}: the source's files hold {len(groups)} frame(s) with geometry, "
                        f"frame {max(frames) + 1} needed")
    template = groups[frames[0]]
    data = to_dicom_order(np.asarray(pred, np.float32), affine, template, label)
    source_uid = str(template[0].SeriesInstanceUID)
    if not np.isfinite(pred).all():
        raise DataError(f"{label}: the prediction holds {int((~np.isfinite(pred)).sum())} non-finite value(s) "
                        "(NaN or infinity); no derived series written")
    uids = derived_uids(source_uid, adapter_sha256, backbone_sha256, window, len(template), made_with)
    duration_ms = sum(_float(groups[f][0].get("ActualFrameDuration")) for f in frames)
    description = (f"{DERIVED_BY} {__version__} from the {window or 'input'} of the source series: "
                   f"adapter sha256 {adapter_sha256}, backbone sha256 {backbone_sha256}")
    now = dt.datetime.now()
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for k, src in enumerate(template):
            refs = [groups[f][k] for f in frames if len(groups[f]) == len(template)]
            ds = derived_slice(src, data[:, :, k].T, uids[0], uids[k + 1], k, len(template), refs)
            ds.DerivationDescription = description
            ds.ActualFrameDuration = round(duration_ms) if duration_ms else src.get("ActualFrameDuration", 0)
            ds.InstanceCreationDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.InstanceCreationTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.save_as(staging / f"{k + 1:04d}.dcm", enforce_file_format=True)
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DerivedSeries(out_dir, uids[0], source_uid, len(template))


def derived_slice(src: Dataset, plane: np.ndarray, series_uid: str, sop_uid: str, k: int, n: int,
                  refs: Sequence[Dataset]) -> Dataset:
    """The source slice's header made into slice `k` of the derived series, holding `plane` (rows × columns)."""
    ds = copy.deepcopy(src)
    ds.remove_private_tags()
    for keyword in DROPPED:
        if keyword in ds:
            delattr(ds, keyword)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = meta.MediaStorageSOPClassUID, sop_uid, series_uid
    ds.ImageType = ["DERIVED", "PRIMARY"]  # the PET Image IOD allows PRIMARY only as value 2
    ds.SeriesNumber = int(src.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET
    ds.SeriesDescription = f"{src.get('SeriesDescription', 'PET')} denoised"[-64:]
    ds.SeriesType = ["STATIC", *list(src.get("SeriesType", ["DYNAMIC", "IMAGE"]))[1:2]]
    ds.NumberOfSlices, ds.ImageIndex, ds.InstanceNumber = n, k + 1, k + 1
    ds.SourceImageSequence = [_reference(r) for r in refs]
    by_series: dict[str, list[Dataset]] = {}  # one item per source series (one series per frame: several)
    for r in refs:
        by_series.setdefault(str(r.SeriesInstanceUID), []).append(r)
    items = []
    for uid, members in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = uid
        item.ReferencedInstanceSequence = [_reference(r) for r in members]
        items.append(item)
    ds.ReferencedSeriesSequence = items
    stored, slope = quantise(plane)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, "0"
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _reference(src: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
    return item
