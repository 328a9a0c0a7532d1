"""A simulated site's noise-free truth and region labels: optional manifest fields, validated in one
line each, loaded on the input's grid and scaled like the target, and never seen by training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.ndimage import gaussian_filter

from petite_fl.data.check import check_site
from petite_fl.data.manifest import read_manifest, write_manifest
from petite_fl.data.nifti import load_volume
from petite_fl.data.patches import site_patch_dataset
from petite_fl.data.scalings.grey_matter import grey_matter_level
from petite_fl.data.site import load_site
from petite_fl.errors import DataError
from tests.conftest import smooth_volume, write_nifti, write_site


def regions_volume(truth: np.ndarray) -> np.ndarray:
    """Stand-in region labels: the truth's hot voxels (above half its maximum) in the upper half of the
    volume are the measured regions (1), those in the lower half the reference (2)."""
    hot = truth > 0.5 * truth.max()
    upper = np.arange(truth.shape[2])[None, None, :] >= truth.shape[2] // 2
    return np.where(hot & upper, 1, np.where(hot, 2, 0)).astype(np.int16)


def add_truth(manifest: Path, regions: bool = True) -> Path:
    """Every row gets a truth (its target smoothed: a noise-free stand-in on the same grid) and, optionally,
    region labels."""
    data = json.loads(manifest.read_text())
    for row in data["subjects"]:
        target = load_volume(manifest.parent / row["target"])
        truth = gaussian_filter(target.data, 1.5)
        write_nifti(manifest.parent / f"{row['id']}_truth.nii.gz", truth, target.affine)
        row["truth"] = f"{row['id']}_truth.nii.gz"
        if regions:
            write_nifti(manifest.parent / f"{row['id']}_regions.nii.gz", regions_volume(truth), target.affine)
            row["regions"] = f"{row['id']}_regions.nii.gz"
    manifest.write_text(json.dumps(data))
    return manifest


@pytest.fixture
def truth_site(tmp_path: Path) -> Path:
    return add_truth(write_site(tmp_path / "site"))


def _edit(manifest: Path, row: int, **fields) -> None:
    data = json.loads(manifest.read_text())
    for k, v in fields.items():
        if v is None:
            data["subjects"][row].pop(k, None)
        else:
            data["subjects"][row][k] = v
    manifest.write_text(json.dumps(data))


MANIFEST_CASES = [
    ({"truth": 7}, r"row 2 \(subject 'sub-002'\): field 'truth' must be a file path, got 7"),
    ({"regions": ""}, r"row 2 \(subject 'sub-002'\): field 'regions' must be a file path, got ''"),
    ({"truth": None}, r"row 2 \(subject 'sub-002'\): field 'regions' needs 'truth'"),
    ({"truth": None, "regions": None}, r"row 2: no 'truth' field, which rows 1, 3 have; give it for every subject"),
]


@pytest.mark.parametrize("fields, message", MANIFEST_CASES)
def test_a_bad_truth_or_regions_field_is_one_line_naming_the_row_and_field(truth_site, fields, message):
    _edit(truth_site, 1, **fields)
    with pytest.raises(DataError, match=message) as info:
        read_manifest(truth_site)
    assert len(str(info.value).splitlines()) == 1
    assert not check_site(truth_site).ok


def labels(manifest: Path) -> np.ndarray:
    return load_volume(manifest.parent / "sub-002_regions.nii.gz").data.astype(np.int16)


FILE_CASES = [
    (lambda m: write_nifti(m.parent / "sub-002_truth.nii.gz", smooth_volume(0, (24, 22, 18))),
     r"row 2 \(subject 'sub-002'\): input shape \(24, 22, 20\) differs from truth shape \(24, 22, 18\)"),
    (lambda m: write_nifti(m.parent / "sub-002_regions.nii.gz", labels(m), np.diag([2.0, 2.0, 2.5, 1.0])),
     r"row 2 \(subject 'sub-002'\): input and regions affines differ"),
    (lambda m: write_nifti(m.parent / "sub-002_regions.nii.gz", labels(m) * 3),
     r"row 2 \(subject 'sub-002'\) regions: labels must be 0, 1 and 2, found 0, 3, 6$"),
    (lambda m: write_nifti(m.parent / "sub-002_regions.nii.gz", np.where(labels(m) == 2, 0, labels(m))),
     r"row 2 \(subject 'sub-002'\) regions: no voxel labelled 2"),
    (lambda m: (m.parent / "sub-002_truth.nii.gz").unlink(), r"row 2 \(subject 'sub-002'\) truth: .*file not found"),
]


@pytest.mark.parametrize("breaker, message", FILE_CASES,
                         ids=["truth-shape", "regions-affine", "labels", "no-reference", "truth-missing"])
def test_a_bad_truth_or_regions_file_is_named_where_evaluation_loads_it(truth_site, breaker, message):
    breaker(truth_site)
    with pytest.raises(DataError, match=message):
        load_site(truth_site, truth=True)
    report = check_site(truth_site)  # `petite-data check` reads them too
    assert len(report.problems) == 1 and "sub-002" in report.problems[0]
    load_site(truth_site)  # training never opens them


def test_truth_is_scaled_with_the_inputs_factor_and_regions_are_kept_as_labels(truth_site):
    site = load_site(truth_site, truth=True)
    for subject, pair in zip(site.subjects("train"), site.pairs["train"], strict=True):
        factor = grey_matter_level(pair.input.data, pair.input.zooms)
        np.testing.assert_allclose(subject.truth * factor, pair.truth.data, rtol=1e-5)
        np.testing.assert_allclose(subject.target * factor, pair.target.data, rtol=1e-5)
        assert subject.regions.dtype == np.int16 and set(np.unique(subject.regions)) == {0, 1, 2}
    minmax = load_site(truth_site, truth=True, scaling="minmax").subjects("test")[0]
    pair = load_site(truth_site, truth=True).pairs["test"][0]
    lo, hi = pair.target.data.min(), pair.target.data.max()  # the truth in the target's units
    np.testing.assert_allclose(minmax.truth, (pair.truth.data - lo) / (hi - lo), rtol=1e-5, atol=1e-6)


def test_training_never_loads_the_truth(truth_site):
    site = load_site(truth_site, splits=("train",))
    assert all(p.truth is None and p.regions is None for p in site.pairs["train"])
    loader = OmegaConf.create({"patches_per_volume": 2, "foreground_threshold": 0.1, "foreground_ratio": 0.5})
    item = site_patch_dataset(site, "train", loader, patch=(16, 16, 16))[0]
    assert sorted(item[0]) == ["id", "input", "target"]
    assert load_site(truth_site).subjects("train")[0].truth is None


def test_a_site_without_truth_still_loads_and_checks(tmp_path: Path):
    manifest = write_site(tmp_path / "real")
    subject = load_site(manifest, truth=True).subjects("test")[0]
    assert subject.truth is None and subject.regions is None
    assert check_site(manifest).ok and not any("truth" in n for n in check_site(manifest).notes)


def test_write_manifest_keeps_the_optional_fields_only_where_given(tmp_path: Path, truth_site):
    rows = [{"id": s.id, "split": s.split, "input": s.input.name, "target": s.target.name,
             "truth": s.truth.name, "regions": s.regions.name} for s in read_manifest(truth_site).subjects]
    path = write_manifest(truth_site.parent / "copy.json", "site", None, rows)
    assert read_manifest(path).subjects == read_manifest(truth_site).subjects  # the same folder: the same files
    plain = write_manifest(tmp_path / "plain.json", "site", None, [{k: v for k, v in r.items()
                                                                   if k not in ("truth", "regions")} for r in rows])
    assert all("truth" not in r and "regions" not in r for r in json.loads(plain.read_text())["subjects"])
    assert check_site(truth_site).ok and any("truth" in n for n in check_site(truth_site).notes)
