"""`petite infer --site` on DICOM: a dynamic PET series in, a derived PET series (and/or NIfTI) out (#28).

A real tiny federated run (scanner5, in process) gives the site its adapter; the source series
are written by tests/pet_dicom.py. What comes out is checked with tools nobody here wrote:
dcm2niix converts it back onto the source's grid with the prediction's values, pydicom reads
it, and dicom3tools' dciodvfy finds no error for the PET Image IOD.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pet_dicom import Geometry, known_frames, oblique, write_pet_dicom
from pydicom.fileset import FileSet
from test_federation_run import federate, run_config
from test_infer_site import error_line

from petite_fl import __version__
from petite_fl.cli.main import main
from petite_fl.data.readers.dicom import dcm2niix_binary
from petite_fl.errors import DataError

SITE = "scanner5"
GEOMETRY = oblique(20.0)
DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def site_root(tmp_path_factory, federation_cache) -> Path:
    """A site root holding scanner5's adapter of one local round."""
    root = tmp_path_factory.mktemp("dicom-sites")
    rc = run_config(federation_cache, strategy="local", **{"federation.rounds": 1, "federation.sites": f"[{SITE}]",
                                                           "federation.run_name": "dicom-local",
                                                           "overrides": f"federation.val.patches=4 "
                                                                        f"federation.site_root={root}"})
    federate(rc, [{"partition-id": 0, "num-partitions": 1}])
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A 6-frame dynamic PET series, oblique, slices stored top to bottom."""
    folder = tmp_path_factory.mktemp("dicom-in") / "good"
    write_pet_dicom(folder, known_frames(), geometry=GEOMETRY, reverse_slices=True)
    return folder


def infer(*argv) -> int:
    return main(["infer", *map(str, argv)])


def site_args(federation_cache: Path, site_root: Path) -> list[str]:
    return ["--site", SITE, "--site-root", str(site_root), "--device", "cpu", f"paths.cache={federation_cache}"]


@pytest.fixture(scope="module")
def denoised(federation_cache, site_root, source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dicom-out")
    assert infer(source, "--out", out, "--out-format", "both", *site_args(federation_cache, site_root)) == 0
    return out


def only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    out.mkdir(parents=True)
    done = subprocess.run([dcm2niix_binary(), "-b", "n", "-z", "n", "-o", str(out), str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return nib.load(only(out, "*.nii"))


def test_dcm2niix_puts_the_derived_series_on_the_sources_grid_within_int16_quantisation(source, denoised, tmp_path):
    derived_dir, prediction = only(denoised, "series-*/"), nib.load(only(denoised, "series-*.nii.gz"))
    back, original = dcm2niix(derived_dir, tmp_path / "back"), dcm2niix(source, tmp_path / "source")
    assert back.shape == original.shape[:3] == (24, 20, 16)
    assert np.abs(back.affine - original.affine).max() <= 1e-3  # dcm2niix's own affine of the source
    values = nib.as_closest_canonical(back).get_fdata()
    pred = nib.as_closest_canonical(prediction).get_fdata()  # the NIfTI the same run wrote (float32)
    assert nib.aff2axcodes(nib.as_closest_canonical(back).affine) == ("R", "A", "S")
    # per-slice bound: each derived file's slope / 2 at its own slice (z in RAS = z in LPS: rotated about z)
    canonical = nib.as_closest_canonical(back).affine
    slopes = {round(float(ds.ImagePositionPatient[2]), 3): float(ds.RescaleSlope)
              for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in derived_dir.glob("*.dcm"))}
    z_of = [round(float((canonical @ [0, 0, k, 1])[2]), 3) for k in range(values.shape[2])]
    bound = np.array([slopes[z] / 2 for z in z_of])[None, None, :] + 1e-5 * np.abs(pred).max()
    error = np.abs(values - pred)
    print(f"dcm2niix round trip: max |error| {error.max():.4g} Bq/mL, int16 bound (largest slope/2) "
          f"{max(slopes.values()) / 2:.4g}, peak {np.abs(pred).max():.4g}; affine difference "
          f"{np.abs(back.affine - original.affine).max():.2g} mm")
    assert (error <= bound).all()
    assert len(set(slopes.values())) > 1  # a slope per slice, each keeping its own range


def test_the_derived_series_is_the_sources_study_and_names_its_makers_by_hash(source, denoised):
    derived = [pydicom.dcmread(p) for p in sorted(only(denoised, "series-*/").glob("*.dcm"))]
    sources = {tuple(round(float(v), 3) for v in ds.ImagePositionPatient): ds
               for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in source.glob("f00_*.dcm"))}
    sidecar = json.loads(only(denoised, "series-*.json").read_text())
    first = next(iter(sources.values()))
    assert len(derived) == 16 and len({ds.SOPInstanceUID for ds in derived}) == 16
    assert {hashlib.sha256(ds.SeriesInstanceUID.encode()).hexdigest() for ds in derived} == \
        {sidecar["dicom_series"]["series_uid_sha256"]}
    assert derived[0].SeriesInstanceUID not in json.dumps(sidecar)
    assert derived[0].SeriesInstanceUID != first.SeriesInstanceUID
    for ds in derived:
        src = sources[tuple(round(float(v), 3) for v in ds.ImagePositionPatient)]  # the same slice position
        for key in ("StudyInstanceUID", "PatientName", "PatientID", "PatientBirthDate", "FrameOfReferenceUID",
                    "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Units", "Modality", "StudyID"):
            assert ds[key].value == src[key].value, key
        assert list(ds.ImageType)[:1] == ["DERIVED"] and ds.SOPClassUID == src.SOPClassUID
        assert sidecar["adapter"]["sha256"] in ds.DerivationDescription
        assert sidecar["backbone"]["sha256"] in ds.DerivationDescription and __version__ in ds.DerivationDescription
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
        assert ds.pixel_array.dtype == np.int16 and float(ds.RescaleIntercept) == 0
    uid = first.SeriesInstanceUID
    text = only(denoised, "series-*.json").read_text()
    assert sidecar["input"]["series_uid_sha256"] == hashlib.sha256(uid.encode()).hexdigest()
    assert sidecar["input"]["frames"] == [1] and sidecar["Units"] == "Bq/mL"
    for secret in ("Doe", "Jane", "PID-42", "19500101", uid, str(source)):
        assert secret not in text and secret not in only(denoised, "series-*/").name


@pytest.mark.skipif(DCIODVFY is None and not os.environ.get("CI"), reason="dicom3tools (dciodvfy) is not installed")
def test_dciodvfy_finds_no_error_in_the_source_or_the_derived_series(source, denoised):
    verdicts: dict[str, set[str]] = {}
    for name, files in (("source", sorted(source.glob("f00_*.dcm"))),
                        ("derived", sorted(only(denoised, "series-*/").glob("*.dcm")))):
        lines = set()
        for path in files:
            done = subprocess.run([DCIODVFY or "dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
            lines |= {line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()}
        verdicts[name] = lines
        print(f"dciodvfy on the {name} series ({len(files)} files): {sorted(lines)}")
        assert "PETImage" in lines  # the IOD it checked against
        assert lines == {"PETImage"}, f"{name}: dciodvfy reports {sorted(lines - {'PETImage'})}"  # no error, no warning


def test_dicom_input_is_the_importers_first_frames(federation_cache, site_root, source, denoised, tmp_path):
    """The DICOM path denoises what `petite-data import` calls the input: here frame 1 (5 min of 5-min frames)."""
    frame = known_frames()[..., 0]
    affine = np.eye(4)
    affine[:3, :3] = np.stack([GEOMETRY.ras_of(np.eye(3)[i]) - GEOMETRY.ras_of(np.zeros(3)) for i in range(3)], 1)
    affine[:3, 3] = GEOMETRY.ras_of(np.zeros(3))
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(frame, affine), tmp_path / "in" / "frame1.nii.gz")
    assert infer(tmp_path / "in", "--out", tmp_path / "out", *site_args(federation_cache, site_root)) == 0
    direct = nib.as_closest_canonical(nib.load(tmp_path / "out" / "frame1.nii.gz")).get_fdata()
    via_dicom = nib.as_closest_canonical(nib.load(only(denoised, "series-*.nii.gz"))).get_fdata()
    difference = np.abs(direct - via_dicom).max()
    print(f"NIfTI of frame 1 vs DICOM input: max |difference| {difference:.3g} of peak {np.abs(direct).max():.4g}")
    assert difference <= 1e-3 * np.abs(direct).max()  # the source's own uint16 quantisation, through the model
    longer = tmp_path / "ten"
    assert infer(source, "--out", longer, "--input-minutes", "10", *site_args(federation_cache, site_root)) == 0
    assert json.loads(only(longer, "series-*.json").read_text())["input"]["frames"] == [1, 2]


def test_a_rerun_gives_the_same_uids_and_a_dicomdir_is_the_same_series(federation_cache, site_root, source,
                                                                        denoised, tmp_path):
    before = {p.name: pydicom.dcmread(p).SOPInstanceUID for p in only(denoised, "series-*/").glob("*.dcm")}
    media = tmp_path / "media"
    fileset = FileSet()
    for path in sorted(source.glob("*.dcm")):
        fileset.add(pydicom.dcmread(path))
    fileset.write(media)
    out = tmp_path / "out"
    for _ in range(2):  # a rerun into the same folder replaces the series in one step
        assert infer(media / "DICOMDIR", "--out", out, *site_args(federation_cache, site_root)) == 0
    folder = only(out, "series-*/")
    assert folder.name == only(denoised, "series-*/").name and not (out / f"{folder.name}.nii.gz").exists()
    assert {p.name: pydicom.dcmread(p).SOPInstanceUID for p in folder.glob("*.dcm")} == before
    assert sorted(p.name for p in out.iterdir()) == [folder.name, f"{folder.name}.json"]  # nothing half-written


def test_a_batch_skips_what_it_cannot_denoise_one_line_each_and_goes_on(federation_cache, site_root, tmp_path,
                                                                        capsys):
    batch = tmp_path / "batch"
    write_pet_dicom(batch / "a-ct", known_frames(seed=1), modality="CT")
    write_pet_dicom(batch / "b-static", known_frames(n_frames=1, seed=2))
    write_pet_dicom(batch / "c-beds", known_frames(seed=3), beds=2)
    write_pet_dicom(batch / "d-good", known_frames(seed=4), geometry=Geometry())
    out = tmp_path / "out"
    assert infer(batch, "--out", out, *site_args(federation_cache, site_root)) == 0
    printed = capsys.readouterr().out
    skipped = [line.strip() for line in printed.splitlines() if line.strip().startswith("skipped:")]
    print(printed)
    assert "1 denoised, 3 skipped" in printed and len(skipped) == 3
    for folder, says in (("a-ct", "not PET"), ("b-static", "a static series"), ("c-beds", "several bed positions")):
        assert any(str(batch / folder) in line and says in line for line in skipped), (folder, skipped)
    assert not [line for line in skipped if "c-beds" in line and "static" in line]  # beds are not a static series
    assert len(list(out.glob("series-*/"))) == 1
    static = tmp_path / "static-out"
    assert infer(batch / "b-static", "--out", static, *site_args(federation_cache, site_root)) == 1  # nothing done
    assert "0 denoised, 1 skipped" in capsys.readouterr().out and not list(static.glob("series-*"))


def test_bad_inputs_and_outputs_are_one_line(federation_cache, site_root, source, tmp_path, capsys):
    args = site_args(federation_cache, site_root)
    assert infer(source, "--out", source / "denoised", *args) == 2
    assert f"--out {source / 'denoised'} is inside input {source}" in error_line(capsys)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a scan")
    assert infer(notes, "--out", tmp_path / "out", *args) == 2
    assert f"{notes}: neither a NIfTI file" in error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert infer(tmp_path / "empty", "--out", tmp_path / "out", *args) == 2
    assert "a folder without NIfTI (*.nii, *.nii.gz) or DICOM files" in error_line(capsys)
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(known_frames()[..., 0], np.eye(4)), scan)
    assert infer(scan, "--out", tmp_path / "out", "--out-format", "dicom", *args) == 2
    assert "is NIfTI; a DICOM series is derived only from a DICOM source" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_prediction_off_the_series_grid_is_refused_not_written(source, tmp_path):
    from petite_fl.adapters.dicom_in import dicom_candidates, read_input
    from petite_fl.adapters.dicom_out import write_derived_series

    src = read_input(dicom_candidates(source)[0])
    shifted = src.series.affine.copy()
    shifted[:3, 3] += [0.0, 0.0, 1.0]  # a millimetre off the headers' positions
    with pytest.raises(DataError, match="does not match the series' own geometry"):
        write_derived_series(src.volume, shifted, src.headers, tmp_path / "series", adapter_sha256="a" * 64,
                             backbone_sha256="b" * 64, frames=src.frames)
    assert list(tmp_path.iterdir()) == []  # no folder, no staging left behind


@pytest.mark.parametrize("protocol", ["dicomweb", pytest.param("dimse", marks=pytest.mark.slow)])
def test_the_clinic_loop_takes_the_scan_from_orthanc_and_stores_the_denoised_series_in_its_study(
        orthanc, federation_cache, site_root, source, denoised, monkeypatch, capsys, protocol):
    """`petite infer --site X --from-pacs URL --study UID`: a real Orthanc holds the short scan; afterwards
    it holds the derived series in the same study, instance for instance the series `petite infer` writes
    from the same files (same UIDs, same stored values); a rerun passes that series over and stores
    nothing new."""
    from orthanc import PASSWORD, USER

    monkeypatch.setenv("PETITE_PACS_USERNAME", USER)
    monkeypatch.setenv("PETITE_PACS_PASSWORD", PASSWORD)
    orthanc.clear()
    files = sorted(source.glob("*.dcm"))
    orthanc.upload(files)
    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, series = str(head.StudyInstanceUID), str(head.SeriesInstanceUID)
    before = orthanc.series_of_study(study)
    url = orthanc.dicomweb if protocol == "dicomweb" else orthanc.dimse
    argv = ["--from-pacs", url, "--study", study, *site_args(federation_cache, site_root)]
    records = site_root / SITE / "clinic"
    kept = set(records.glob("*.json")) if records.is_dir() else set()
    capsys.readouterr()
    assert infer(*argv) == 0, capsys.readouterr()
    after = orthanc.series_of_study(study)
    local = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, only(denoised, "series-*/").glob("*.dcm"))}
    derived_uid = next(iter(local.values())).SeriesInstanceUID
    print(f"Orthanc, study {study[-12:]}: series before {[s[-12:] for s in before]}, after {[s[-12:] for s in after]}")
    assert before == [series] and after == sorted([series, derived_uid])
    held = orthanc.series_instances(derived_uid)
    assert len(held) == len(local) == 16
    for row in held:
        stored = pydicom.dcmread(io.BytesIO(orthanc.rest("get", f"/instances/{row['ID']}/file").content))
        mine = local[str(stored.SOPInstanceUID)]
        assert stored.StudyInstanceUID == study and stored.RescaleSlope == mine.RescaleSlope
        assert np.array_equal(stored.pixel_array, mine.pixel_array)
    assert USER not in capsys.readouterr().out
    (record,) = set(records.glob("*.json")) - kept   # the site's own record of what it stored, by hashes
    text = record.read_text()
    stored = json.loads(text)["stored"]
    assert stored["instances"] == 16 and stored["confirmed"] and stored["pacs"] == url
    assert stored["series_uid_sha256"] == hashlib.sha256(derived_uid.encode()).hexdigest()
    for secret in ("Doe", "Jane", "PID-42", "19500101", study, series, derived_uid, PASSWORD):
        assert secret not in text
    assert records.stat().st_mode & 0o077 == 0
    assert infer(*argv) == 0   # the study's derived series is passed over, the scan denoised again, same UIDs
    assert "passed over" in capsys.readouterr().out and orthanc.series_of_study(study) == after


def test_the_clinic_loop_groups_a_scan_stored_as_one_series_per_frame(orthanc, federation_cache, site_root,
                                                                       tmp_path, monkeypatch, capsys):
    """A dynamic scan a PACS holds as six one-frame series is one short scan (as a folder import groups it),
    not six static series refused; the PACS loop's temporary copy is gone afterwards."""
    import tempfile

    from orthanc import PASSWORD, USER

    monkeypatch.setenv("PETITE_PACS_USERNAME", USER)
    monkeypatch.setenv("PETITE_PACS_PASSWORD", PASSWORD)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    orthanc.clear()
    files = write_pet_dicom(tmp_path / "frames", known_frames(), geometry=GEOMETRY, layout="series-per-frame")
    orthanc.upload(files)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    before = orthanc.series_of_study(study)
    assert len(before) == 6
    capsys.readouterr()
    assert infer("--from-pacs", orthanc.dicomweb, "--study", study, *site_args(federation_cache, site_root)) == 0, \
        capsys.readouterr()
    after = orthanc.series_of_study(study)
    (derived,) = set(after) - set(before)
    assert len(orthanc.series_instances(derived)) == 16
    assert list((tmp_path / "tmp").iterdir()) == []
