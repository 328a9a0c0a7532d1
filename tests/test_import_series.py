"""A DICOM series is its SeriesInstanceUID, not a folder (#28 item 0).

Exports as media writers and PACS downloads make them, written with pydicom (tests/pet_dicom.py)
and read by the real dcm2niix: a series spread over folders, several series in one folder, a
dynamic scan written one series per frame over several folders, a DICOMDIR, a CT beside the PET.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pet_dicom import known_frames, write_pet_dicom
from pydicom.fileset import FileSet

from petite_fl.data.importer import MAPPING_FILE, import_site
from petite_fl.data.readers import find_series, read_series

FRAME_S, FIRST_S = 300.0, 1800.0


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return known_frames((12, 10, 8))   # (12, 10, 8, 6): 48 files a series


def spread(files: list[Path], folders: list[Path], prefix: str = "") -> None:
    """Deal the files round-robin into the folders (each gets every n-th slice of every frame)."""
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(files):
        path.rename(folders[k % len(folders)] / f"{prefix}{path.name}")


def assert_input_is_frame_one(site: Path, sid: str, known: np.ndarray) -> None:
    """The imported input holds the known first frame (the same voxel values up to int16 quantisation)."""
    img = nib.load(site / f"{sid}_input.nii.gz")
    got = np.sort(img.get_fdata().ravel())
    np.testing.assert_allclose(got, np.sort(known[..., 0].ravel()), atol=float(img.dataobj.slope) * 1.01 + 0.06)


def test_a_series_split_over_three_folders_imports_as_one_subject(tmp_path: Path, frames: np.ndarray) -> None:
    files = write_pet_dicom(tmp_path / "written", frames, frame_s=FRAME_S, first_start_s=FIRST_S)
    src = tmp_path / "export"
    spread(files, [src / "DIR000", src / "DIR001" / "A", src / "DIR002"])
    [found] = find_series(src)
    assert len(found.files) == frames.shape[2] * 6
    assert "+2 folders" in str(found) and "Doe" not in str(found)
    report = import_site(src, tmp_path / "site")
    assert [r["id"] for r in report.imported] == ["sub-001"], report.skipped
    assert report.skipped == []
    assert_input_is_frame_one(tmp_path / "site", "sub-001", frames)
    mapping = json.loads((tmp_path / "site" / MAPPING_FILE).read_text())["sub-001"]
    assert len(mapping["folders"]) == 3


def test_a_folder_holding_two_subjects_series_imports_as_two(tmp_path: Path, frames: np.ndarray) -> None:
    src = tmp_path / "download"
    second = known_frames((12, 10, 8), seed=1)
    spread(write_pet_dicom(tmp_path / "a", frames, patient="Doe^Jane"), [src], prefix="a_")
    spread(write_pet_dicom(tmp_path / "b", second, patient="Roe^Rick"), [src], prefix="b_")
    found = find_series(src)
    assert len(found) == 2 and all(s.folder == src for s in found) and str(found[0]) != str(found[1])
    report = import_site(src, tmp_path / "site")
    assert [r["id"] for r in report.imported] == ["sub-001", "sub-002"] and report.skipped == []
    sources = {sid: read_series(s) for sid, s in zip(("sub-001", "sub-002"), found, strict=True)}
    for sid, series in sources.items():
        known = frames if series.identity["PatientName"] == "Doe^Jane" else second
        assert_input_is_frame_one(tmp_path / "site", sid, known)
        assert len(series.files) == 48 and series.files == sorted(series.files)


def test_series_per_frame_over_several_folders_is_one_dynamic_series(tmp_path: Path, frames: np.ndarray) -> None:
    """Six series (one per frame), each in its own folder, as some archives export a dynamic scan."""
    files = write_pet_dicom(tmp_path / "written", frames, layout="series-per-frame")
    src = tmp_path / "export"
    for path in files:
        frame = path.name[:3]                                # f00 … f05
        (src / f"SE{frame}").mkdir(parents=True, exist_ok=True)
        path.rename(src / f"SE{frame}" / path.name)
    [found] = find_series(src)
    assert len(found.uids) == 6 and len(found.folders) == 6
    series = read_series(found)
    assert series.problems == [] and series.n_frames == 6
    assert series.frame_start == [FIRST_S + t * FRAME_S for t in range(6)]
    assert len(series.files) == 48 and sorted(series.identity["SeriesInstanceUID"]) == sorted(found.uids)
    report = import_site(src, tmp_path / "site")
    assert [r["id"] for r in report.imported] == ["sub-001"] and report.skipped == []


def test_two_reconstructions_written_series_per_frame_in_one_folder_stay_two_series(
        tmp_path: Path, frames: np.ndarray) -> None:
    """Frames of one scan share study, frame of reference and description; a second reconstruction does not merge."""
    ac = write_pet_dicom(tmp_path / "ac", frames, layout="series-per-frame")
    first = pydicom.dcmread(ac[0])
    same = {"StudyInstanceUID": first.StudyInstanceUID, "FrameOfReferenceUID": first.FrameOfReferenceUID}
    nac = write_pet_dicom(tmp_path / "nac", frames * 0.5, layout="series-per-frame",
                          tags={**same, "SeriesDescription": "Dynamic NAC"})
    src = tmp_path / "study"
    spread(ac, [src], prefix="ac_")
    spread(nac, [src], prefix="nac_")
    found = find_series(src)
    assert sorted(len(s.uids) for s in found) == [6, 6]
    report = import_site(src, tmp_path / "site")
    assert len(report.imported) == 2 and report.skipped == []


def test_a_dicomdir_export_of_two_subjects_and_a_ct_imports_the_pet_and_refuses_the_ct_in_one_line(
        tmp_path: Path, frames: np.ndarray) -> None:
    file_set = FileSet()
    for k, modality in enumerate(("PT", "PT", "CT")):
        for path in write_pet_dicom(tmp_path / f"s{k}", known_frames((12, 10, 8), seed=k), modality=modality,
                                    patient=f"Doe^{k}"):
            file_set.add(pydicom.dcmread(path))
    file_set.write(tmp_path / "cd")                          # DICOMDIR + PT000000/ST000000/SE000000/IM…
    shutil.rmtree(tmp_path / "s0")
    found = find_series(tmp_path / "cd" / "DICOMDIR")
    assert len(found) == 3 and sorted(s.modality for s in found) == ["CT", "PT", "PT"]
    report = import_site(tmp_path / "cd", tmp_path / "site")
    assert len(report.imported) == 2
    [line] = report.skipped
    assert line.endswith("not PET (Modality CT)") and "\n" not in line and "Doe" not in line


def test_a_folder_mixing_ct_and_pet_series_refuses_the_ct_in_one_line_and_imports_the_pet(
        tmp_path: Path, frames: np.ndarray) -> None:
    src = tmp_path / "mixed"
    spread(write_pet_dicom(tmp_path / "pet", frames), [src, src / "more"], prefix="pt_")
    spread(write_pet_dicom(tmp_path / "ct", frames[..., :1], modality="CT"), [src], prefix="ct_")
    report = import_site(src, tmp_path / "site")
    assert [r["id"] for r in report.imported] == ["sub-001"]
    [line] = report.skipped
    assert line.startswith(str(src)) and line.endswith("not PET (Modality CT)") and "series " in line
    assert_input_is_frame_one(tmp_path / "site", "sub-001", frames)


def test_a_static_series_and_a_two_bed_series_keep_their_one_line_refusals(tmp_path: Path, frames: np.ndarray) -> None:
    """Refusals name the series by a hash of its UID; static frames at one start never merge into a dynamic one."""
    src = tmp_path / "src"
    spread(write_pet_dicom(tmp_path / "static", frames[..., :1]), [src / "a", src / "b"], prefix="st_")
    spread(write_pet_dicom(tmp_path / "beds", frames[..., :2], layout="series-per-frame", beds=2), [src / "a"],
           prefix="bed_")
    report = import_site(src, tmp_path / "site")
    assert report.imported == [] and len(report.skipped) == 2, report.skipped
    [static] = [line for line in report.skipped if "static series" in line]
    [beds] = [line for line in report.skipped if "several bed positions" in line]
    assert static.startswith(str(src / "a")) and "+1 folder" in static
    label, reason = beds.split("): ", 1)
    assert label.endswith("of 2 frame series") and reason.startswith("several bed positions") and ";" not in reason
    assert all("\n" not in line and "Doe" not in line for line in report.skipped)


def test_a_link_out_beside_a_series_file_skips_that_series_only(tmp_path: Path, frames: np.ndarray) -> None:
    """No link out of the tree is read; a series whose folder holds one may be missing a file: skipped, one line."""
    src, outside = tmp_path / "src", tmp_path / "elsewhere"
    write_pet_dicom(src / "s1", frames)
    write_pet_dicom(src / "s2", known_frames((12, 10, 8), seed=2))
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    (src / "s2" / "zz.dcm").symlink_to(outside / "passwd")
    report = import_site(src, tmp_path / "site")
    assert [r["source"].split(" (")[0] for r in report.imported] == [str(src / "s1")]
    [line] = report.skipped
    assert line.startswith("s2/zz.dcm: a symbolic link to outside") and "series s2 (series " in line


def test_one_series_uid_reused_for_two_patients_is_refused_not_merged(tmp_path: Path, frames: np.ndarray) -> None:
    """A faulty exporter gives two patients' scans the same SeriesInstanceUID: grouping by UID must not make
    them one subject; the series is refused in one line (nothing identifying in it)."""
    src = tmp_path / "download"
    files = write_pet_dicom(tmp_path / "a", frames, patient="Doe^Jane")
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    other = write_pet_dicom(tmp_path / "b", frames * 1.5, patient="Roe^Rick",
                            tags={"SeriesInstanceUID": uid, "PatientID": "PID-7"})
    spread(files, [src], prefix="a_")
    spread(other, [src], prefix="b_")
    report = import_site(src, tmp_path / "site")
    assert report.imported == [] and len(report.skipped) == 1
    line = report.skipped[0]
    assert "different studies or patients under one SeriesInstanceUID" in line and "\n" not in line
    assert "Doe" not in line and "Roe" not in line and uid not in line
