"""A NIfTI header is checked against its file before a voxel is allocated (issue 26, item 8).

A 200-byte `.nii.gz` can claim 48 GiB: nibabel allocates what the header says, then reads.
Every place petite reads a NIfTI a user or a peer gives (the importer, a site's manifest,
`petite infer` inputs) refuses such a file in one line naming it and the claimed size, with a
small allocation peak (tracemalloc) — real files, no mock of nibabel.
"""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import smooth_volume, write_nifti, write_site

from petite_fl.data.nifti import load_volume
from petite_fl.errors import ConfigError, DataError

#: an allocation peak far below any claim below, far above what reading a header needs
PEAK_LIMIT = 32 * 2**20


def forged(path: Path, shape: tuple[int, ...], dtype: type, payload: bytes = b"") -> Path:
    """A NIfTI-1 single file whose header claims `shape` × `dtype` but holds only `payload` after it."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_data_offset(352)
    header.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    raw = header.binaryblock + b"\0" * 4 + payload   # 348 bytes, the extension flag, then the "data"
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def refusal_and_peak(load: Callable[[], object]) -> tuple[str, int]:
    """The one-line refusal of `load` and the allocation peak while it ran."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as caught:
            load()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return str(caught.value), peak


def test_a_200_byte_nii_gz_claiming_48_gib_is_refused_without_allocating(tmp_path: Path) -> None:
    bomb = forged(tmp_path / "bomb.nii.gz", (2048, 2048, 3072), np.float32)
    assert bomb.stat().st_size < 300
    line, peak = refusal_and_peak(lambda: load_volume(bomb, what="row 1 input"))
    assert line.startswith(f"row 1 input: {bomb}: ") and "\n" not in line
    assert "48.0 GiB" in line and "2048×2048×3072" in line
    assert peak < PEAK_LIMIT, peak


@pytest.mark.parametrize("name", ["short.nii.gz", "short.nii"])
def test_a_claim_within_the_voxel_bound_is_refused_when_the_file_does_not_hold_it(tmp_path: Path, name: str) -> None:
    """1 GiB claimed (half a 1024³ int16 volume) in a few hundred bytes: bounded while reading, not trusted."""
    bomb = forged(tmp_path / name, (1024, 1024, 512), np.int16, payload=b"\1" * 200)
    line, peak = refusal_and_peak(lambda: load_volume(bomb))
    assert line.startswith(f"{bomb}: ") and "1.0 GiB" in line and "\n" not in line
    assert "holds only" in line
    assert peak < PEAK_LIMIT, peak


def test_the_importer_skips_a_bids_series_whose_header_lies_in_one_line(tmp_path: Path) -> None:
    from petite_fl.data.importer import import_site

    pet = tmp_path / "bids" / "sub-01" / "pet"
    pet.mkdir(parents=True)
    bomb = forged(pet / "sub-01_pet.nii.gz", (2048, 2048, 512, 6), np.float32)
    (pet / "sub-01_pet.json").write_text(json.dumps({"Modality": "PT", "Units": "Bq/mL", "ImageDecayCorrected": True,
                                                     "FrameTimesStart": [0] * 6, "FrameDuration": [300] * 6}))
    tracemalloc.start()
    try:
        report = import_site(tmp_path / "bids", tmp_path / "site")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not report.imported and len(report.skipped) == 1
    assert report.skipped[0].startswith(f"{bomb} (nifti-bids): ") and "48.0 GiB" in report.skipped[0]
    assert peak < PEAK_LIMIT, peak


def test_a_site_manifest_pointing_at_a_lying_header_is_refused_at_check(tmp_path: Path) -> None:
    from petite_fl.data.check import check_site

    manifest = write_site(tmp_path / "site", n=2)
    forged(tmp_path / "site" / "sub-002_input.nii.gz", (2048, 2048, 3072), np.float32)
    tracemalloc.start()
    try:
        report = check_site(manifest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not report.ok
    assert any("sub-002_input.nii.gz" in p and "48.0 GiB" in p for p in report.problems), report.problems
    assert peak < PEAK_LIMIT, peak


def test_an_honest_file_still_loads_with_its_scaling(tmp_path: Path) -> None:
    data = smooth_volume(3)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.set_data_dtype(np.int16)                  # nibabel stores a slope: the loader must apply it
    for name in ("a.nii.gz", "a.nii"):
        nib.save(img, tmp_path / name)
        got = load_volume(tmp_path / name).data
        np.testing.assert_allclose(got, data, atol=float(nib.load(tmp_path / name).dataobj.slope))
    write_nifti(tmp_path / "b.nii.gz", data)
    np.testing.assert_array_equal(load_volume(tmp_path / "b.nii.gz").data, data)


def test_the_voxel_bound_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_nifti(tmp_path / "a.nii.gz", smooth_volume(0))        # 24×22×20 = 10560 voxels
    monkeypatch.setenv("PETITE_FL_MAX_VOXELS", "10000")
    with pytest.raises(DataError, match=r"24×22×20 float32 image .* more than the 10000 voxels"):
        load_volume(path)
    monkeypatch.setenv("PETITE_FL_MAX_VOXELS", "many")
    with pytest.raises(ConfigError, match=r"PETITE_FL_MAX_VOXELS=.many. is not a positive whole number"):
        load_volume(path)
