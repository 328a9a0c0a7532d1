"""`petite infer --site`: a site's own federated adapter on new scans, end to end through the CLI.

Two real tiny federated runs (scanner4 + scanner5, in process) into a site root of this
module; then `petite infer` on scanner5's test scans must give back the run's own test
metrics, name what made each output by hash, and refuse what it cannot do in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_federation_run import NODES, federate, run_config
from test_monai_bundle import relative_diff, run_bundle

from petite_fl.adapters.infer import collect_inputs, nifti_stem
from petite_fl.artifacts import load_backbone, save_backbone
from petite_fl.cli.main import main
from petite_fl.data.manifest import read_manifest
from petite_fl.data.nifti import load_volume
from petite_fl.data.scalings import get_scaling
from petite_fl.data.synthetic import site_manifest
from petite_fl.metrics import compute_metrics, foreground_mask
from petite_fl.runconfig import compose_run

SITE = "scanner5"
#: run name → (run-config, Flower nodes); the second finishes last, so it is the site's latest
RUNS = {"infer-fedavg": ({"strategy": "fedavg"}, NODES),  # two rounds, both sites
        "infer-local": ({"strategy": "local", "federation.rounds": 1, "federation.sites": f"[{SITE}]"},
                        [{"partition-id": 0, "num-partitions": 1}])}


@pytest.fixture(scope="module")
def site_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("infer-sites")


@pytest.fixture(scope="module")
def runs(federation_cache, site_root) -> dict[str, dict]:
    out = {}
    for name, (extra, nodes) in RUNS.items():
        rc = run_config(federation_cache, **{**extra, "federation.run_name": name,
                                             "overrides": f"federation.val.patches=4 federation.site_root={site_root}"})
        out[name] = federate(rc, nodes)[0]
    return out


@pytest.fixture(scope="module")
def test_entries(federation_cache, runs):
    cfg = compose_run(run_config(federation_cache))
    return read_manifest(site_manifest(cfg.data, SITE)).split("test")


@pytest.fixture(scope="module")
def inferred(federation_cache, site_root, runs, test_entries, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """`petite infer --site` on the site's test scans, per --run: (output folder, what it printed)."""
    out = {}
    for run in ("latest", "infer-fedavg"):
        folder = tmp_path_factory.mktemp(f"infer-{run}")
        first, *rest = [e.input for e in test_entries]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # inputs before and after the options, as a user types them
            code = infer(first, "--site", SITE, "--run", run, *rest, "--out", folder,
                         *ov(federation_cache, site_root))
        assert code == 0
        out[run] = folder, printed.getvalue()
    return out


def ov(cache: Path, root: Path) -> list[str]:
    return [f"paths.cache={cache}", f"federation.site_root={root}"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def infer(*argv: str) -> int:
    return main(["infer", *map(str, argv)])


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return " ".join(lines[0].split())


@pytest.mark.parametrize("run", ["latest", "infer-fedavg"])
def test_infer_site_reproduces_the_runs_test_metrics_per_subject(runs, test_entries, inferred, run):
    expected_run = "infer-local" if run == "latest" else run
    folder, _ = inferred[run]
    reference = runs[expected_run]["sites"][SITE]["test_subjects"]  # by position in the test split
    assert len(reference) == len(test_entries) >= 1
    worst = 0.0
    for entry, ref in zip(test_entries, reference, strict=True):
        written = load_volume(folder / entry.input.name)
        sidecar = json.loads((folder / f"{entry.input.name.removesuffix('.nii.gz')}.json").read_text())
        scaling = get_scaling(sidecar["inference"]["scaling"])
        # infer wrote the prediction in the input's units: undo it with the input's own map
        source = load_volume(entry.input)
        to_network = scaling.of_input(source.data, source.zooms)
        pred = torch.as_tensor(to_network.apply(written.data))
        target_volume = load_volume(entry.target).data
        target = torch.as_tensor(scaling.of_target(target_volume, to_network).apply(target_volume))
        metrics = compute_metrics(pred, target, foreground_mask(target, 0.1))
        for key in ("psnr", "psnr_fg", "ssim", "nrmse"):
            assert metrics[key] == pytest.approx(ref[key], abs=1e-4), key
        worst = max(worst, abs(metrics["psnr"] - ref["psnr"]))
        assert sidecar["run"] == expected_run and sidecar["site"] == SITE and sidecar["input"] == entry.input.name
        np.testing.assert_array_equal(nib.load(folder / entry.input.name).affine, nib.load(entry.input).affine)
    print(f"largest PSNR difference to the run's own test ({expected_run}): {worst:.2e} dB")


def test_the_sidecar_names_the_adapter_and_backbone_by_their_hashes(site_root, runs, test_entries, inferred):
    scan = test_entries[0].input
    folder, printed = inferred["infer-fedavg"]
    summary = runs["infer-fedavg"]
    adapter = Path(summary["sites"][SITE]["adapter"])
    text = (folder / scan.name.replace(".nii.gz", ".json")).read_text()
    sidecar = json.loads(text)
    assert sidecar["adapter"] == {"file": f"{SITE}/runs/infer-fedavg/adapter.safetensors", "sha256": sha256(adapter)}
    assert sidecar["backbone"]["sha256"] == summary["backbone_sha256"]
    assert sidecar["strategy"] == "fedavg" and sidecar["peft"] == summary["peft"]
    assert sidecar["inference"]["patch"] == [32, 32, 16] and sidecar["inference"]["overlap"] == 0.0  # the run's
    assert sidecar["device"] == "cpu" and sidecar["mixed_precision"] is False and sidecar["seconds"] > 0
    assert str(site_root) not in text and str(scan.parent) not in text  # no absolute paths
    assert f"1/{len(test_entries)} {scan.name}" in printed and "infer-fedavg" in printed  # plain lines in a pipe


def test_a_folder_gives_its_nifti_files_in_name_order_each_once(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("b.nii.gz", "a.nii", "c.NII.GZ", "b.json", "notes.txt", ".nii"):
        (folder / name).write_bytes(b"")
    assert [p.name for p in collect_inputs([folder, folder / "a.nii"])] == ["a.nii", "b.nii.gz", "c.NII.GZ"]
    assert nifti_stem(folder / "c.NII.GZ") == "c" and nifti_stem(folder / "notes.txt") is None


def test_a_scan_in_another_orientation_comes_back_in_it_with_its_bids_units(federation_cache, site_root, runs,
                                                                           test_entries, inferred, tmp_path):
    img = nib.load(test_entries[0].input)
    folder = tmp_path / "scans"
    folder.mkdir()
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # the same scan stored left-right flipped (LAS), uncompressed
    flip[0, 3] = img.shape[0] - 1
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine @ flip), folder / "scan.nii")
    (folder / "scan.json").write_text(json.dumps({"Units": "Bq/mL", "TracerName": "FDG"}))
    (folder / "notes.txt").write_text("not a scan")
    out = tmp_path / "out"
    assert infer("--site", SITE, folder, "--out", out, "--site-root", site_root, "--device", "cpu",
                 f"paths.cache={federation_cache}") == 0
    assert sorted(p.name for p in out.iterdir()) == ["scan.json", "scan.nii"]
    flipped = nib.load(out / "scan.nii")
    plain = nib.load(inferred["latest"][0] / test_entries[0].input.name)  # the same adapter on the RAS file
    np.testing.assert_array_equal(flipped.affine, nib.load(folder / "scan.nii").affine)  # the input file's own
    assert nib.aff2axcodes(flipped.affine) == ("L", "A", "S") and flipped.get_data_dtype() == np.float32
    np.testing.assert_allclose(flipped.get_fdata()[::-1], plain.get_fdata(), rtol=1e-4, atol=1e-2)
    assert json.loads((out / "scan.json").read_text())["Units"] == "Bq/mL"
    stem = test_entries[0].input.name.removesuffix(".nii.gz")
    assert "Units" not in json.loads((inferred["latest"][0] / f"{stem}.json").read_text())  # its input has no sidecar


@pytest.fixture
def other_backbone(site_root, runs, tmp_path) -> Path:
    """A real backbone file that is not the one the adapters were trained on."""
    model, _ = load_backbone(next((site_root / SITE / "backbones").glob("*.safetensors")))
    with torch.no_grad():
        next(iter(model.parameters())).add_(0.01)
    path = tmp_path / "other.safetensors"
    save_backbone(model, path)
    return path


@pytest.fixture
def site_copy(site_root, runs, tmp_path) -> Path:
    """A copy of the site root whose backbone cache a test may break."""
    return Path(shutil.copytree(site_root, tmp_path / "copy"))


def test_a_backbone_other_than_the_adapters_is_refused_in_one_line(federation_cache, site_root, test_entries,
                                                                   other_backbone, tmp_path, capsys):
    code = infer("--site", SITE, test_entries[0].input, "--out", tmp_path / "out", "--backbone", other_backbone,
                 "--site-root", site_root, f"paths.cache={federation_cache}")
    assert code == 2 and "--backbone" in (line := error_line(capsys)) and "was trained on" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["missing", "another backbone", "corrupt"])
def test_a_missing_or_wrong_cache_entry_is_refused_in_one_line(federation_cache, site_copy, test_entries,
                                                               other_backbone, damage, tmp_path, capsys):
    entry = next((site_copy / SITE / "backbones").glob("*.safetensors"))
    if damage == "missing":
        entry.unlink()
    elif damage == "another backbone":
        shutil.copy(other_backbone, entry)
    else:
        data = bytearray(entry.read_bytes())
        data[-100] ^= 0xFF  # a flipped bit inside the last tensor
        entry.write_bytes(bytes(data))
    code = infer("--site", SITE, test_entries[0].input, "--out", tmp_path / "out", "--site-root", site_copy,
                 f"paths.cache={federation_cache}")
    line = error_line(capsys)
    assert code == 2 and {"missing": "is not in", "another backbone": "holds backbone",
                          "corrupt": "does not match its recorded SHA-256"}[damage] in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("site", "run", "says"), [
    ("scanner9", "latest", "site scanner9: no folder under the site root"),
    (SITE, "no-such-run", "no adapter of run 'no-such-run'"),
    ("scanner3", "latest", "holds no adapter"),
])
def test_an_unknown_site_or_run_or_a_site_without_adapter_is_one_line(federation_cache, site_copy, test_entries, site,
                                                                       run, says, tmp_path, capsys):
    (site_copy / "scanner3" / "runs").mkdir(parents=True)  # a site whose first run has not finished yet
    code = infer("--site", site, "--run", run, test_entries[0].input, "--out", tmp_path, "--site-root", site_copy,
                 f"paths.cache={federation_cache}")
    assert code == 2 and says in error_line(capsys)


def test_every_input_is_checked_before_anything_is_predicted(federation_cache, site_root, runs, test_entries,
                                                            tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a scan at all")
    out = tmp_path / "out"
    code = infer("--site", SITE, test_entries[0].input, bad, "--out", out, "--site-root", site_root,
                 f"paths.cache={federation_cache}")
    line = error_line(capsys)
    assert code == 2 and str(bad) in line and "NIfTI" in line
    assert not out.exists()  # the good first input was not predicted either


def test_outputs_that_would_overwrite_an_input_or_each_other_are_refused(federation_cache, site_root, runs,
                                                                        test_entries, tmp_path, capsys):
    scan = test_entries[0].input
    code = infer("--site", SITE, scan, "--out", scan.parent, "--site-root", site_root,
                 f"paths.cache={federation_cache}")
    assert code == 2 and "would overwrite input" in error_line(capsys)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(scan, tmp_path / "a" / "scan.nii.gz")
    shutil.copy(scan, tmp_path / "b" / "scan.nii.gz")
    code = infer("--site", SITE, tmp_path / "a", tmp_path / "b", "--out", tmp_path / "out", "--site-root", site_root,
                 f"paths.cache={federation_cache}")
    assert code == 2 and "would both write" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_usage_errors_are_one_line(federation_cache, site_root, runs, test_entries, tmp_path, capsys):
    scan = test_entries[0].input
    assert infer(scan, "--out", tmp_path, f"paths.cache={federation_cache}") == 2
    assert "needs --site" in error_line(capsys)
    assert infer("--site", SITE, scan, f"paths.cache={federation_cache}") == 2
    assert "--out DIR" in error_line(capsys)
    (tmp_path / "file").write_text("")
    assert infer("--site", SITE, scan, "--out", tmp_path / "file", "--site-root", site_root) == 2
    assert "a file, not a folder" in error_line(capsys)
    if not torch.cuda.is_available():
        assert infer("--site", SITE, scan, "--out", tmp_path, "--device", "cuda", "--site-root", site_root) == 2
        assert "--device cuda: CUDA is not available" in error_line(capsys)
    with pytest.raises(SystemExit) as exc:
        infer("--site", SITE, scan, "--out", tmp_path, "--bogus")
    assert exc.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_mixed_precision_is_the_same_path_with_autocast_on(federation_cache, site_root, runs, test_entries, inferred,
                                                           tmp_path):
    # What `--device cuda` runs (train.amp=auto turns it on with CUDA), here forced on the CPU: bfloat16 autocast
    entry = test_entries[0]
    assert infer("--site", SITE, entry.input, "--out", tmp_path, "--device", "cpu", "train.amp=true",
                 *ov(federation_cache, site_root)) == 0
    sidecar = json.loads((tmp_path / entry.input.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["mixed_precision"] is True and sidecar["device"] == "cpu"
    full = load_volume(inferred["latest"][0] / entry.input.name).data
    half = load_volume(tmp_path / entry.input.name).data
    assert not np.array_equal(full, half)  # autocast did run
    target = torch.as_tensor(full / full.max())
    psnr = compute_metrics(torch.as_tensor(half / full.max()), target)["psnr"]
    print(f"bfloat16 vs float32 prediction: PSNR {psnr:.1f} dB")
    assert psnr > 40


@pytest.mark.slow  # ~18 s: a fresh interpreter imports torch and MONAI to run the bundle
def test_a_monai_bundle_of_the_site_model_denoises_as_petite_infer_without_petite_fl(site_root, runs, test_entries,
                                                                                    inferred, tmp_path):
    """`petite adapters export --merged --format monai-bundle`, then `python -m monai.bundle run` in an
    interpreter where `import petite_fl` fails, on a folder of the site's test scans: the outputs are
    `petite infer --site`'s within 1e-5 of their range, with the same affine."""
    bundle = tmp_path / "bundle"
    assert main(["adapters", "export", "--site", SITE, "--merged", "--format", "monai-bundle", "--out", str(bundle),
                 "--site-root", str(site_root)]) == 0
    scans = tmp_path / "scans"
    scans.mkdir()
    for entry in test_entries:
        (scans / entry.input.name).symlink_to(entry.input)
    (tmp_path / "out").mkdir()
    done, seconds = run_bundle(bundle, scans, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    folder, _ = inferred["latest"]
    worst = max(relative_diff(folder / e.input.name, tmp_path / "out" / e.input.name) for e in test_entries)
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    print(f"monai.bundle run vs petite infer --site: max |diff| / range {worst:.2e} over {len(test_entries)} scan(s); "
          f"bundle {size / 1e6:.2f} MB, run {seconds:.1f} s")
    assert worst <= 1e-5
