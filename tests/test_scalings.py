"""The scaling registry: every entry's maps, the default's one input-only factor, unknown names
refused in one line before any work, and predictions written back in the input's units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from petite_fl.config import compose
from petite_fl.data.nifti import load_volume
from petite_fl.data.scalings import SCALINGS, Intensity, available_scalings, get_scaling
from petite_fl.data.scalings.grey_matter import grey_matter_level
from petite_fl.data.site import load_site
from petite_fl.data.synthetic import synthesize_subject
from petite_fl.errors import ConfigError
from petite_fl.models.registry import build_backbone
from petite_fl.scanners import get_scanner
from petite_fl.training.jobs import predict_file
from petite_fl.training.settings import check_settings
from tests.conftest import small_spec, smooth_volume, write_nifti, write_site

SCANNER = get_scanner("scanner5")
MM = SCANNER.voxel_mm


@pytest.fixture(scope="module")
def scan():
    return synthesize_subject(SCANNER, 0, small_spec())


def test_the_registry_lists_the_default_first_and_the_papers():
    assert available_scalings()[:3] == ["grey-matter", "minmax", "none"]
    assert all(SCALINGS.get(name).summary for name in available_scalings())


@pytest.mark.parametrize("name", available_scalings())
def test_every_scaling_maps_the_input_from_the_input_alone_and_back(name, scan):
    scaling = get_scaling(name)
    x_map = scaling.of_input(scan.input, MM)
    assert isinstance(x_map, Intensity) and x_map.scale > 0
    scaled = x_map.apply(scan.input)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(x_map.invert(scaled), scan.input, rtol=1e-5, atol=1e-5 * float(scan.input.max()))
    # the target's map may not change the input's: nothing but the input is known at inference
    assert scaling.of_input(scan.input, MM) == x_map


def test_minmax_puts_each_volume_on_its_own_unit_range(scan):
    scaling = get_scaling("minmax")
    x_map = scaling.of_input(scan.input, MM)
    y = scaling.of_target(scan.target, x_map).apply(scan.target)
    x = x_map.apply(scan.input)
    assert x.min() == 0 and x.max() == pytest.approx(1) and y.min() == 0 and y.max() == pytest.approx(1)
    assert scaling.of_target(scan.target, x_map) != x_map  # the paper's k between them


def test_none_keeps_the_stored_values(scan):
    scaling = get_scaling("none")
    x_map = scaling.of_input(scan.input, MM)
    assert x_map == Intensity(0.0, 1.0) and scaling.of_target(scan.target, x_map) == x_map
    assert np.array_equal(x_map.apply(scan.input), scan.input.astype(np.float32))


def test_grey_matter_divides_input_and_target_by_one_factor_from_the_input(scan):
    scaling = get_scaling("grey-matter")
    x_map = scaling.of_input(scan.input, MM)
    assert x_map == Intensity(0.0, grey_matter_level(scan.input, MM))
    assert scaling.of_target(scan.target, x_map) is x_map
    assert scaling.of_target(3.0 * scan.target, x_map) is x_map  # the target has no say in it
    # the factor follows the input's units: a scan in other units is the same to the network
    np.testing.assert_allclose(scaling.of_input(1000.0 * scan.input, MM).apply(1000.0 * scan.input),
                               x_map.apply(scan.input), rtol=1e-4, atol=1e-6)
    # and puts the image's grey matter (noise-free voxels above half the uptake) near 1, not the noisiest voxel
    assert 0.75 < float(np.median(scan.noise_free[scan.noise_free > 0.5])) / x_map.scale < 1.25
    assert x_map.apply(scan.input).max() > 1.5


def test_a_site_loads_input_and_target_with_the_same_factor(tmp_path: Path):
    site = load_site(write_site(tmp_path / "site"), scaling="grey-matter")
    for (_, x, y), pair in zip(site.arrays("train"), site.pairs["train"], strict=True):
        factor = grey_matter_level(pair.input.data, pair.input.zooms)
        np.testing.assert_allclose(x * factor, pair.input.data, rtol=1e-5)
        np.testing.assert_allclose(y * factor, pair.target.data, rtol=1e-5)


def test_an_unknown_scaling_is_one_line_naming_the_key_and_the_registered_names(tmp_path: Path):
    for call in (lambda: get_scaling("zscore"), lambda: load_site(write_site(tmp_path / "s"), scaling="zscore"),
                 lambda: check_settings(compose(overrides=["data.loader.scaling=zscore"]))):
        with pytest.raises(ConfigError) as info:
            call()
        text = str(info.value)
        assert text == "data.loader.scaling: unknown scaling 'zscore' (known: grey-matter, minmax, none)"


@pytest.mark.parametrize("name", available_scalings())
def test_predict_file_writes_the_prediction_in_the_inputs_units(name, tmp_path: Path):
    # A fresh tiny UNETR is the identity (global residual, zero output layer): the written
    # file must then be the input itself, whatever the scaling did on the way.
    model = build_backbone("unetr", "tiny").eval()
    source = write_nifti(tmp_path / "in.nii.gz", smooth_volume(3, (32, 32, 32)))
    settings = {"patch": [32, 32, 32], "scaling": name, "overlap": 0.0, "sw_batch_size": 1}
    out = predict_file(model, source, tmp_path / "out.nii.gz", settings, device=torch.device("cpu"), amp=False)
    want = load_volume(source).data
    np.testing.assert_allclose(load_volume(out).data, want, rtol=1e-4, atol=1e-4 * float(want.max()))


@pytest.mark.parametrize("name", ["grey-matter", "minmax"])
def test_a_scan_in_other_units_comes_back_in_those_units(name, tmp_path: Path):
    torch.manual_seed(0)
    model = build_backbone("unetr", "tiny").eval()
    with torch.no_grad():  # a network that changes its input
        model.unetr.out.conv.conv.weight.normal_(0.0, 0.05)
    volume = smooth_volume(5, (32, 32, 32))
    settings = {"patch": [32, 32, 32], "scaling": name, "overlap": 0.0, "sw_batch_size": 1}
    preds = []
    for units in (1.0, 37.0):
        source = write_nifti(tmp_path / f"in-{units:g}.nii.gz", (units * volume).astype(np.float32))
        out = predict_file(model, source, tmp_path / f"out-{units:g}.nii.gz", settings, device=torch.device("cpu"),
                           amp=False)
        preds.append(load_volume(out).data)
    assert not np.allclose(preds[0], volume, rtol=1e-2)  # the network did something
    np.testing.assert_allclose(preds[1], 37.0 * preds[0], rtol=1e-4, atol=1e-4 * float(preds[1].max()))


def test_a_card_naming_an_unknown_scaling_is_refused_before_predicting(tmp_path: Path):
    source = write_nifti(tmp_path / "in.nii.gz", smooth_volume(3, (32, 32, 32)))
    settings = {"patch": [32, 32, 32], "scaling": "zscore", "overlap": 0.0, "sw_batch_size": 1}
    with pytest.raises(ConfigError, match=r"^the adapter card's inference.scaling: unknown scaling 'zscore' "):
        predict_file(build_backbone("unetr", "tiny"), source, tmp_path / "o.nii.gz", settings,
                     device=torch.device("cpu"), amp=False)
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize("command", [["finetune"], ["compare", "--arms", "local"], ["simulate"]])
@pytest.mark.parametrize("override, message", [
    ("data.loader.scaling=zscore", "data.loader.scaling: unknown scaling 'zscore' (known: grey-matter, minmax, none)"),
    ("train.warmup=1.5", "train.warmup must be a fraction in [0, 1) of a run's steps, got 1.5"),
])
def test_a_command_refuses_a_bad_scaling_or_warm_up_in_one_line_before_any_work(command, override, message,
                                                                              tmp_path: Path, capsys):
    from petite_fl.cli.main import main

    assert main([*command, f"paths.cache={tmp_path}", override]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in " ".join(lines[0].split()) and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # no data generated, no backbone pretrained
