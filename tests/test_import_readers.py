"""The format readers of `petite-data import` (#16): real DICOM through dcm2niix, NIfTI + BIDS-PET, ECAT 7.

Round trips: a known 4D volume written as PET DICOM (tests/pet_dicom.py) or NIfTI comes back
within the stored integers' quantisation, with its timing, and with an affine that puts every
voxel at the world point the source geometry gives it.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pet_dicom import Geometry, known_frames, oblique, write_pet_dicom
from pydicom.fileset import FileSet

from petite_fl.data.dynamic import DynamicSeries
from petite_fl.data.readers import find_series, read_series
from petite_fl.errors import DataError

FRAME_S, FIRST_S = 300.0, 1800.0


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return known_frames()   # (24, 20, 16, 6)


def resampled_at(series: DynamicSeries, geometry: Geometry, shape: tuple[int, int, int]) -> np.ndarray:
    """The series' values at each source voxel, found through world coordinates (index error must be 0)."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3).astype(float)
    ras = geometry.ras_of(ijk)
    voxel = (np.c_[ras, np.ones(len(ras))] @ np.linalg.inv(series.affine).T)[:, :3]
    index = np.rint(voxel).astype(int)
    assert np.abs(voxel - index).max() < 1e-3, "the affine does not map source voxels onto voxels"
    return series.frames[index[:, 0], index[:, 1], index[:, 2]].reshape(*shape, series.n_frames)


@pytest.mark.parametrize(("layout", "geometry", "reverse"), [
    ("one-series", Geometry(), False),
    ("series-per-frame", Geometry(), False),
    ("one-series", Geometry(), True),
    ("one-series", oblique(20.0), False),
], ids=["one-series", "series-per-frame", "reversed-slices", "oblique"])
def test_dicom_round_trip_gives_the_known_frames_timing_and_world_geometry(
        tmp_path: Path, frames: np.ndarray, layout: str, geometry: Geometry, reverse: bool) -> None:
    write_pet_dicom(tmp_path / "dcm", frames, layout=layout, geometry=geometry, reverse_slices=reverse,
                    frame_s=FRAME_S, first_start_s=FIRST_S)
    series = read_series(tmp_path / "dcm")
    assert series.problems == []
    assert series.fmt == "dicom" and series.frames.dtype == np.float32 and series.n_frames == 6
    got = resampled_at(series, geometry, frames.shape[:3])
    # per-slice uint16 slopes: each value within half its own slice's step (+ float32 rounding)
    step = frames.max(axis=(0, 1), keepdims=True) / 65535.0
    assert np.all(np.abs(got - frames) <= 0.5 * step + 8 * np.spacing(frames))
    assert series.frame_start == [FIRST_S + t * FRAME_S for t in range(6)]
    assert series.frame_duration == [FRAME_S] * 6
    assert series.units == "Bq/mL" and series.decay_corrected is True
    assert series.info["Manufacturer"].lower() == "siemens" and series.info["ManufacturersModelName"] == "HR+"
    assert series.info["matrix"] == [int(n) for n in series.frames.shape[:3]]
    assert series.identity["PatientName"] == "Doe^Jane" and series.identity["PatientID"] == "PID-42"
    assert "Doe" not in json.dumps(series.info)   # identity only where it is kept apart


def test_series_per_frame_that_restart_series_time_are_timed_from_the_first_frame(
        tmp_path: Path, frames: np.ndarray) -> None:
    write_pet_dicom(tmp_path / "dcm", frames[..., :3], layout="series-per-frame", series_time_per_frame=True,
                    frame_s=FRAME_S, first_start_s=FIRST_S)
    series = read_series(tmp_path / "dcm")
    assert series.problems == [] and series.frame_start == [0.0, FRAME_S, 2 * FRAME_S]
    np.testing.assert_allclose(series.frames[..., 2].max(), frames[..., 2].max(), rtol=1e-4)
    assert any("AcquisitionTime" in note for note in series.notes)


def test_nifti_with_bids_sidecar_round_trips_into_ras(tmp_path: Path, frames: np.ndarray) -> None:
    lps_like = np.array([[-2.0, 0, 0, 30], [0, -2.5, 0, 20], [0, 0, 3.0, -10], [0, 0, 0, 1]])
    path = tmp_path / "sub-01_pet.nii.gz"
    nib.save(nib.Nifti1Image(frames, lps_like), path)
    (tmp_path / "sub-01_pet.json").write_text(json.dumps({
        "Modality": "PT", "Units": "Bq/mL", "ImageDecayCorrected": True, "Manufacturer": "GE",
        "FrameTimesStart": [0, 300, 600, 900, 1200, 1500], "FrameDuration": [300] * 6}))
    series = read_series(path)
    assert series.problems == [] and series.fmt == "nifti-bids"
    assert np.all(np.diag(series.affine)[:3] > 0)            # RAS+
    ijk = np.array([[3.0, 5.0, 7.0, 1.0]])
    world = ijk @ lps_like.T
    back = np.rint(world @ np.linalg.inv(series.affine).T)[0, :3].astype(int)
    np.testing.assert_allclose(series.frames[tuple(back)], frames[3, 5, 7], rtol=1e-6)
    assert series.frame_start[1] == 300.0 and series.units == "Bq/mL" and series.decay_corrected is True


def test_ecat7_reader_reads_nibabels_sample_file() -> None:
    sample = Path(nib.__file__).parent / "tests" / "data" / "tinypet.v"
    if not sample.is_file():
        pytest.skip("nibabel's sample ECAT file is not installed (nibabel cannot write ECAT)")
    series = read_series(sample)
    assert series.problems == [] and series.fmt == "ecat"
    assert series.frames.shape == (10, 10, 3, 1) and series.frames.dtype == np.float32
    assert series.units == "Bq/mL"                           # 'Bq/cc' in the header
    assert len(series.frame_start) == len(series.frame_duration) == 1
    assert np.all(np.diag(series.affine)[:3] > 0)


def test_a_dicomdir_is_found_as_its_folder_and_read(tmp_path: Path, frames: np.ndarray) -> None:
    small = frames[:8, :6, :4, :3]
    file_set = FileSet()
    for path in write_pet_dicom(tmp_path / "src", small):
        file_set.add(pydicom.dcmread(path))
    file_set.write(tmp_path / "cd")                          # DICOMDIR + PT000000/… as on a CD
    [found] = find_series(tmp_path / "cd")                  # one series: the DICOMDIR's files (#28)
    assert len(found.files) == 12 and all(f.is_relative_to(tmp_path / "cd") for f in found.files)
    series = read_series(tmp_path / "cd" / "DICOMDIR")
    assert series.problems == [] and series.frames.shape == small.shape
    assert series.frame_start == [FIRST_S, FIRST_S + FRAME_S, FIRST_S + 2 * FRAME_S]


def test_find_series_lists_every_format_in_a_mixed_tree(tmp_path: Path, frames: np.ndarray) -> None:
    small = frames[:8, :6, :4, :2]
    write_pet_dicom(tmp_path / "adni" / "S1" / "Co-registered_Dynamic" / "I1", small)
    write_pet_dicom(tmp_path / "cd" / "IMAGES" / "X", small)
    (tmp_path / "cd" / "DICOMDIR").write_bytes(b"")          # unreadable: the files under it are found anyway
    pet = tmp_path / "bids" / "sub-01" / "ses-1" / "pet"
    pet.mkdir(parents=True)
    nib.save(nib.Nifti1Image(small, np.eye(4)), pet / "sub-01_ses-1_pet.nii.gz")
    (pet / "sub-01_ses-1_pet.json").write_text("{}")
    nib.save(nib.Nifti1Image(small, np.eye(4)), tmp_path / "bids" / "no_sidecar.nii.gz")
    (tmp_path / "ecat").mkdir()
    (tmp_path / "ecat" / "scan.v").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a series")
    assert [getattr(c, "folder", c) for c in find_series(tmp_path)] == [   # a DICOM series: its files' folder
        tmp_path / "adni" / "S1" / "Co-registered_Dynamic" / "I1",
        pet / "sub-01_ses-1_pet.nii.gz",
        tmp_path / "cd" / "IMAGES" / "X",
        tmp_path / "ecat" / "scan.v",
    ]
    with pytest.raises(DataError, match="no such file or folder"):
        find_series(tmp_path / "missing")


def test_bad_series_become_one_line_problems_naming_the_series(tmp_path: Path, frames: np.ndarray) -> None:
    small = frames[:8, :6, :4, :2]
    write_pet_dicom(tmp_path / "ct", small, modality="CT")
    write_pet_dicom(tmp_path / "tilt", small, tags={"GantryDetectorTilt": 15.0})
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_bytes(b"not dicom")
    (tmp_path / "broken_pet.nii.gz").write_bytes(b"garbage")
    (tmp_path / "broken_pet.json").write_text("{}")
    (tmp_path / "broken.v").write_bytes(b"garbage")
    expected = {"ct": "not PET (Modality CT)", "tilt": "gantry tilt 15", "junk": "no readable DICOM file",
                "broken_pet.nii.gz": "unreadable image file", "broken.v": "unreadable ECAT 7 file"}
    for name, why in expected.items():
        series = read_series(tmp_path / name)
        assert any(why in line for line in series.problems), (name, series.problems)
        assert all(line.startswith(series.label) and "\n" not in line for line in series.problems)


@pytest.mark.parametrize(("bad", "why"), [
    ({"drop_slice": 2}, "missing slice(s): a 6 mm gap after the slice at"),
    ({"drop_slice": 2, "drop_frame": 1}, "missing slice(s)"),
    ({"jitter": (2, 0.3)}, "uneven slice spacing 2.7–3.3 mm"),
    ({"beds": 2}, "several bed positions"),
    ({"beds": 2, "layout": "series-per-frame"}, "several bed positions"),
], ids=["dropped-slice", "slice-dropped-in-one-frame", "jittered-slice", "two-beds", "two-beds-series-per-frame"])
def test_bad_slice_layouts_become_one_line_problems_naming_the_series(
        tmp_path: Path, frames: np.ndarray, bad: dict, why: str) -> None:
    write_pet_dicom(tmp_path / "dcm", frames[:8, :6, :6, :2], **bad)
    series = read_series(tmp_path / "dcm")
    assert any(why in line for line in series.problems), series.problems
    assert all(line.startswith(series.label) and "\n" not in line for line in series.problems)
    kinds = ("missing slice", "uneven slice", "bed position")
    assert sum(any(k in line.removeprefix(series.label) for k in kinds) for line in series.problems) == 1
