"""`petite compare` against a deployed coordinator (`--federation`), `--evaluate` and `--report`: every bad
input is one line before anything is generated, trained or submitted; a real coordinator with three
sites runs a comparison and its report is rebuilt from the folder (slow)."""

from __future__ import annotations

import pytest
import torch

from petite_fl.artifacts import save_adapter, save_backbone
from petite_fl.config import compose
from petite_fl.deploy.connection import write_connection
from petite_fl.deploy.ports import free_port
from petite_fl.experiments.compare_folder import Plan, save
from petite_fl.models.registry import build_backbone
from petite_fl.peft.apply import adapter_state_dict, apply_peft
from petite_fl.peft.spec import spec_from_config


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private PETITE_FL_HOME and FLWR_HOME with a `petite` connection to a port nobody listens on."""
    monkeypatch.setenv("PETITE_FL_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    write_connection(f"127.0.0.1:{free_port()}", None)
    return tmp_path


def refused(argv: list[str], capsys) -> str:
    from petite_fl.cli.main import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def nothing_made(home) -> bool:
    """No data, backbone, run or comparison folder was made."""
    return not (home / "cache").exists() or not any((home / "cache").iterdir())


def test_a_federation_no_connection_names_is_one_line(home, capsys):
    err = refused(["compare", "--federation", "hospitals", "--arms", "no-finetune,local"], capsys)
    assert "--federation hospitals: no such connection" in err and "known: petite" in err
    assert nothing_made(home)


def test_a_connection_without_an_address_is_a_simulation_not_a_deployment(home, capsys):
    (home / "flwr" / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\n'
                                               'options.num-supernodes = 10\n')
    err = refused(["compare", "--federation", "local"], capsys)
    assert "has no address (a local simulation" in err


def test_a_coordinator_that_does_not_answer_is_one_line_before_any_data(home, capsys):
    err = refused(["compare", "--federation", "petite", "--arms", "no-finetune,local"], capsys)
    assert "the coordinator at 127.0.0.1:" in err and "does not answer" in err and "petite-server" in err
    assert nothing_made(home)


@pytest.mark.parametrize("arms", ["local,pooled", "pooled"])
def test_a_pooled_arm_against_a_deployment_is_refused_before_anything_is_submitted(home, capsys, arms):
    err = refused(["compare", "--federation", "petite", "--arms", arms], capsys)
    assert "arm(s) pooled train on every site's scans in one place" in err and "--federation petite" in err
    assert nothing_made(home)


def test_a_registered_strategy_without_an_algorithm_counts_as_centralised():
    from petite_fl.federation.strategies import centralised

    assert centralised(compose(overrides=["strategy=pooled"]).strategy)
    assert centralised({"name": "pooled-ft", "algorithm": "pooled-ft"})  # by its label
    assert centralised({"name": "one-place", "algorithm": None})         # by its missing algorithm
    assert not any(centralised(compose(overrides=[f"strategy={s}"]).strategy)
                   for s in ("local", "fedavg", "fedavg-ft", "split-lora", "personalized"))


def test_report_refuses_a_folder_that_is_not_a_finished_comparison(home, tmp_path, capsys):
    err = refused(["compare", "--report", str(tmp_path / "nowhere")], capsys)
    assert "no such folder" in err
    (tmp_path / "empty").mkdir()
    err = refused(["compare", "--report", str(tmp_path / "empty")], capsys)
    assert "not a comparison folder (compare.json is missing" in err
    # a comparison that started and has no results yet
    save(tmp_path / "started", Plan(["no-finetune", "local"], [0], str(tmp_path / "b.safetensors"),
                                    ["--arms", "no-finetune,local"], "petite", run_id=7),
         compose(overrides=["federation.sites=[a,b]"]))
    err = refused(["compare", "--report", str(tmp_path / "started")], capsys)
    assert "no arm has results in" in err and "no-finetune: no results" in err
    assert not (tmp_path / "started" / "report.md").exists()
    err = refused(["compare", "--report", str(tmp_path / "started"), "--arms", "local"], capsys)
    assert "give no other option or override" in err


def _backbone_and_adapter(folder, seed: int):
    torch.manual_seed(seed)
    model = build_backbone("unetr", "tiny")
    meta = save_backbone(model, folder / f"backbone-{seed}.safetensors")
    state = apply_peft(model, spec_from_config(compose().peft, model))
    adapter = save_adapter(folder / f"adapter-{seed}.safetensors", adapter_state_dict(model, state),
                           state.spec.to_dict(), meta)
    return folder / f"backbone-{seed}.safetensors", adapter


def test_evaluate_refuses_a_missing_file_and_an_adapter_made_for_another_backbone(home, tmp_path, capsys):
    err = refused(["compare", "--evaluate", str(tmp_path / "missing.safetensors")], capsys)
    assert "no such adapter file" in err and "`backbone`" in err
    (tmp_path / "notes.safetensors").write_text("not an adapter")
    err = refused(["compare", "--evaluate", str(tmp_path / "notes.safetensors")], capsys)
    assert "not a readable adapter file" in err
    backbone_a, adapter_a = _backbone_and_adapter(tmp_path, 0)
    backbone_b, _ = _backbone_and_adapter(tmp_path, 1)
    err = refused(["compare", "--evaluate", str(adapter_a), f"backbone={backbone_b}"], capsys)
    assert "the adapter was made on backbone" in err and f"not on backbone={backbone_b}" in err
    (tmp_path / "moved").mkdir()
    moved = tmp_path / "moved" / "adapter.safetensors"  # no backbone given and none it names: which one?
    adapter_a.rename(moved)
    backbone_a.rename(tmp_path / "moved" / "backbone.safetensors")
    err = refused(["compare", "--evaluate", str(moved)], capsys)
    assert "give it with backbone=FILE" in err
    err = refused(["compare", "--evaluate", str(moved), "--arms", "local",
                   f"backbone={tmp_path / 'moved' / 'backbone.safetensors'}"], capsys)
    assert "--evaluate evaluates without training: give no --arms" in err
    assert nothing_made(home)


def test_evaluate_builds_one_zero_round_arm_whose_config_is_the_adapters_spec(home, tmp_path):
    from petite_fl.experiments.compare import prepare

    backbone, adapter = _backbone_and_adapter(tmp_path, 0)
    s = prepare([f"backbone={backbone}"], evaluate=str(adapter))
    assert s.arms == ["no-finetune", "adapter"] and s.command[:2] == ["--evaluate", str(adapter)]
    arm = s.arm_cfgs["adapter"]
    assert arm.federation.rounds == 0 and arm.strategy.name == "fedavg" and arm.adapter == str(adapter)
    assert (arm.peft.name, arm.peft.encoder, arm.peft.decoder, arm.peft.bitfit) == ("mix", "lora", "ssf", True)
    assert s.arm_cfgs["no-finetune"].get("adapter") is None
    assert prepare([f"backbone={backbone}"], evaluate="backbone").arms == ["no-finetune"]
