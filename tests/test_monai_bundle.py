"""`petite adapters export --merged --format monai-bundle`: a MONAI bundle of a site model, for every
backbone of the registry, whose network and scripts need no petite-fl, and that `python -m monai.bundle
run` executes (here with `import petite_fl` made to fail) to what `petite infer` writes.

The end-to-end check on a federated site's own adapter is in tests/test_infer_site.py (its runs).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import smooth_volume

from petite_fl.adapters.catalog import file_sha256
from petite_fl.adapters.merge import NOT_FOLDABLE, TOLERANCE, adapted
from petite_fl.adapters.monai_bundle import MODEL, SCRIPTS
from petite_fl.artifacts import load_backbone, save_adapter, save_backbone
from petite_fl.cli.main import main
from petite_fl.data.nifti import load_volume
from petite_fl.data.scalings import available_scalings, get_scaling
from petite_fl.models.registry import available_backbones, build_backbone
from petite_fl.peft.apply import adapter_state_dict, apply_peft
from petite_fl.peft.spec import spec_from_config
from petite_fl.training.inference import head_region
from petite_fl.training.jobs import load_model, predict_file

PATCH = [32, 32, 16]
#: MONAI's meta_schema_20240725 requires these (verify_metadata downloads the schema, so it is checked offline
#: only by hand: see the README)
SCHEMA_REQUIRED = ("schema", "version", "monai_version", "pytorch_version", "numpy_version",
                   "required_packages_version", "task", "description", "authors", "copyright", "network_data_format")
#: `python -m monai.bundle ARGS` in a fresh interpreter (-I: no PYTHONPATH, no current folder) where
#: `import petite_fl` fails: the editable install would otherwise find the checkout
RUNNER = """import sys, runpy
sys.modules['petite_fl'] = None
try:
    import petite_fl
except ImportError:
    pass
else:
    raise SystemExit('petite_fl importable')
sys.argv[0] = 'monai.bundle'
runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)
"""


def run_bundle(bundle: Path, scan: Path, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m monai.bundle run` on the bundle, without petite-fl; (the process, its seconds)."""
    cmd = [sys.executable, "-I", "-c", RUNNER, "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
           "--input", str(scan), "--output_dir", str(out)]
    begin = time.perf_counter()
    done = subprocess.run(cmd, cwd=out.parent, capture_output=True, text=True, timeout=600)
    return done, time.perf_counter() - begin


def relative_diff(want: Path, got: Path) -> float:
    """max |got − want| / (max − min of want), on the arrays as stored; the affines must be the same."""
    a, b = nib.load(want), nib.load(got)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)
    x, y = a.get_fdata(dtype=np.float32), b.get_fdata(dtype=np.float32)
    assert x.shape == y.shape
    return float(np.abs(x - y).max() / (x.max() - x.min()))


def settings(**changes) -> dict:
    return {"patch": PATCH, "scaling": "grey-matter", "overlap": 0.25, "sw_batch_size": 3, "region": "full",
            **changes}


def site_adapter(backbone: Path, method: str, path: Path, inference: dict | None) -> Path:
    """An adapter of `method` whose every tensor is random, with a card (inference settings unless None)."""
    model, meta = load_backbone(backbone)
    spec = spec_from_config({"name": method}, model)
    state = apply_peft(model, spec)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state.trainable:
                param.add_(torch.randn(param.shape, generator=gen) * (0.5 if "lora_" in name else 0.1))
    card = {"site": "scanner5", "run": "unit", "strategy": "local", "peft": spec.label, "rounds": 1,
            "training_scans": 1, "metrics": {"test_psnr": 30.0}, **({"inference": inference} if inference else {})}
    return save_adapter(path, adapter_state_dict(model, state), spec.to_dict(), meta, extra={"card": card})


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    """Every registered backbone, tiny, its weights moved off their init."""
    folder = tmp_path_factory.mktemp("backbones")
    out = {}
    for name in available_backbones():
        torch.manual_seed(1)
        model = build_backbone(name, "tiny")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        out[name] = folder / f"{name}.safetensors"
        save_backbone(model, out[name], {"patch": PATCH})
    return out


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    """A small volume whose file is neither RAS+ nor isotropic (the bundle must orient and scale as petite-fl)."""
    path = tmp_path_factory.mktemp("scan") / "scan.nii.gz"
    affine = np.array([[0, 0, -2.0, 50], [-2.5, 0, 0, 10], [0, 2.2, 0, -5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(smooth_volume(3, (40, 36, 30)), affine), path)
    return path


def export(backbones: dict[str, Path], tmp: Path, backbone: str, inference: dict | None = None,
           method: str = "lora") -> tuple[int, str, str, Path]:
    """`petite adapters export --merged --format monai-bundle` of a random adapter: (code, out, err, adapter)."""
    adapter = site_adapter(backbones[backbone], method, tmp / "adapter.safetensors", inference)
    return *cli("adapters", "export", "--adapter", str(adapter), "--backbone", str(backbones[backbone]), "--merged",
                "--format", "monai-bundle", "--out", str(tmp / "bundle"), "--site-root", str(tmp)), adapter


def cli(*argv: str) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_the_bundle_scripts_compute_petite_fls_scaling_and_head_region_without_importing_it(scan):
    sys.path.insert(0, str(SCRIPTS.parent))
    try:
        from bundle_scripts import petite_pet
    finally:
        sys.path.remove(str(SCRIPTS.parent))
    for file in SCRIPTS.glob("*.py"):
        tree = ast.parse(file.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert imported <= {"__future__", "collections", "typing", "numpy", "scipy", "torch", "monai"}, file
    assert set(petite_pet.SCALINGS) == set(available_scalings())
    volume = load_volume(scan)
    for data in (volume.data, smooth_volume(5, (30, 26, 20)) - 3.0):  # a file's volume; one with negative air
        for zooms in (volume.zooms, (1.0, 1.5, 3.0)):
            for name in available_scalings():
                want = get_scaling(name).of_input(data, zooms)
                assert petite_pet.input_map(name, data, zooms) == (want.offset, want.scale), name
        got = np.asarray(petite_pet.maximum_filter(petite_pet.head_mask(petite_pet.smoothed(data)),
                                                   size=2 * petite_pet.HEAD_MARGIN + 1))
        np.testing.assert_array_equal(got, head_region(data))


@pytest.mark.parametrize("backbone", available_backbones())
def test_a_bundle_holds_the_merged_network_as_a_torch_export_program_and_the_cards_fields(backbones, tmp_path,
                                                                                         backbone):
    code, out, err, adapter = export(backbones, tmp_path, backbone, settings())
    assert code == 0, err
    assert "MONAI bundle of" in out and "exported vs merged" in out
    bundle = tmp_path / "bundle"
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()) == [
        "configs/inference.json", "configs/logging.conf", "configs/metadata.json", "docs/README.md", MODEL,
        "scripts/__init__.py", "scripts/petite_pet.py"]
    network = torch.export.load(bundle / MODEL).module()  # a program: no petite-fl class is needed to run it
    reference = adapted(backbones[backbone], adapter)[0]
    x = torch.rand(3, 1, *PATCH, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got, before = reference(x), network(x), load_backbone(backbones[backbone])[0].eval()(x)
    span = float(want.max() - want.min())
    assert float((want - got).abs().max()) <= TOLERANCE * span
    assert float((want - before).abs().max()) > 10 * TOLERANCE * span  # the adapter is in it
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert all(meta.get(k) for k in SCHEMA_REQUIRED)
    assert meta["monai_version"] == __import__("monai").__version__ and meta["eval_metrics"] == {"test_psnr": 30.0}
    assert "scanner5" in meta["authors"] and "1 training scan" in meta["limitations"] and meta["intended_use"]
    p = meta["petite_fl"]
    assert p["adapter_sha256"] == file_sha256(adapter) and p["model_pt2_sha256"] == file_sha256(bundle / MODEL)
    assert p["backbone_sha256"] == load_backbone(backbones[backbone])[1]["sha256"] and p["backbone_model"] == backbone
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == PATCH
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert {k: config[k] for k in settings()} == settings()


@pytest.mark.slow  # ≈ 15-20 s each on an idle 2-core machine; UNETR with region full runs in test_infer_site
@pytest.mark.parametrize(("backbone", "changes"), [
    ("cvtgan", {}), ("unetr", {"region": "head"}), ("cvtgan", {"region": "head", "scaling": "minmax"})])
def test_monai_bundle_run_predicts_what_petite_infer_predicts(backbones, scan, tmp_path, backbone, changes):
    card = settings(**changes)
    code, _, err, adapter = export(backbones, tmp_path, backbone, card)
    assert code == 0, err
    model = load_model(backbones[backbone], adapter, torch.device("cpu"))[0]
    want = predict_file(model, scan, tmp_path / "infer" / scan.name, card, device=torch.device("cpu"), amp=False)
    (tmp_path / "out").mkdir()
    done, seconds = run_bundle(tmp_path / "bundle", scan, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    diff = relative_diff(want, tmp_path / "out" / scan.name)
    print(f"{backbone} {changes}: monai.bundle run vs petite infer, max |diff| / range {diff:.2e} ({seconds:.1f} s)")
    assert diff <= 1e-5


@pytest.mark.parametrize("method", sorted(NOT_FOLDABLE))
def test_a_bundle_of_an_adapter_that_cannot_fold_is_refused_in_one_line(backbones, tmp_path, method):
    code, _, err, _ = export(backbones, tmp_path, "unetr", settings(), method)
    line = " ".join(err.split())
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"--format monai-bundle needs the adapter folded into the backbone, and PEFT method '{method}'" in line
    assert not (tmp_path / "bundle").exists()


def test_other_bad_exports_are_one_line(backbones, tmp_path):
    code, _, err, _ = export(backbones, tmp_path, "unetr", {"patch": PATCH})  # a card from before the settings
    assert code == 2 and "card's inference settings lack scaling, overlap, sw_batch_size" in " ".join(err.split())
    assert not (tmp_path / "bundle").exists()
    code, _, err, _ = export(backbones, tmp_path, "unetr", settings(scaling="percentile"))
    assert code == 2 and "inference.scaling 'percentile' is not one the bundle's scripts/petite_pet.py" in " ".join(
        err.split())
    code, _, err = cli("adapters", "export", "--adapter", str(tmp_path / "adapter.safetensors"), "--format",
                       "monai-bundle", "--out", str(tmp_path / "b"), "--site-root", str(tmp_path))
    assert code == 2 and "--format monai-bundle needs --merged" in err and len(err.strip().splitlines()) == 1
