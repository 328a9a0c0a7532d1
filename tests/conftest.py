"""Shared fixtures: real NIfTI files in tmp_path, a small generated synthetic data set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from petite_fl.config import compose
from petite_fl.data.synthetic import SynthSpec, generate

SMALL_SHAPE = (24, 22, 20)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs in one worker per core (pyproject: -n 2): one torch thread each, not two
    # threads per worker spinning against each other on two cores. The processes a test starts (real
    # sites, Flower's apps) get one thread too: the deployment tests compare their tensors bit for bit with
    # an in-process run, and a sum over two threads is not the sum over one.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def smooth_volume(seed: int = 0, shape: tuple[int, int, int] = SMALL_SHAPE) -> np.ndarray:
    """A positive blob with noise: a stand-in PET volume that is small and valid."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    blob = np.exp(-4.0 * (grid**2).sum(0))
    return (1000.0 * blob + 20.0 * rng.random(shape)).astype(np.float32)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def write_site(folder: Path, n: int = 3, splits: tuple[str, ...] = ("train", "val", "test")) -> Path:
    """A valid site of `n` small subjects with a manifest; returns the manifest path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        sid = f"sub-{i + 1:03d}"
        write_nifti(folder / f"{sid}_input.nii.gz", smooth_volume(2 * i))
        write_nifti(folder / f"{sid}_target.nii.gz", smooth_volume(2 * i + 1))
        rows.append({"id": sid, "split": splits[i % len(splits)],
                     "input": f"{sid}_input.nii.gz", "target": f"{sid}_target.nii.gz"})
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"format": "petite-fl/site-manifest", "version": 1,
                                    "site": folder.name, "subjects": rows}))
    return manifest


@pytest.fixture
def small_site(tmp_path: Path) -> Path:
    return write_site(tmp_path / "site")


def small_spec(**changes) -> SynthSpec:
    """The tiny data config with two subjects per scanner (one train, one test)."""
    cfg = compose(overrides=["data=tiny", "data.synth.subjects=2",
                             "data.synth.splits={train:1,val:0,test:1}"])
    spec = SynthSpec.from_config(cfg.data.synth)
    return SynthSpec(**{**spec.__dict__, **changes})


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> tuple[Path, dict]:
    """All five scanners, two subjects each, generated once per test session."""
    out = tmp_path_factory.mktemp("synthetic") / "synthetic-small"
    info, made = generate(small_spec(), out, workers=2)
    assert made
    return out, info


@pytest.fixture(scope="session")
def federation_cache(tmp_path_factory) -> Path:
    """One cache (synthetic scanner4/5 data, pretrained tiny backbone) for the in-process federation
    tests of several modules; each of their runs has its own name, so none resumes another's."""
    return tmp_path_factory.mktemp("petite-fed")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A real Orthanc (DICOMweb and DIMSE, authentication on) for the session: tests/orthanc.py."""
    from orthanc import start_orthanc

    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()
