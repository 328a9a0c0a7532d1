"""Every kind of bad site input gets one clear message naming the file or row.

Each case is checked three ways: the library (`load_site` raises a DataError), the
checker (`check_site` reports the problem) and the CLI (`petite-data check` exits non-zero
with the message and no traceback).
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from petite_fl.cli.data import main
from petite_fl.data.check import check_site
from petite_fl.data.nifti import load_volume
from petite_fl.data.site import load_site
from petite_fl.errors import DataError
from tests.conftest import SMALL_SHAPE, smooth_volume, write_nifti


def _rows(manifest: Path) -> dict:
    return json.loads(manifest.read_text())


def _save_rows(manifest: Path, data: dict) -> None:
    manifest.write_text(json.dumps(data))


def missing_file(m: Path) -> None:
    (m.parent / "sub-002_target.nii.gz").unlink()


def truncated_gzip(m: Path) -> None:
    p = m.parent / "sub-002_input.nii.gz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def not_nifti(m: Path) -> None:
    (m.parent / "sub-002_input.nii.gz").write_bytes(gzip.compress(b"subject,age\n1,70\n" * 40))


def two_d(m: Path) -> None:
    write_nifti(m.parent / "sub-002_input.nii.gz", smooth_volume(0)[:, :, 5])


def four_d(m: Path) -> None:
    frames = np.stack([smooth_volume(i) for i in range(6)], axis=-1)
    write_nifti(m.parent / "sub-002_input.nii.gz", frames)


def shape_mismatch(m: Path) -> None:
    write_nifti(m.parent / "sub-002_input.nii.gz", smooth_volume(0, (24, 22, 18)))


def affine_mismatch(m: Path) -> None:
    write_nifti(m.parent / "sub-002_input.nii.gz", smooth_volume(0), np.diag([2.0, 2.0, 2.5, 1.0]))


def nan_voxels(m: Path) -> None:
    data = smooth_volume(0)
    data[3, 4, 5] = np.nan
    data[6, 7, 8] = np.inf
    write_nifti(m.parent / "sub-002_target.nii.gz", data)


def all_zero(m: Path) -> None:
    write_nifti(m.parent / "sub-002_target.nii.gz", np.zeros(SMALL_SHAPE, np.float32))


def empty_manifest(m: Path) -> None:
    data = _rows(m)
    data["subjects"] = []
    _save_rows(m, data)


def duplicate_subject(m: Path) -> None:
    data = _rows(m)
    data["subjects"][2]["id"] = data["subjects"][0]["id"]
    _save_rows(m, data)


def unknown_split(m: Path) -> None:
    data = _rows(m)
    data["subjects"][1]["split"] = "trian"
    _save_rows(m, data)


def manifest_not_json(m: Path) -> None:
    m.write_text("{ subjects: [ oops")


CASES: list[tuple[Callable[[Path], None], str]] = [
    (missing_file, r"row 2 \(subject 'sub-002'\) target: .*sub-002_target.nii.gz: file not found"),
    (truncated_gzip, r"row 2 .*input: .*sub-002_input.nii.gz: truncated or corrupt"),
    (not_nifti, r"sub-002_input.nii.gz: not a NIfTI file"),
    (two_d, r"sub-002_input.nii.gz: a 2D image \(shape \(24, 22\)\); a 3D volume is required"),
    (four_d, r"sub-002_input.nii.gz: a 4D image with 6 frames"),
    (shape_mismatch, r"row 2 \(subject 'sub-002'\): input shape \(24, 22, 18\) differs from target"),
    (affine_mismatch, r"row 2 \(subject 'sub-002'\): input and target affines differ"),
    (nan_voxels, r"sub-002_target.nii.gz: contains 1 NaN and 1 Inf voxels"),
    (all_zero, r"sub-002_target.nii.gz: the volume is all zeros"),
    (empty_manifest, r"manifest.json: the manifest lists no subjects"),
    (duplicate_subject, r"manifest.json: duplicate subject 'sub-001' \(rows 1 and 3\)"),
    (unknown_split, r"manifest.json row 2 \(subject 'sub-002'\): unknown split 'trian' \(allowed: train, val, test\)"),
    (manifest_not_json, r"manifest.json: not valid JSON \(line 1"),
]
IDS = [case.__name__ for case, _ in CASES]


@pytest.mark.parametrize("breaker, message", CASES, ids=IDS)
def test_load_site_raises_one_clear_error(small_site: Path, breaker, message):
    breaker(small_site)
    with pytest.raises(DataError, match=message):
        load_site(small_site)


@pytest.mark.parametrize("breaker, message", CASES, ids=IDS)
def test_check_reports_the_problem(small_site: Path, breaker, message):
    breaker(small_site)
    report = check_site(small_site)
    assert not report.ok
    assert len(report.problems) == 1
    assert re.search(message, report.problems[0])


@pytest.mark.parametrize("breaker, message", CASES, ids=IDS)
def test_cli_check_exits_non_zero_without_traceback(small_site: Path, breaker, message, capsys):
    breaker(small_site)
    assert main(["check", str(small_site)]) == 1
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())  # undo rich's line wrapping
    assert "Traceback" not in text
    assert "sub-002" in text or "manifest" in text


def test_the_installed_command_prints_no_traceback(small_site: Path):
    truncated_gzip(small_site)
    cmd = [sys.executable, "-m", "petite_fl.cli.data", "check", str(small_site)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "truncated or corrupt" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_several_problems_are_reported_together(small_site: Path):
    missing_file(small_site)
    write_nifti(small_site.parent / "sub-003_input.nii.gz", np.zeros(SMALL_SHAPE, np.float32))
    with pytest.raises(DataError, match=r"2 of 3 subjects are invalid") as info:
        load_site(small_site)
    assert "sub-002" in str(info.value) and "sub-003" in str(info.value)


def test_a_valid_site_loads_scaled_to_unit_range_with_minmax(small_site: Path):
    site = load_site(small_site, scaling="minmax")
    assert site.manifest.counts() == {"train": 1, "val": 1, "test": 1}
    for _, x, y in site.arrays("train"):
        assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
        assert y.min() == 0.0 and y.max() == 1.0
    assert check_site(small_site).ok


# --- What real NIfTI files carry -------------------------------------------------------


def test_scale_slope_and_intercept_are_applied(tmp_path: Path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    img.header.set_slope_inter(2.5, 10.0)
    nib.save(img, tmp_path / "v.nii.gz")
    vol = load_volume(tmp_path / "v.nii.gz")
    assert vol.data.dtype == np.float32
    assert vol.data[0, 0, 0] == 10.0 and vol.data[1, 2, 3] == pytest.approx(23 * 2.5 + 10.0)


@pytest.mark.parametrize("dtype", [">i2", ">f4", "<u2", "int32", "float64"])
def test_integer_and_big_endian_data_load_as_native_float32(tmp_path: Path, dtype):
    data = (smooth_volume(0) / 10).astype(dtype)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii")
    vol = load_volume(tmp_path / "v.nii")
    assert vol.data.dtype == np.float32 and vol.data.dtype.isnative
    assert np.allclose(vol.data, data.astype(np.float64), rtol=1e-6)


def test_non_ras_orientation_is_reoriented_to_ras(tmp_path: Path):
    data = smooth_volume(3)
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    # The same image stored left-posterior-superior: flip x and y in voxel space.
    lps = ras.copy()
    lps[0, 0], lps[1, 1] = -2.0, -2.0
    lps[:3, 3] = [2.0 * (SMALL_SHAPE[0] - 1), 2.0 * (SMALL_SHAPE[1] - 1), 0.0]
    write_nifti(tmp_path / "ras.nii.gz", data, ras)
    write_nifti(tmp_path / "lps.nii.gz", data[::-1, ::-1, :].copy(), lps)
    a, b = load_volume(tmp_path / "ras.nii.gz"), load_volume(tmp_path / "lps.nii.gz")
    assert nib.aff2axcodes(b.affine) == ("R", "A", "S")
    assert np.allclose(a.affine, b.affine)
    assert np.array_equal(a.data, b.data)


def test_a_single_frame_4d_image_is_accepted_as_3d(tmp_path: Path):
    write_nifti(tmp_path / "v.nii.gz", smooth_volume(0)[..., None])
    assert load_volume(tmp_path / "v.nii.gz").data.shape == SMALL_SHAPE


@pytest.mark.parametrize("breaker, message", CASES, ids=IDS)
def test_the_coordinator_reads_the_row_and_the_problem_but_no_path_or_subject(small_site: Path, breaker, message):
    """What an error reply carries (built from a whitelist: `site.outgoing_errors`): the kind of problem and
    its manifest rows; the site's own log keeps the whole line."""
    from petite_fl.federation.site.outgoing_errors import KINDS, for_coordinator

    breaker(small_site)
    with pytest.raises(DataError) as exc:
        load_site(small_site)
    line = for_coordinator(exc.value, "scanner1")
    assert str(small_site.parent) not in line and "sub-00" not in line and "/" not in line, line
    assert any(kind in line for kind in KINDS), line
    if re.search(r"row \d", str(exc.value)):
        assert re.search(r"manifest rows? \d", line), line
