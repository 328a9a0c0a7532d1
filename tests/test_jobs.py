"""Single-site jobs end to end on the tiny presets: pretrain, fine-tune, evaluate, infer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from petite_fl.artifacts import load_adapter, load_backbone
from petite_fl.cli.main import main
from petite_fl.config import compose
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.training.device import resolve_device
from petite_fl.training.inference import RATIO_METRICS, TRUTH_METRICS
from petite_fl.training.jobs import evaluate, finetune, infer_file, pretrain


def _overrides(cache: Path, *extra: str) -> list[str]:
    return [f"paths.cache={cache}", "data=tiny", "data.synth.scanners=[scanner4,scanner5]", "data.synth.workers=1",
            "source=scanner4", "target=scanner5", "train=tiny", "train.pretrain.steps=4", "train.patch_scale=0.5",
            "train.finetune.steps=3", "train.checkpoint_every=2", "train.batch_size=1",
            "data.loader.patches_per_volume=2", *extra]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("petite-home")


@pytest.fixture(scope="module")
def backbone(cache) -> tuple[Path, dict]:
    return pretrain(compose(overrides=_overrides(cache)), quiet=True)


@pytest.fixture(scope="module")
def adapter(cache, backbone) -> tuple[Path, dict]:
    return finetune(compose(overrides=_overrides(cache, "peft=petite")), quiet=True)


def test_pretrain_writes_a_verified_backbone_file_and_reuses_it(cache, backbone):
    path, meta = backbone
    assert path.is_file() and meta["model"] == "unetr" and len(meta["sha256"]) == 64
    assert meta["provenance"]["source"] == "scanner4" and meta["provenance"]["steps"] == 4
    mtime = path.stat().st_mtime_ns
    again, _ = pretrain(compose(overrides=_overrides(cache)), quiet=True)
    assert again == path and path.stat().st_mtime_ns == mtime
    assert not path.with_suffix(".ckpt").exists()


def test_a_corrupted_backbone_file_is_refused(backbone, tmp_path):
    data = bytearray(backbone[0].read_bytes())
    data[-100] ^= 0xFF  # flip bits inside the last tensor
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(PetiteError, match="SHA-256"):
        load_backbone(bad)


def test_finetune_writes_only_the_trained_tensors_with_their_spec(adapter, backbone):
    path, meta = adapter
    tensors = load_file(str(path))
    spec = json.loads(path.with_suffix(".json").read_text())
    assert spec["peft"]["encoder"] == "lora" and spec["peft"]["decoder"] == "ssf" and spec["peft"]["bitfit"]
    assert spec["backbone_sha256"] == backbone[1]["sha256"]
    assert sum(t.numel() for t in tensors.values()) == meta["parameters"] == meta["trainable_parameters"]
    assert all(("lora_" in k) or ("ssf_" in k) or ("bitfit_delta" in k) for k in tensors)
    assert meta["patch"] == [32, 32, 16]  # scanner 5's 64×64×32 at train.patch_scale 0.5


def test_evaluate_reports_each_subject_and_mean_std(cache, backbone, adapter, tmp_path):
    cfg = compose(overrides=_overrides(cache))
    rows, summary = evaluate(cfg, "scanner5", backbone[0], adapter[0], out=tmp_path, quiet=True)
    assert [r["subject"] for r in rows] == ["sub-003"]  # tiny: one test subject
    # a synthetic site has its truth and region labels: the metrics against them come too
    assert set(summary["metrics"]) == {"psnr", "ssim", "nrmse", "psnr_fg", "ssim_fg", "nrmse_fg",
                                       *TRUTH_METRICS, *RATIO_METRICS}
    assert (tmp_path / "metrics.csv").read_text().startswith("subject,psnr,ssim,nrmse")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["subjects"] == 1 and saved["per_subject"][0]["subject"] == "sub-003"


def test_infer_keeps_the_input_affine_and_orientation(cache, backbone, adapter, tmp_path):
    cfg = compose(overrides=_overrides(cache))
    source = cache / "data" / "synthetic-tiny" / "scanner5" / "sub-003_input.nii.gz"
    img = nib.load(source)
    out = infer_file(cfg, source, tmp_path / "pred.nii.gz", backbone[0], adapter[0])
    pred = nib.load(out)
    assert pred.shape == img.shape and np.allclose(pred.affine, img.affine)
    # The same image stored flipped left-right (LAS): the prediction comes back flipped too.
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = img.shape[0] - 1
    las = nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine @ flip)
    nib.save(las, tmp_path / "las.nii.gz")
    pred_las = nib.load(infer_file(cfg, tmp_path / "las.nii.gz", tmp_path / "pred_las.nii.gz", backbone[0], adapter[0]))
    assert nib.aff2axcodes(pred_las.affine) == ("L", "A", "S")
    np.testing.assert_allclose(pred_las.get_fdata()[::-1], pred.get_fdata(), rtol=1e-4, atol=1e-2)


def test_an_adapter_for_another_backbone_is_refused(cache, adapter, tmp_path, capsys):
    other, other_meta = pretrain(compose(overrides=_overrides(cache, "seed=1")), out=tmp_path / "other.safetensors",
                                 quiet=True)
    with pytest.raises(PetiteError, match="adapter was trained on backbone"):
        load_adapter(adapter[0], other_meta)
    source = cache / "data" / "synthetic-tiny" / "scanner5" / "sub-003_input.nii.gz"
    code = main(["infer", "-i", str(source), "-o", str(tmp_path / "x.nii.gz"), "--backbone", str(other),
                 "--adapter", str(adapter[0]), *_overrides(cache)])
    err = capsys.readouterr().err
    assert code == 2 and "adapter was trained on backbone" in " ".join(err.split()) and "Traceback" not in err


def test_cvtgan_trains_with_its_adversarial_loss(cache):
    overrides = _overrides(cache, "model=cvtgan", "peft=petite", "train.pretrain.steps=2", "train.finetune.steps=2")
    path, meta = pretrain(compose(overrides=overrides), quiet=True)
    assert meta["model"] == "cvtgan" and path.with_suffix(".disc.pt").is_file()
    adapter_path, adapter_meta = finetune(compose(overrides=overrides), quiet=True)
    assert adapter_meta["peft"]["encoder"] == "vpt" and adapter_path.is_file()


def test_cuda_requested_on_a_machine_without_it_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


def test_evaluate_of_a_simulated_site_writes_its_truth_metrics_to_csv_and_json(cache, backbone, adapter, tmp_path):
    from tests.test_site_truth import add_truth

    shutil.copytree(cache / "data" / "synthetic-tiny" / "scanner5", tmp_path / "site")
    manifest = add_truth(tmp_path / "site" / "manifest.json")
    rows, summary = evaluate(compose(overrides=_overrides(cache)), str(manifest), backbone[0], adapter[0],
                             out=tmp_path / "out", quiet=True)
    keys = {*TRUTH_METRICS, *RATIO_METRICS}
    assert keys <= set(summary["metrics"]) and keys <= set(rows[0])
    header = (tmp_path / "out" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert keys <= set(header)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["per_subject"][0]["truth_psnr_fg"] == pytest.approx(rows[0]["truth_psnr_fg"])
    assert saved["metrics"]["ratio_abs_err"]["mean"] == pytest.approx(abs(rows[0]["ratio_bias"]))
