"""A site's adapters: listing them, exporting a bundle, and a merged standalone model that
predicts what backbone + adapter predicts, for every PEFT method and Mix-PEFT the registry has."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_federation_run import federate, run_config

from petite_fl.adapters.export import export_merged, resolve
from petite_fl.adapters.merge import NOT_FOLDABLE, TOLERANCE, adapted
from petite_fl.artifacts import KEY, load_backbone, save_adapter, save_backbone, tensors_sha256
from petite_fl.cli.main import main
from petite_fl.errors import PetiteError
from petite_fl.models.registry import build_backbone
from petite_fl.peft.apply import adapter_state_dict, apply_peft
from petite_fl.peft.registry import available_methods
from petite_fl.peft.spec import PeftSpec, feasible_mixes, spec_from_config
from petite_fl.training.jobs import load_model

BACKBONES = ("unetr", "cvtgan")
#: names only PEFT code makes: a merged file must hold none
PEFT_MARKS = ("lora_", "base_layer", "ssf_", "bitfit_delta", "ln_tuning_layers", "vpt_prompts", "petite_adapter")


def _cases(name: str) -> list:
    """Every single method of the registry and PETITE (default suite), and every other feasible Mix-PEFT
    of a backbone (`-m slow`: 37 cases in all, ≈ 20 s together on an idle 2-core machine)."""
    model = build_backbone(name, "tiny")
    petite = spec_from_config({"name": "petite"}, model)
    cases = [pytest.param(name, m, spec_from_config({"name": m}, model), id=f"{name}-{m}") for m in available_methods()]
    cases.append(pytest.param(name, "petite", petite, id=f"{name}-petite"))
    cases += [pytest.param(name, s.label, s, id=f"{name}-{s.label}", marks=pytest.mark.slow)
              for s in feasible_mixes(model) if s != petite]
    return cases


CASES = [case for b in BACKBONES for case in _cases(b)]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    """Tiny backbones with every weight moved off its init (UNETR's tiny head starts at zero,
    which would hide every change upstream of it)."""
    folder = tmp_path_factory.mktemp("backbones")
    out = {}
    for name in BACKBONES:
        torch.manual_seed(1)
        model = build_backbone(name, "tiny")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        save_backbone(model, folder / f"{name}.safetensors", {"patch": [32, 32, 16]})
        out[name] = folder / f"{name}.safetensors"
    return out


def random_adapter(backbone: Path, spec: PeftSpec, path: Path, seed: int = 0) -> Path:
    """An adapter of `spec` whose every tensor is random (nothing neutral to fold away)."""
    model, meta = load_backbone(backbone)
    state = apply_peft(model, spec)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state.trainable:
                # LoRA's B·A is a product of two small tensors: larger draws give it a visible effect
                param.add_(torch.randn(param.shape, generator=gen) * (0.5 if "lora_" in name else 0.1))
    return save_adapter(path, adapter_state_dict(model, state), spec.to_dict(), meta,
                        extra={"card": {"site": "scanner5", "run": "unit", "peft": spec.label,
                                        "inference": {"patch": [32, 32, 16]}}})


def _volume(model: torch.nn.Module) -> torch.Tensor:
    m = model.size_multiple
    return torch.rand(1, 1, 2 * m, 2 * m, m, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(("backbone", "label", "spec"), CASES)
def test_a_merged_export_predicts_what_backbone_plus_adapter_predicts(backbones, tmp_path, backbone, label, spec):
    adapter = random_adapter(backbones[backbone], spec, tmp_path / "adapter.safetensors")
    source = resolve(tmp_path, adapter=adapter, backbone=backbones[backbone])
    unfoldable = [m for m in spec.methods() if m in NOT_FOLDABLE]
    if unfoldable:
        with pytest.raises(PetiteError, match=f"cannot fold PEFT method '{unfoldable[0]}'.*without --merged"):
            export_merged(source, tmp_path / "out")
        assert not (tmp_path / "out" / "model.safetensors").exists()
        return
    paths, merged = export_merged(source, tmp_path / "out")
    model, meta = load_backbone(tmp_path / "out" / "model.safetensors")  # no PEFT code involved
    names = list(load_file(paths[0]))
    assert not [n for n in names if any(mark in n for mark in PEFT_MARKS)]
    reference = adapted(backbones[backbone], adapter)[0]
    plain = load_backbone(backbones[backbone])[0].eval()
    x = _volume(model)
    with torch.no_grad():
        want, got, before = reference(x), model.eval()(x), plain(x)
    span = float(want.max() - want.min())
    assert float((want - got).abs().max()) <= TOLERANCE * span
    if spec.kind != "none":  # the adapter changes the output: the comparison above can fail
        assert float((want - before).abs().max()) > 10 * TOLERANCE * span
    assert meta["provenance"]["adapter_sha256"] and meta["provenance"]["patch"] == [32, 32, 16]
    assert meta.get("merge_slots", {}) == merged.slots
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model"] == backbone and config["provenance"]["source_backbone_sha256"] == source.backbone_meta[
        "sha256"]


def test_unetr_petite_needs_merge_slots_and_the_hash_covers_them(backbones, tmp_path):
    """UNETR's PETITE puts SSF after instance norms without affine parameters and folds a shift
    into bias-free transposed convolutions: the file names those slots, its hash covers the
    tensors that fill them, and a file whose slots were edited is refused in one line."""
    spec = spec_from_config({"name": "petite"}, build_backbone("unetr", "tiny"))
    adapter = random_adapter(backbones["unetr"], spec, tmp_path / "adapter.safetensors")
    export_merged(resolve(tmp_path, adapter=adapter, backbone=backbones["unetr"]), tmp_path / "out")
    path = tmp_path / "out" / "model.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()[KEY])
    tensors = load_file(path)
    assert len(meta["merge_slots"]["affine"]) > 0 and len(meta["merge_slots"]["bias"]) > 0
    assert all(f"{m}.weight" in tensors for m in meta["merge_slots"]["affine"])
    assert all(f"{m}.bias" in tensors for m in meta["merge_slots"]["bias"])
    assert tensors_sha256(tensors, meta["config"]) == meta["sha256"]
    meta["merge_slots"]["affine"] = meta["merge_slots"]["affine"][1:]
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata={KEY: json.dumps(meta)})
    with pytest.raises(PetiteError, match="do not fit a unetr of its config") as err:
        load_backbone(tmp_path / "edited.safetensors")
    assert "\n" not in str(err.value)


def test_an_adapter_is_refused_with_another_backbone(backbones, tmp_path):
    spec = spec_from_config({"name": "lora"}, build_backbone("unetr", "tiny"))
    adapter = random_adapter(backbones["unetr"], spec, tmp_path / "adapter.safetensors")
    with pytest.raises(PetiteError, match="adapter was trained on backbone"):
        resolve(tmp_path, adapter=adapter, backbone=backbones["cvtgan"])


# -- end to end: a real federated run, then the CLI ------------------------------------------

RUN = "adapters-e2e"


@pytest.fixture(scope="module")
def site_run(federation_cache) -> Path:
    """One fedavg run of PETITE (UNETR) at two sites, in process through the real apps."""
    federate(run_config(federation_cache, strategy="fedavg",
                        **{"federation.run_name": RUN, "federation.rounds": 1}))
    return federation_cache


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_shows_both_sites_adapters_with_their_card(site_run, capsys, monkeypatch):
    from petite_fl.console import console

    monkeypatch.setattr(console, "width", 220)  # other modules' runs in the same cache have longer names
    code, out, _ = _cli(capsys, "adapters", "list", f"paths.cache={site_run}")
    assert code == 0
    rows = [line.split() for line in out.splitlines() if RUN in line]
    assert sorted(r[0] for r in rows) == ["scanner4", "scanner5"]
    for row in rows:  # site run strategy spec round backbone valPSNR valSSIM testPSNR testSSIM scans date time
        assert row[1:5] == [RUN, "fedavg", "lora+ssf+bitfit", "1"]
        assert re.fullmatch(r"[0-9a-f]{12}", row[5])
        assert 5 < float(row[6]) < 60 and 0 < float(row[7]) <= 1
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", row[-2]) and re.fullmatch(r"\d\d:\d\d", row[-1])
    assert "val PSNR" in out and "val SSIM" in out


def test_list_json_and_one_site(site_run, capsys):
    code, out, _ = _cli(capsys, "adapters", "list", "--site", "scanner5", "--site-root", str(site_run / "sites"),
                        "--json")
    assert code == 0
    data = json.loads(out)
    mine = [a for a in data["adapters"] if a["run"] == RUN]
    assert [a["site"] for a in data["adapters"]] == ["scanner5"] * len(data["adapters"]) and len(mine) == 1
    entry = mine[0]
    assert re.fullmatch(r"[0-9a-f]{64}", entry["backbone_sha256"])
    assert entry["strategy"] == "fedavg" and entry["peft"] == "lora+ssf+bitfit" and entry["rounds"] == 1
    assert {"val_psnr", "val_ssim", "test_psnr", "test_ssim"} <= set(entry["metrics"])
    assert entry["training_scans"] >= 1 and entry["card"]["inference"]["patch"]


def test_list_names_an_unreadable_file_and_goes_on(site_run, tmp_path, capsys):
    root = tmp_path / "sites"
    good = site_run / "sites" / "scanner5" / "runs" / RUN / "adapter.safetensors"
    (root / "scanner5" / "runs" / RUN).mkdir(parents=True)
    (root / "scanner5" / "runs" / RUN / "adapter.safetensors").write_bytes(good.read_bytes())
    (root / "scanner5" / "runs" / "broken").mkdir(parents=True)
    (root / "scanner5" / "runs" / "broken" / "adapter.safetensors").write_bytes(b"not safetensors")
    (root / "scanner4" / "runs").mkdir(parents=True)
    code, out, _ = _cli(capsys, "adapters", "list", "--site-root", str(root))
    assert code == 0 and RUN in out and "unreadable adapter file (left out):" in out and "broken" in out
    code, out, _ = _cli(capsys, "adapters", "list", "--site-root", str(root), "--site", "scanner4")
    assert code == 0 and "site scanner4: no adapters" in out


def test_merged_export_of_a_site_adapter_predicts_as_backbone_plus_adapter(site_run, tmp_path, capsys):
    from petite_fl.data.nifti import load_volume
    from petite_fl.data.scalings import get_scaling
    from petite_fl.training.inference import predict_volume

    code, out, err = _cli(capsys, "adapters", "export", "--site", "scanner5", "--run", RUN, "--merged",
                          "--out", str(tmp_path / "merged"), f"paths.cache={site_run}")
    assert code == 0, err
    assert "checked against backbone + adapter" in out and "merge slots: 10 bias, 21 affine" in out
    card = json.loads((tmp_path / "merged" / "card.json").read_text())
    assert card["site"] == "scanner5" and card["run"] == RUN
    source = resolve(site_run / "sites", "scanner5", RUN)
    assert source.backbone.parent == site_run / "sites" / "scanner5" / "backbones"
    merged, _ = load_backbone(tmp_path / "merged" / "model.safetensors")
    reference, _, _ = load_model(source.backbone, source.adapter, torch.device("cpu"))
    scan = sorted(site_run.glob("data/*/scanner5/*_input.nii.gz"))[0]
    raw = load_volume(scan)
    volume = get_scaling(card["inference"]["scaling"]).of_input(raw.data, raw.zooms).apply(raw.data)
    roi = card["inference"]["patch"]
    want = predict_volume(reference, volume, roi, device=torch.device("cpu"), overlap=0.0)
    got = predict_volume(merged, volume, roi, device=torch.device("cpu"), overlap=0.0)
    assert np.abs(want - got).max() <= TOLERANCE * (want.max() - want.min())

    code, out, err = _cli(capsys, "adapters", "export", "--site", "scanner4", "--out", str(tmp_path / "bundle"),
                          "--site-root", str(site_run / "sites"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [
        "adapter.json", "adapter.safetensors", "backbone.safetensors", "card.json"]
    assert load_backbone(tmp_path / "bundle" / "backbone.safetensors")[1]["sha256"] == source.backbone_meta["sha256"]


def test_export_refuses_bad_input_in_one_line(site_run, backbones, tmp_path, capsys):
    cache = f"paths.cache={site_run}"
    code, _, err = _cli(capsys, "adapters", "export", "--site", "scanner9", "--out", str(tmp_path), cache)
    assert code == 2 and "site scanner9" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(capsys, "adapters", "export", "--site", "scanner5", "--run", "nope", "--out", str(tmp_path),
                        cache)
    assert code == 2 and "no adapter of run 'nope'" in err and RUN in " ".join(err.split())
    code, _, err = _cli(capsys, "adapters", "list", "--site", "scanner9", cache)
    assert code == 2 and "site scanner9: unknown here" in " ".join(err.split())
    site_backbone = resolve(site_run / "sites", "scanner5", RUN).backbone
    code, _, err = _cli(capsys, "adapters", "export", "--site", "scanner5", "--run", RUN, "--backbone",
                        str(backbones["unetr"]), "--out", str(tmp_path), cache)
    assert code == 2 and "adapter was trained on backbone" in " ".join(err.split())
    # a VPT adapter of the site's own backbone: exportable as a bundle, not merged
    vpt = random_adapter(site_backbone, spec_from_config({"name": "vpt"}, load_backbone(site_backbone)[0]),
                         tmp_path / "vpt.safetensors")
    code, _, err = _cli(capsys, "adapters", "export", "--adapter", str(vpt), "--merged", "--out",
                        str(tmp_path / "m"), "--site-root", str(site_run / "sites"))
    text = " ".join(err.split())
    assert code == 2 and "cannot fold PEFT method 'vpt'" in text and "export without --merged" in text
    assert len(err.strip().splitlines()) == 1
    code, _, err = _cli(capsys, "adapters", "export", "--adapter", str(vpt), "--out", str(tmp_path / "b"),
                        "--site-root", str(site_run / "sites"))
    assert code == 0, err
