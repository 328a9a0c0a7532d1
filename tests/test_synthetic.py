"""The synthetic data carry the physics that makes cross-scanner fine-tuning necessary."""

from __future__ import annotations

import hashlib
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from petite_fl.config import compose
from petite_fl.data.acquisition import acquire, blur_to_resolution, noise_ratio
from petite_fl.data.manifest import read_manifest, write_manifest
from petite_fl.data.patients import Population, draw_patient
from petite_fl.data.phantom import REGION_AD, REGION_REFERENCE
from petite_fl.data.synthetic import SynthSpec, generate, synthesize, synthesize_subject
from petite_fl.errors import ConfigError, DataError
from petite_fl.scanners import get_scanner
from tests.conftest import small_spec

SCANNERS = [f"scanner{i}" for i in range(1, 6)]
SQRT6 = float(np.sqrt(6.0))


@pytest.mark.parametrize("name", SCANNERS)
def test_files_have_the_scanner_exact_shape_zooms_and_ras_affine(synthetic_dataset, name):
    out, _ = synthetic_dataset
    scanner = get_scanner(name)
    manifest = read_manifest(out / name / "manifest.json")
    assert manifest.counts() == {"train": 1, "val": 0, "test": 1}
    for entry in manifest.subjects:
        for path in (entry.input, entry.target):
            img = nib.load(path)
            assert img.shape == scanner.matrix
            assert np.allclose(img.header.get_zooms(), scanner.voxel_mm, atol=1e-5)
            assert np.allclose(img.affine, scanner.affine, atol=1e-4)
            assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
            assert img.get_data_dtype() == np.int16  # stored like scanner exports, with a slope


@pytest.mark.parametrize("name", SCANNERS)
def test_input_noise_exceeds_target_noise_by_sqrt6(name):
    # 1 frame vs the mean of 6 independent frames: RMS error ratio √6 in expectation.
    # The estimate averages ~10^5 correlated head voxels (≥ 10^3 independent noise
    # grains at these resolutions), so its sampling error is ~2 %; 5 % leaves margin.
    scan = synthesize_subject(get_scanner(name), 0, small_spec())
    assert noise_ratio(scan) == pytest.approx(SQRT6, rel=0.05)


def test_recorded_noise_ratios_on_disk_are_near_sqrt6(synthetic_dataset):
    _, info = synthetic_dataset
    ratios = [s["noise_ratio"] for s in info["subjects"]]
    assert len(ratios) == 10
    assert np.mean(ratios) == pytest.approx(SQRT6, rel=0.02)


def test_six_explicit_frames_have_the_same_statistics_as_the_fast_path():
    scanner = get_scanner("scanner5")
    activity = np.ones(scanner.matrix, np.float32)
    fast = acquire(activity, scanner, np.random.default_rng(1))
    slow = acquire(activity, scanner, np.random.default_rng(2), explicit_frames=True)
    core = (slice(16, -16),) * 3
    for a, b in ((fast.input, slow.input), (fast.target, slow.target)):
        assert np.std(a[core]) == pytest.approx(np.std(b[core]), rel=0.05)
    assert np.mean(fast.target[core]) == pytest.approx(np.mean(slow.target[core]), rel=0.01)


@pytest.mark.parametrize("name", SCANNERS)
def test_one_frame_noise_matches_the_scanner_count_level(name):
    # Uniform activity 1 (grey matter): relative noise of one frame = sqrt((1 + bg) / counts).
    scanner = get_scanner(name)
    scan = acquire(np.ones(scanner.matrix, np.float32), scanner, np.random.default_rng(0),
                   background=0.02)
    expected = np.sqrt(1.02 / scanner.acquisition.counts_per_voxel)
    assert np.std(scan.input) / np.mean(scan.input) == pytest.approx(expected, rel=0.03)


def _fwhm_mm(scanner_name: str) -> np.ndarray:
    """Imaged point source: FWHM (mm) along each axis from the second moment."""
    scanner = get_scanner(scanner_name)
    point = np.zeros(scanner.matrix, np.float32)
    centre = tuple(n // 2 for n in scanner.matrix)
    point[centre] = 1.0
    image = blur_to_resolution(point, scanner)
    fwhm = []
    for axis in range(3):
        profile = image.sum(axis=tuple(a for a in range(3) if a != axis))
        x = (np.arange(profile.size) - centre[axis]) * scanner.voxel_mm[axis]
        sigma = np.sqrt(np.sum(profile * x**2) / np.sum(profile))
        fwhm.append(2.3548 * sigma)
    return np.array(fwhm)


@pytest.mark.parametrize("name", SCANNERS)
def test_measured_resolution_is_the_scanner_fwhm(name):
    expected = np.array(get_scanner(name).acquisition.fwhm_mm)
    assert _fwhm_mm(name) == pytest.approx(expected, rel=0.05)


def test_scanners_differ_measurably_in_resolution():
    measured = {name: _fwhm_mm(name).mean() for name in SCANNERS}
    assert measured["scanner5"] - measured["scanner1"] > 2.0  # mm
    assert len({round(v, 1) for v in measured.values()}) == len(SCANNERS)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path: Path):
    spec = small_spec(scanners=("scanner5", "scanner4"))
    generate(spec, tmp_path / "a", workers=1)
    generate(spec, tmp_path / "b", workers=2)
    generate(small_spec(scanners=("scanner5", "scanner4"), seed=99), tmp_path / "c", workers=1)
    a, b, c = (_digest(tmp_path / k) for k in "abc")
    # per scanner: 2 subjects × (input, target, truth, regions) + manifest; dataset.json
    assert len(a) == 2 * (2 * 4 + 1) + 1
    assert a == b
    assert a["scanner5/sub-001_input.nii.gz"] != c["scanner5/sub-001_input.nii.gz"]


def test_a_second_call_does_nothing_and_a_changed_spec_regenerates(tmp_path: Path):
    spec = small_spec(scanners=("scanner5",))
    _, made = generate(spec, tmp_path / "d", workers=1)
    first = (tmp_path / "d" / "scanner5" / "sub-001_input.nii.gz").stat().st_mtime_ns
    _, made_again = generate(spec, tmp_path / "d", workers=1)
    assert made and not made_again
    assert (tmp_path / "d" / "scanner5" / "sub-001_input.nii.gz").stat().st_mtime_ns == first
    _, remade = generate(small_spec(scanners=("scanner5",), seed=5), tmp_path / "d", workers=1)
    assert remade
    leftovers = list(tmp_path.glob(".d.partial-*")) + list(tmp_path.glob(".d.old-*"))
    assert not leftovers  # no staging or old folders left behind


def test_concurrent_requests_generate_once(tmp_path: Path):
    spec = small_spec(scanners=("scanner5",), subjects=1, splits=(("train", 1), ("val", 0), ("test", 0)))
    with ThreadPoolExecutor(2) as pool:
        made = sorted(m for _, m in pool.map(lambda _: generate(spec, tmp_path / "e", workers=1), range(2)))
    assert made == [False, True]


def test_subjects_vary_in_anatomy():
    scanner = get_scanner("scanner5")
    a = synthesize_subject(scanner, 0, small_spec()).noise_free
    b = synthesize_subject(scanner, 1, small_spec()).noise_free
    head_a, head_b = a > 0.1, b > 0.1
    overlap = (head_a & head_b).sum() / (head_a | head_b).sum()
    assert overlap < 0.97  # different size, pose and shape


def test_splits_that_do_not_add_up_are_refused():
    with pytest.raises(ConfigError, match="add up"):
        small_spec(subjects=3).validate()


def test_per_scanner_sizes_make_small_and_large_sites(tmp_path):
    from petite_fl.config import compose

    base = ["data.synth.scanners=[scanner4,scanner5]", "data.synth.subjects=4",
            "data.synth.splits={train:2,val:1,test:1}"]
    default = SynthSpec.from_config(compose(overrides=base).data.synth)
    assert dict(default.splits_for("scanner5")) == {"train": 3, "val": 2, "test": 2}  # the default data-poor site
    assert dict(default.splits_for("scanner4")) == {"train": 2, "val": 1, "test": 1}
    assert "scanner3" not in dict(default.sizes)  # not in this data set
    spec = SynthSpec.from_config(compose(overrides=[*base, "data.synth.sizes.scanner5.train=1",
                                                    "data.synth.sizes.scanner5.val=1",
                                                    "data.synth.sizes.scanner5.test=1"]).data.synth)
    info, _ = generate(spec, tmp_path / "d", workers=1)
    assert sum(s["scanner"] == "scanner5" for s in info["subjects"]) == 3
    # subjects fill train, val, test in index order: the small site's test subject is its third
    assert [s["id"] for s in info["subjects"] if s["scanner"] == "scanner5" and s["split"] == "test"] == ["sub-003"]
    with pytest.raises(ConfigError, match="unknown scanner 'scanner9'"):
        SynthSpec.from_config(compose(overrides=["+data.synth.sizes.scanner9={train:1}"]).data.synth)


@pytest.mark.parametrize("name", ["scanner1", "scanner5"])
def test_truth_and_regions_are_written_listed_and_in_the_images_units(synthetic_dataset, name):
    out, _ = synthetic_dataset
    rows = json.loads((out / name / "manifest.json").read_text())["subjects"]
    scanner = get_scanner(name)
    for row in rows:
        assert row["truth"] == f"{row['id']}_truth.nii.gz" and row["regions"] == f"{row['id']}_regions.nii.gz"
        truth, regions, target = (nib.load(out / name / row[k]) for k in ("truth", "regions", "target"))
        assert truth.get_data_dtype() == np.int16 and regions.get_data_dtype() == np.uint8
        for img in (truth, regions):
            assert img.shape == scanner.matrix and np.allclose(img.affine, scanner.affine, atol=1e-4)
        labels = np.asarray(regions.dataobj)
        assert set(np.unique(labels)) == {0, REGION_AD, REGION_REFERENCE}
        t, y = truth.get_fdata(), target.get_fdata()
        head = t > 0.1 * t.max()
        # same units: the target is the truth plus zero-mean noise (clipping at 0 aside)
        assert y[head].mean() == pytest.approx(t[head].mean(), rel=0.02)
        # cortex of the AD-relevant regions (blurred by the scanner) against the cerebellum (0.85 × (1 ± 0.12))
        ratio = t[labels == REGION_AD].mean() / t[labels == REGION_REFERENCE].mean()
        assert 0.5 < ratio < 1.3
        assert not np.array_equal(t, y)  # the truth is not a copy of the target


def test_region_labels_have_anatomical_volumes_on_any_grid():
    # 1-mm-ish and 2-mm grids label the same structures: cortex in 5 spheres of 20 mm, the cerebellum
    for name in ("scanner4", "scanner5"):
        scanner = get_scanner(name)
        labels = synthesize(scanner, 0, small_spec()).regions
        ml = [float((labels == k).sum() * np.prod(scanner.voxel_mm)) / 1000 for k in (REGION_AD, REGION_REFERENCE)]
        assert 15 < ml[0] < 80  # grey matter only: a fraction of the spheres' 168 mL
        assert 40 < ml[1] < 110  # the cerebellum ellipsoid: ~105 mL × the subject's size


def test_write_manifest_keeps_the_optional_truth_fields_only_when_given(tmp_path):
    rows = [{"id": "a", "split": "test", "input": "a_i.nii.gz", "target": "a_t.nii.gz", "truth": "a_x.nii.gz",
             "regions": "a_r.nii.gz"}, {"id": "b", "split": "train", "input": "b_i.nii.gz", "target": "b_t.nii.gz"}]
    written = json.loads(write_manifest(tmp_path / "m.json", "s", None, rows).read_text())["subjects"]
    assert written[0] == rows[0] and written[1] == rows[1]
    # a site is simulated or not: the truth on some rows only is refused when read, naming the row
    with pytest.raises(DataError, match=r"row 2: no 'truth' field"):
        read_manifest(tmp_path / "m.json")
    rows[1] |= {"truth": "b_x.nii.gz", "regions": "b_r.nii.gz"}
    write_manifest(tmp_path / "m.json", "s", None, rows)
    assert read_manifest(tmp_path / "m.json").counts() == {"train": 1, "val": 0, "test": 1}


def _population() -> Population:
    return SynthSpec.from_config(compose(overrides=[]).data.synth).patients


def test_count_levels_vary_per_subject_within_the_documented_ranges():
    population = _population()
    rng = np.random.default_rng(0)
    patients = [draw_patient(rng, population) for _ in range(500)]
    low, high = population.count_scale_range()
    for field in ("dose_mbq", "weight_kg", "uptake_min"):
        lo, hi = getattr(population, field)
        values = [getattr(p, field) for p in patients]
        assert lo <= min(values) and max(values) <= hi
        assert np.ptp(values) > 0.8 * (hi - lo)  # the whole range is used
    scales = np.array([p.count_scale for p in patients])
    assert low <= scales.min() and scales.max() <= high
    assert np.quantile(scales, 0.9) / np.quantile(scales, 0.1) > 2.0  # patients differ, not a global jitter
    assert 0.8 < np.median(scales) < 1.2  # the scanner's counts_per_voxel stays its typical level


def test_count_levels_overlap_across_scanners_and_are_recorded_per_subject(synthetic_dataset):
    _, info = synthetic_dataset
    low, high = _population().count_scale_range()
    typical = sorted((get_scanner(n).acquisition.counts_per_voxel, n) for n in SCANNERS)
    for (a, _), (b, _) in itertools.pairwise(typical):
        assert b * low < a * high  # each scanner's range overlaps the next one's
    for row in info["subjects"]:
        counts = get_scanner(row["scanner"]).acquisition.counts_per_voxel
        assert counts * low <= row["counts_per_voxel"] <= counts * high
    for name in SCANNERS:
        levels = [r["counts_per_voxel"] for r in info["subjects"] if r["scanner"] == name]
        assert len(set(levels)) == len(levels)  # every subject its own


def test_a_subject_noise_follows_its_own_count_level():
    # the same scanner, two subjects: relative noise of one frame ∝ 1 / sqrt(counts)
    scanner = get_scanner("scanner5")
    subjects = [synthesize(scanner, i, small_spec()) for i in range(2)]
    noise = []
    for sub in subjects:
        scan = sub.scan
        gm = scan.noise_free > 0.7 * scan.noise_free.max()
        noise.append(np.std((scan.input - scan.noise_free)[gm]) / np.mean(scan.noise_free[gm]))
    expected = np.sqrt(subjects[1].counts_per_voxel / subjects[0].counts_per_voxel)
    assert noise[0] / noise[1] == pytest.approx(expected, rel=0.15)


def test_bad_patient_ranges_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"data\.synth\.patients\.weight_kg"):
        SynthSpec.from_config(compose(overrides=["data.synth.patients.weight_kg=[90,50]"]).data.synth)
    with pytest.raises(ConfigError, match=r"data\.synth\.patients"):
        SynthSpec.from_config(compose(overrides=["data.synth.patients.dose_mbq=high"]).data.synth)
