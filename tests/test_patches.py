"""Training patches: the scanner's patch size, foreground-weighted, four per volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader

from petite_fl.config import compose
from petite_fl.data.patches import patch_dataset, site_patch_dataset
from petite_fl.data.site import load_site
from petite_fl.scanners import get_scanner


def _volumes(n=2, shape=(40, 36, 30)):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        y = np.zeros(shape, np.float32)
        y[10:20, 8:16, 6:12] = 1.0  # small foreground box
        x = np.clip(y + 0.1 * rng.standard_normal(shape), 0, None).astype(np.float32)
        out.append((f"s{i}", x, y))
    return out


def test_patches_have_the_requested_size_and_count():
    ds = patch_dataset(_volumes(), (16, 16, 8), patches_per_volume=4, seed=0)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["input"].shape == (8, 1, 16, 16, 8)
    assert batch["target"].shape == (8, 1, 16, 16, 8)
    assert batch["input"].dtype == torch.float32


def test_patches_are_foreground_weighted():
    ds = patch_dataset(_volumes(1), (8, 8, 8), patches_per_volume=50, foreground_ratio=0.9, seed=1)
    patches = ds[0]
    with_fg = sum(bool((p["target"] > 0.5).any()) for p in patches)
    # The box is < 1 % of the volume: uniform sampling would rarely hit it.
    assert with_fg >= 35


def test_volumes_smaller_than_the_patch_are_padded():
    ds = patch_dataset(_volumes(1, (20, 20, 10)), (16, 16, 16), seed=0)
    assert all(p["input"].shape == (1, 16, 16, 16) for p in ds[0])


def test_same_seed_gives_the_same_patches():
    a = patch_dataset(_volumes(1), (8, 8, 8), seed=3)[0]
    b = patch_dataset(_volumes(1), (8, 8, 8), seed=3)[0]
    assert all(torch.equal(p["input"], q["input"]) for p, q in zip(a, b, strict=True))


def test_the_foreground_is_relative_to_the_targets_maximum_whatever_its_units():
    """The patches' foreground is the metrics' head mask (target > 0.1 × its maximum): the same
    patches for a target in any units."""
    volumes = _volumes(1)
    a = patch_dataset(volumes, (8, 8, 8), patches_per_volume=20, foreground_ratio=1.0, seed=2)[0]
    b = patch_dataset([(s, 40 * x, 40 * y) for s, x, y in volumes], (8, 8, 8), patches_per_volume=20,
                      foreground_ratio=1.0, seed=2)[0]
    assert all(torch.allclose(40 * p["target"], q["target"]) for p, q in zip(a, b, strict=True))
    assert all(bool((p["target"] > 0.5).any()) for p in a)


@pytest.mark.parametrize("name", ["scanner5", "scanner3"])
def test_synthetic_site_gives_scanner_sized_patches_in_unit_range(synthetic_dataset, name):
    out, _ = synthetic_dataset
    site = load_site(out / name / "manifest.json", splits=("train",), scaling="minmax")
    patch = get_scanner(name).patch
    patches = site_patch_dataset(site, "train", compose().data.loader, seed=0)[0]
    assert len(patches) == 4
    for p in patches:
        assert p["input"].shape == (1, *patch)
        assert float(p["input"].min()) >= 0.0 and float(p["input"].max()) <= 1.0


@pytest.mark.parametrize("scaling", ["grey-matter", "minmax"])
@pytest.mark.parametrize("patch", [(16, 16, 8), (32, 16, 8)])  # the second pads the first axis (24 voxels)
def test_a_sites_patches_are_those_cut_from_its_scaled_volumes(small_site, scaling, patch):
    """Patches cut from the volumes as loaded and scaled one by one are, value for value, the patches of
    the whole scaled volumes (`patch_dataset` of `arrays`): the same training, without a scaled copy."""
    site = load_site(small_site, splits=("train", "val", "test"), scaling=scaling)
    loader = compose().data.loader
    for split in ("train", "test"):
        ours = site_patch_dataset(site, split, loader, seed=5, patch=patch)
        whole = patch_dataset(site.arrays(split), patch, patches_per_volume=int(loader.patches_per_volume),
                              foreground_threshold=float(loader.foreground_threshold),
                              foreground_ratio=float(loader.foreground_ratio), seed=5)
        for i in range(len(whole)):
            for p, q in zip(ours[i], whole[i], strict=True):
                assert p.keys() == q.keys()
                assert all(torch.equal(p[k], q[k]) and p[k].dtype == torch.float32 for k in ("input", "target"))
