"""Write a small dynamic PET DICOM series with pydicom from a known 4D volume (#16 tests).

Real files on the reader's real path (dcm2niix, then nibabel): each slice is one
single-frame PET Image Storage file with its own RescaleSlope, the geometry in
ImagePositionPatient / ImageOrientationPatient (LPS), and the frame timing in
FrameReferenceTime / ActualFrameDuration (ms), as scanners write them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

LAYOUTS = ("one-series", "series-per-frame")


@dataclass(frozen=True)
class Geometry:
    """Where the volume sits: row/column direction cosines (LPS), first voxel (mm), spacing."""

    row_cos: tuple[float, float, float] = (1.0, 0.0, 0.0)
    col_cos: tuple[float, float, float] = (0.0, 1.0, 0.0)
    origin: tuple[float, float, float] = (-23.0, -19.0, -30.0)
    spacing: tuple[float, float, float] = (2.0, 2.5, 3.0)   # along column index i, row index j, slice k

    def normal(self) -> np.ndarray:
        return np.cross(self.row_cos, self.col_cos)

    def lps_of(self, ijk: np.ndarray) -> np.ndarray:
        """World LPS (mm) of voxel indices (…, 3): i along a row, j down the columns, k slice."""
        axes = np.stack([self.row_cos, self.col_cos, self.normal()]) * np.array(self.spacing)[:, None]
        return np.asarray(self.origin) + ijk @ axes

    def ras_of(self, ijk: np.ndarray) -> np.ndarray:
        return self.lps_of(ijk) * np.array([-1.0, -1.0, 1.0])


def oblique(degrees: float = 20.0) -> Geometry:
    """Rows and columns rotated about the z axis: an oblique slice orientation."""
    a = np.deg2rad(degrees)
    return Geometry(row_cos=(float(np.cos(a)), float(np.sin(a)), 0.0),
                    col_cos=(float(-np.sin(a)), float(np.cos(a)), 0.0))


def known_frames(shape: tuple[int, int, int] = (24, 20, 16), n_frames: int = 6, seed: int = 0) -> np.ndarray:
    """A positive blob whose amplitude changes frame to frame, float32 (i, j, k, t) in Bq/mL."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    blob = 5000.0 * np.exp(-3.0 * (grid**2).sum(0))
    frames = [blob * (1.0 + 0.1 * t) + 50.0 * rng.random(shape) for t in range(n_frames)]
    return np.stack(frames, axis=-1).astype(np.float32)


def write_pet_dicom(folder: Path, frames: np.ndarray, *, layout: str = "one-series",
                    geometry: Geometry = Geometry(), frame_s: float = 300.0, first_start_s: float = 1800.0,
                    reverse_slices: bool = False, series_time_per_frame: bool = False,
                    modality: str = "PT", units: str = "BQML",
                    patient: str = "Doe^Jane", tags: dict | None = None, drop_slice: int | None = None,
                    jitter: tuple[int, float] | None = None, beds: int = 1,
                    drop_frame: int | None = None) -> list[Path]:
    """Write `frames` (i, j, k, t) as PET DICOM files under `folder`; return the files.

    Bad layouts: `drop_slice` k is left out of every frame (of frame `drop_frame` alone if given);
    `jitter` (k, mm) moves slice k along the normal;
    `beds` > 1 puts frame t at bed t % beds, each bed 80 % of the axial field further.

    `tags` are set on every file after the rest (e.g. GantryDetectorTilt for a bad case);
    `series_time_per_frame`: each frame's SeriesTime is its own start, as some scanners write.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: one of {LAYOUTS}")
    folder.mkdir(parents=True, exist_ok=True)
    nz, nt = frames.shape[2:]
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for t in range(nt):
        if layout == "series-per-frame":
            series_uid = generate_uid()
        slices = range(nz - 1, -1, -1) if reverse_slices else range(nz)
        for n, k in enumerate(slices):
            if k == drop_slice and drop_frame in (None, t):
                continue
            shift = (t % beds) * 0.8 * nz * geometry.spacing[2] + (jitter[1] if jitter and jitter[0] == k else 0.0)
            ds = _slice(frames[:, :, k, t], k, t, geometry, study_uid, series_uid, nz, nt, layout)
            ds.ImagePositionPatient = [_ds(v) for v in geometry.lps_of(np.array([0.0, 0.0, k + shift
                                                                                   / geometry.spacing[2]]))]
            ds.Modality, ds.Units, ds.PatientName = modality, units, patient
            start = first_start_s + t * frame_s
            ds.AcquisitionTime = _clock(start)   # the frame's start; SeriesTime is the reference
            if series_time_per_frame:
                ds.SeriesTime = ds.AcquisitionTime
            ds.FrameReferenceTime = f"{(start + frame_s / 2) * 1000.0:.0f}"
            ds.ActualFrameDuration = int(frame_s * 1000)
            ds.InstanceNumber = t * nz + n + 1
            for key, value in (tags or {}).items():
                setattr(ds, key, value)
            path = folder / f"f{t:02d}_s{n:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def _slice(plane: np.ndarray, k: int, t: int, geo: Geometry, study_uid: str, series_uid: str,
           nz: int, nt: int, layout: str) -> Dataset:
    """One PET slice: plane (i, j) stored as rows j × columns i, uint16 with its own slope."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientBirthDate, ds.StudyDate, ds.SeriesDate = "PID-42", "19500101", "20240102", "20240102"
    ds.StudyTime = ds.SeriesTime = _clock(0.0)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.StudyID = study_uid, series_uid, "1"
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid])
    ds.SeriesNumber = 1 + (t if layout == "series-per-frame" else 0)
    ds.SeriesDescription = "Co-registered Dynamic"
    ds.Manufacturer, ds.ManufacturerModelName = "SIEMENS", "HR+"
    ds.ReconstructionMethod = "OSEM 4i16s"
    ds.DecayCorrection, ds.CorrectedImage = "START", ["DECY", "ATTN", "SCAT"]
    ds.SeriesType = ["DYNAMIC", "IMAGE"]
    _plausible_pet(ds, start_s=1800.0 + 0.0 * t)
    ds.NumberOfSlices = nz
    ds.NumberOfTimeSlices = nt if layout == "one-series" else 1
    ds.ImageIndex = t * nz + k + 1
    ds.ImageOrientationPatient = [_ds(v) for v in (*geo.row_cos, *geo.col_cos)]
    ds.ImagePositionPatient = [_ds(v) for v in geo.lps_of(np.array([0.0, 0.0, k]))]
    ds.PixelSpacing = [geo.spacing[1], geo.spacing[0]]   # row spacing (along j), column spacing (along i)
    ds.SliceThickness = geo.spacing[2]
    ds.Rows, ds.Columns = plane.shape[1], plane.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    slope = max(float(plane.max()), 1e-6) / 65535.0
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
    stored = np.round(plane.T / float(f"{slope:.10g}")).clip(0, 65535).astype(np.uint16)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def _plausible_pet(ds: Dataset, start_s: float) -> None:
    """The rest of the PET Image IOD (modules Patient … PET Image) that dciodvfy asks for: a plausible source."""
    ds.PatientSex, ds.ReferringPhysicianName, ds.AccessionNumber = "F", "", ""
    ds.PositionReferenceIndicator, ds.BodyPartExamined = "", "HEAD"  # PatientPosition: not with the code sequence
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.AcquisitionDate = ds.ContentDate = "20240102"
    ds.ContentTime = _clock(0.0)
    ds.CountsSource, ds.CollimatorType = "EMISSION", "NONE"
    ds.RandomsCorrectionMethod, ds.AttenuationCorrectionMethod = "DLYD", "CT"
    ds.DecayFactor = "1.0"
    drug = Dataset()
    drug.Radiopharmaceutical = "Fluorodeoxyglucose"
    drug.RadiopharmaceuticalStartTime = _clock(-start_s)   # injected 30 min before the first frame
    drug.RadionuclideTotalDose = "200000000"
    drug.RadionuclideHalfLife = "6586.2"
    drug.RadionuclidePositronFraction = "0.9673"
    nuclide = Dataset()
    nuclide.CodeValue, nuclide.CodingSchemeDesignator, nuclide.CodeMeaning = "77004003", "SCT", "^18^Fluorine"
    drug.RadionuclideCodeSequence = [nuclide]
    ds.RadiopharmaceuticalInformationSequence = [drug]
    ds.PatientOrientationCodeSequence = []
    ds.PatientGantryRelationshipCodeSequence = []


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (the DS limit dciodvfy checks)."""
    return format_number_as_ds(float(value))


def _clock(seconds_after_nine: float) -> str:
    """DICOM TM of 09:00:00 plus `seconds_after_nine`."""
    s = round(seconds_after_nine) + 9 * 3600
    return f"{s // 3600:02d}{s // 60 % 60:02d}{s % 60:02d}"
