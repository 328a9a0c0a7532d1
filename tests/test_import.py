"""Frames → pair and `petite-data import` (#16): pairing math, each check's line, the import."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from petite_fl.data.check import check_site
from petite_fl.data.dynamic import DynamicSeries
from petite_fl.data.importer import IMPORT_FILE, MAPPING_FILE, import_site
from petite_fl.data.manifest import read_manifest
from petite_fl.data.pairing import check_series, make_pair
from petite_fl.scanners import get_scanner, scanner_from_dict

SHAPE = (20, 22, 18)


def _head(shift: int = 0) -> np.ndarray:
    """A smooth head-like blob with a hot off-centre spot (Bq/mL), shifted along x by `shift` voxels."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    cx, cy, cz = 10 + shift, 11, 9
    head = 8000.0 * (((x - cx) / 7) ** 2 + ((y - cy) / 8) ** 2 + ((z - cz) / 6) ** 2 < 1)
    spot = 20000.0 * np.exp(-(((x - cx - 3) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 4.0))
    return (head + spot + 100.0).astype(np.float32)


def _series(frames: np.ndarray, durations: list[float] | None = None, **kw) -> DynamicSeries:
    n = frames.shape[3]
    durations = durations or [300.0] * n
    starts = list(np.cumsum([1800.0, *durations[:-1]]))
    args = dict(source=Path("/data/ADNI/002_S_0001/dyn"), fmt="nifti-bids", frames=frames,
                affine=np.diag([2.0, 2.0, 2.0, 1.0]), frame_start=[float(s) for s in starts],
                frame_duration=durations, units="Bq/mL", decay_corrected=True,
                identity={"PatientName": "DOE^JANE"})
    args.update(kw)
    return DynamicSeries(**args)


def _known_frames(n: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = _head()
    return np.stack([base * (1 + 0.05 * k) + rng.normal(0, 50, SHAPE).astype(np.float32)
                     for k in range(n)], axis=3).astype(np.float32)


def test_pair_input_is_frame_one_and_target_the_mean_of_six() -> None:
    frames = _known_frames()
    inp, tgt = make_pair(_series(frames))
    assert inp.dtype == tgt.dtype == np.float32
    np.testing.assert_allclose(inp, frames[..., 0], rtol=1e-6)
    np.testing.assert_allclose(tgt, frames.mean(axis=3), rtol=1e-5, atol=1e-2)


def test_pair_target_is_weighted_by_duration_and_unequal_durations_are_noted() -> None:
    frames = _known_frames()
    durations = [300.0, 300.0, 600.0, 300.0, 300.0, 120.0]
    series = _series(frames, durations)
    inp, tgt = make_pair(series)
    w = np.asarray(durations) / sum(durations)
    np.testing.assert_allclose(tgt, (frames * w).sum(axis=3), rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(inp, frames[..., 0], rtol=1e-6)
    problems, notes = check_series(series)
    assert problems == []
    assert any("unequal frame durations" in n and "weighted by duration" in n for n in notes)


def test_input_window_of_short_frames_is_their_weighted_mean_and_a_long_first_frame_is_used_whole() -> None:
    frames = _known_frames()
    # two 2.5-min frames fill the 5-min window: the input is their mean
    series = _series(frames, [150.0, 150.0, 300.0, 300.0, 300.0, 300.0])
    inp, _ = make_pair(series)
    np.testing.assert_allclose(inp, frames[..., :2].mean(axis=3), rtol=1e-5, atol=1e-2)
    # a 10-min first frame cannot be cut: it is the input, and the note says so
    series = _series(frames, [600.0, 300.0, 300.0, 300.0, 300.0, 300.0])
    inp, _ = make_pair(series)
    np.testing.assert_allclose(inp, frames[..., 0], rtol=1e-6)
    _, notes = check_series(series)
    assert any("longer than the 5-min input window" in n for n in notes)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"info": {"Modality": "CT"}}, "modality is 'CT', not PET"),
        ({"units": "counts"}, "units are 'counts', not Bq/mL"),
        ({"units": None}, "units are 'not given', not Bq/mL"),
        ({"decay_corrected": False}, "decay correction is no"),
        ({"decay_corrected": None}, "decay correction is not given"),
        ({"frames": _known_frames(1)}, "a static series (one frame)"),
        ({"frames": _known_frames(4)}, "4 frames, expected 6 (missing frames)"),
        ({"frames": _known_frames(8)}, "8 frames, expected 6 (extra frames)"),
    ],
)
def test_each_refusal_is_one_line_naming_the_series(change: dict, expected: str) -> None:
    frames = change.pop("frames", _known_frames())
    series = _series(frames, **change)
    problems, _ = check_series(series)
    assert len(problems) == 1, problems
    assert expected in problems[0]
    assert problems[0].startswith(series.label)
    assert "\n" not in problems[0]
    assert "DOE" not in problems[0]


def test_good_series_has_no_problem_and_no_motion_note() -> None:
    problems, notes = check_series(_series(_known_frames()))
    assert problems == [] and notes == []


def test_motion_between_frames_is_reported_naming_the_frame() -> None:
    frames = _known_frames()
    frames[..., 3] = _head(shift=4)  # frame 4: the head moved 8 mm
    problems, notes = check_series(_series(frames))
    assert problems == []
    motion = [n for n in notes if "possible motion" in n]
    assert len(motion) == 1 and "frame(s) 4 (relative NCC" in motion[0], notes


def test_motion_check_ignores_noise_and_finds_a_6mm_shift_on_the_noisiest_synthetic_scanner() -> None:
    from petite_fl.data.acquisition import blur_to_resolution, shape_noise
    from petite_fl.data.phantom import render_activity, sample_anatomy

    s5 = get_scanner("scanner5")  # 41 % noise per voxel and frame: NCC of unmoved frames ≈ 0.5
    rng = np.random.default_rng(0)
    clean = blur_to_resolution(render_activity(sample_anatomy(rng, 0.3), s5.matrix, s5.affine), s5)
    lam = s5.acquisition.counts_per_voxel * (np.clip(clean, 0, None) + 0.02)
    frames = np.stack([np.clip(clean + shape_noise(rng.poisson(lam) - lam, s5) / s5.acquisition.counts_per_voxel,
                               0, None) for _ in range(6)], axis=3).astype(np.float32)
    series = _series(frames, affine=s5.affine)
    assert check_series(series) == ([], [])
    frames[..., 4] = np.roll(frames[..., 4], 3, axis=0)  # 3 voxels = 6.2 mm
    _, notes = check_series(series)
    assert len(notes) == 1 and "frame(s) 5 (relative NCC" in notes[0], notes


# --- the import end to end, from 4D NIfTI + BIDS-PET sidecar series written here -------------

PATIENT = "DOE^JANE"
AFFINE = np.array([[-2.0, 0, 0, 20], [0, 2.0, 0, -22], [0, 0, 2.0, -18], [0, 0, 0, 1]])  # LAS on disk


def _write_bids(folder: Path, frames: np.ndarray, units: str = "Bq/mL", patient: str = PATIENT,
                affine: np.ndarray = AFFINE, stem: str = "pet") -> Path:
    folder.mkdir(parents=True)
    n = frames.shape[3]
    nib.save(nib.Nifti1Image(frames, affine), folder / f"{stem}.nii.gz")
    (folder / f"{stem}.json").write_text(json.dumps({
        "Modality": "PT", "Units": units, "ImageDecayCorrected": True, "Manufacturer": "Siemens",
        "ManufacturersModelName": "HR+", "ReconMethodName": "OSEM 2D",
        "FrameTimesStart": [1800 + 300 * k for k in range(n)], "FrameDuration": [300] * n,
        "PatientName": patient, "SeriesInstanceUID": "1.2.840.99999.1." + folder.name}))
    return folder


def _find(src: Path) -> list[Path]:
    """A tiny local reader (the real ones live in petite_fl/data/readers/): one folder per series."""
    return sorted(p.parent for p in src.rglob("pet.nii.gz"))


def _read(folder: Path) -> DynamicSeries:
    img = nib.as_closest_canonical(nib.load(folder / "pet.nii.gz"))
    side = json.loads((folder / "pet.json").read_text())
    return DynamicSeries(
        source=folder, fmt="nifti-bids", frames=np.asarray(img.get_fdata(dtype=np.float32)),
        affine=img.affine, frame_start=side["FrameTimesStart"], frame_duration=side["FrameDuration"],
        units=side["Units"], decay_corrected=side["ImageDecayCorrected"],
        info={k: side[k] for k in ("Modality", "Manufacturer", "ManufacturersModelName", "ReconMethodName")},
        identity={"PatientName": side["PatientName"], "SeriesInstanceUID": side["SeriesInstanceUID"]})


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    src = tmp_path / "download"
    for k in range(3):
        _write_bids(src / f"s{k}" / "dyn", _known_frames(seed=k))
    _write_bids(src / "s3" / "dyn", _known_frames(seed=3), units="counts")
    _write_bids(src / "s4" / "dyn", _known_frames(1, seed=4))
    return src


def _tree_bytes(root: Path) -> list[tuple[Path, bytes]]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            out.append((p, nib.openers.Opener(p).read() if p.suffix == ".gz" else data))
    return out


def test_import_writes_a_checked_pseudonymised_site_and_skips_bad_series_in_one_line(
        source: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    report = import_site(source, out, site="hospitalA", splits={"train": 2, "val": 0, "test": 1},
                         find=_find, read=_read)
    assert report.changed and [r["id"] for r in report.imported] == ["sub-001", "sub-002", "sub-003"]
    assert len(report.skipped) == 2
    assert "s3" in report.skipped[0] and "units are 'counts'" in report.skipped[0]
    assert "s4" in report.skipped[1] and "static series" in report.skipped[1]
    site = check_site(out / "manifest.json")
    assert site.ok, site.problems
    manifest = read_manifest(out / "manifest.json")
    assert manifest.counts() == {"train": 2, "val": 0, "test": 1} and manifest.site == "hospitalA"
    # a real site has no noise-free truth: import never lists one (simulation only)
    rows = json.loads((out / "manifest.json").read_text())["subjects"]
    assert all(set(r) == {"id", "split", "input", "target"} for r in rows)
    assert all(e.truth is None and e.regions is None for e in manifest.subjects)
    # round trip: the imported pair equals frame 1 and the mean of six, on the same world grid
    frames = _read(source / "s0" / "dyn")
    inp = nib.load(out / "sub-001_input.nii.gz")
    assert inp.get_data_dtype() == np.int16
    assert np.allclose(inp.affine, frames.affine)
    slope = float(inp.dataobj.slope)  # int16 quantisation step
    np.testing.assert_allclose(inp.get_fdata(), frames.frames[..., 0], atol=slope)
    np.testing.assert_allclose(nib.load(out / "sub-001_target.nii.gz").get_fdata(),
                               frames.frames.mean(axis=3), atol=slope * 1.01)
    assert inp.header["descrip"].item() == b""
    prov = json.loads((out / "sub-001_provenance.json").read_text())
    assert prov["matrix"] == list(SHAPE) and prov["voxel_mm"] == [2.0, 2.0, 2.0]
    assert prov["Manufacturer"] == "Siemens" and prov["input_frames"] == [1]
    assert len(prov["series_uid_sha256"]) == 64
    # no identity value in any output file, the source paths only in the private mapping
    for path, data in _tree_bytes(out):
        assert PATIENT.encode() not in data and b"1.2.840.99999" not in data, path
        if path != out / MAPPING_FILE:
            assert str(source).encode() not in data, path
    mapping = out / MAPPING_FILE
    assert stat.S_IMODE(mapping.stat().st_mode) == 0o600
    assert stat.S_IMODE(mapping.parent.stat().st_mode) == 0o700
    assert json.loads(mapping.read_text())["sub-001"]["source"] == str(source / "s0" / "dyn")
    # the 20×22×18 grid matches no registered scanner: a draft profile to review
    assert report.scanner is None
    draft = scanner_from_dict(OmegaConf.to_container(OmegaConf.load(out / "scanner-draft.yaml")))
    assert draft.matrix == SHAPE and draft.voxel_mm == (2.0, 2.0, 2.0) and draft.vendor == "Siemens"


def test_second_import_of_the_same_source_does_nothing(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    import_site(source, out, find=_find, read=_read)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = import_site(source, out, find=_find, read=_read)
    assert not again.changed and len(again.imported) == 3
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    _write_bids(source / "s5" / "dyn", _known_frames(seed=5))  # a new series: imported again
    third = import_site(source, out, find=_find, read=_read)
    assert third.changed and len(third.imported) == 4
    assert json.loads((out / IMPORT_FILE).read_text())["fingerprint"] != ""


def test_dry_run_lists_what_would_be_made_and_writes_nothing(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    report = import_site(source, out, dry_run=True, find=_find, read=_read)
    assert report.dry_run and not report.changed
    assert [r["id"] for r in report.imported] == ["sub-001", "sub-002", "sub-003"]
    assert len(report.skipped) == 2
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["download"]


def test_unreadable_series_is_skipped_in_one_line_and_the_import_goes_on(source: Path, tmp_path: Path) -> None:
    bad = source / "s9" / "dyn"
    bad.mkdir(parents=True)
    (bad / "pet.nii.gz").write_bytes(b"not a nifti")
    report = import_site(source, tmp_path / "site", find=_find, read=_read)
    assert len(report.imported) == 3
    assert next(line for line in report.skipped if "s9" in line).startswith(f"{bad}: unreadable (")


def test_interrupted_import_leaves_the_previous_site_whole_and_no_partial_folder(
        source: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    import_site(source, out, find=_find, read=_read)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    _write_bids(source / "s5" / "dyn", _known_frames(seed=5))

    def interrupted(folder: Path) -> DynamicSeries:
        if folder.parent.name == "s2":
            raise KeyboardInterrupt
        return _read(folder)

    with pytest.raises(KeyboardInterrupt):
        import_site(source, out, find=_find, read=interrupted)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert check_site(out / "manifest.json").ok
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name or ".old" in p.name]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--splits", "train=1,holdout=1"], "--splits: 'holdout=1' is not split=weight"),
        ([], "source not found"),
    ],
)
def test_cli_import_refuses_in_one_line(tmp_path: Path, capsys, argv: list[str], expected: str) -> None:
    from petite_fl.cli.data import main

    assert main(["import", str(tmp_path / "nowhere"), "--out", str(tmp_path / "site"), *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "site").exists()


def test_a_series_on_a_registered_scanner_grid_gets_that_profile(tmp_path: Path) -> None:
    s5 = get_scanner("scanner5")
    ramp = np.linspace(100, 9000, s5.matrix[0], dtype=np.float32)[:, None, None, None]  # compresses fast
    frames = np.broadcast_to(ramp, (*s5.matrix, 6)).copy()
    src = tmp_path / "download"
    _write_bids(src / "s0" / "dyn", frames, affine=s5.affine)
    report = import_site(src, tmp_path / "site", find=_find, read=_read)
    assert report.scanner == "scanner5" and not (tmp_path / "site" / "scanner-draft.yaml").exists()
    assert read_manifest(tmp_path / "site" / "manifest.json").scanner == "scanner5"


def test_two_imports_into_one_site_at_once_build_it_once(source: Path, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    out = tmp_path / "site"
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: import_site(source, out, find=_find, read=_read), range(2)))
    assert sorted(r.changed for r in reports) == [False, True]
    assert check_site(out / "manifest.json").ok


@pytest.mark.parametrize(("layout", "reverse", "degrees"), [
    ("one-series", False, 0.0), ("series-per-frame", False, 0.0),
    ("one-series", True, 0.0), ("one-series", False, 20.0)],
    ids=["one-series", "series-per-frame", "reversed-slices", "oblique-20deg"])
def test_petite_data_import_of_dicom_round_trips_input_target_and_world_geometry(tmp_path: Path, capsys, layout,
                                                                                 reverse, degrees):
    """From DICOM as a scanner writes it to a checked site, through the real readers (dcm2niix) and the CLI:
    the input is frame 1 and the target the mean of six, within int16 quantisation, on the same world grid."""
    from pet_dicom import Geometry, known_frames, oblique, write_pet_dicom

    from petite_fl.cli.data import main

    geo = oblique(degrees) if degrees else Geometry()
    frames = {f"subj{i}": known_frames(seed=i) for i in range(3)}
    for name, f in frames.items():
        write_pet_dicom(tmp_path / "src" / name, f, layout=layout, geometry=geo, patient=f"Doe^{name}",
                        reverse_slices=reverse)
    site = tmp_path / "site"
    assert main(["import", str(tmp_path / "src"), "--out", str(site), "--site", "hospital"]) == 0
    capsys.readouterr()
    assert check_site(site / "manifest.json").ok
    manifest = read_manifest(site / "manifest.json")
    mapping = json.loads((site / "private" / "pseudonyms.json").read_text())
    # every DICOM voxel (i, j, k) is where its geometry puts it: origin + i·Δi·row + j·Δj·col + k·Δk·normal (LPS)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in frames["subj0"].shape[:3]], indexing="ij"), -1).reshape(-1, 3)
    normal = np.cross(geo.row_cos, geo.col_cos)
    world = (np.array(geo.origin) + ijk[:, :1] * geo.spacing[0] * np.array(geo.row_cos)
             + ijk[:, 1:2] * geo.spacing[1] * np.array(geo.col_cos) + ijk[:, 2:] * geo.spacing[2] * normal)
    ras = world * np.array([-1.0, -1.0, 1.0])
    worst = 0.0
    for entry in manifest.subjects:
        f = frames[next(n for n in frames if n in json.dumps(mapping[entry.id]))]
        for path, known in ((entry.input, f[..., 0]), (entry.target, f.mean(-1))):
            img = nib.load(site / path)
            vox = (np.linalg.inv(img.affine) @ np.c_[ras, np.ones(len(ras))].T)[:3].T
            assert np.abs(vox - np.round(vox)).max() < 1e-3  # the same grid, not a resampled one
            got = img.get_fdata()[tuple(np.round(vox).astype(int).T)]
            error = np.abs(got - known[tuple(ijk.T)]).max()
            assert error <= float(img.dataobj.slope) + 1e-3 * float(img.dataobj.slope) + 0.06, (path, error)
            worst = max(worst, error / float(known.max()))
    assert worst < 2e-5  # of the peak: int16 quantisation of the DICOM and of the site's NIfTI
    for path in site.rglob("*"):  # no patient name leaves the private mapping
        if path.is_file() and "private" not in path.parts:
            data = path.read_bytes()
            assert b"Doe^" not in data and not any(name.encode() in data for name in frames), path


def test_a_bids_pet_dataset_imports_through_the_real_readers(tmp_path: Path) -> None:
    """A BIDS-PET dataset root (sub-*/pet/*_pet.nii.gz + sidecar), found and read by petite_fl.data.readers."""
    src = tmp_path / "bids"
    for k in range(3):
        _write_bids(src / f"sub-{k:02d}" / "pet", _known_frames(seed=k), stem=f"sub-{k:02d}_pet")
    report = import_site(src, tmp_path / "site", site="hospitalB", splits={"train": 2, "val": 0, "test": 1})
    assert [r["id"] for r in report.imported] == ["sub-001", "sub-002", "sub-003"] and not report.skipped
    assert check_site(tmp_path / "site" / "manifest.json").ok
    for path, data in _tree_bytes(tmp_path / "site"):
        assert PATIENT.encode() not in data, path
