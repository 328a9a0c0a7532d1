"""The real `flwr run` simulation engine: a private SuperLink, two tiny sites, one round.

Slowest part of the suite (Ray start-up and Flower's polling): one SuperLink serves both
runs, and it is stopped at the end whatever happens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from learning_checks import assert_learned

from petite_fl.errors import PetiteError
from petite_fl.experiments.flower_run import LocalSimulation
from petite_fl.runconfig import app_defaults, submitted

TINY = ["data=tiny", "data.synth.scanners=[scanner4,scanner5]", "data.synth.workers=1", "source=scanner4",
        "train.pretrain.steps=4", "train.patch_scale=0.5", "train.batch_size=1",
        "data.loader.patches_per_volume=2", "train.eval.overlap=0",
        "federation.val.patches=2", "federation.sites=[scanner4,scanner5]", "federation.rounds=1",
        "federation.local_steps=2", "federation.wait_for_sites=30"]
#: one round of FedAvg that learns measurably: at the default 1e-3, two steps move the validation PSNR by ~0.001 dB
LEARNING = ["strategy=fedavg", "peft.lr=0.1"]


def test_pyproject_declares_the_flower_app_and_its_defaults_compose():
    from petite_fl.runconfig import compose_run

    defaults = app_defaults()
    cfg = compose_run(defaults)
    assert cfg.strategy.name == defaults["strategy"] and cfg.model.preset == "tiny"
    assert cfg.federation.rounds == defaults["federation.rounds"] and cfg.backbone is None


def test_flwr_run_completes_and_a_failed_run_is_reported_as_failed(tmp_path):
    lines: list[str] = []
    with LocalSimulation(home=tmp_path / "flwr", echo=lines.append) as sim:
        overrides = [f"paths.cache={tmp_path / 'cache'}", *TINY]
        result = sim.run(submitted([*overrides, *LEARNING]), num_supernodes=2)
        assert result.status == "finished:completed"
        runs = list((tmp_path / "cache" / "runs" / "federated").iterdir())
        summary = json.loads((runs[0] / "summary.json").read_text())
        assert sorted(summary["sites"]) == ["scanner4", "scanner5"]
        assert all(Path(s["adapter"]).is_file() and s["test"]["psnr"] > 10 for s in summary["sites"].values())
        assert all(s["backbone_bytes"] > 0 for s in summary["sites"].values())
        assert_learned(summary, ["scanner4", "scanner5"])  # validation PSNR rose over round 0's
        # A run whose ServerApp fails must not look like a success (`--stream` exits 0).
        with pytest.raises(PetiteError, match="failed"):
            sim.run(submitted([*overrides, "federation.local_steps=0"]), num_supernodes=2)
        process = sim.process
    assert process.poll() is not None  # the private SuperLink is gone
    assert any("site scanner5" in line for line in lines)
    # petite-fl's lines, every site's (Ray's deduplication off), no colour codes, no Ray FutureWarning
    assert any("site scanner4 · round" in line for line in lines)
    assert not [line for line in lines if "\x1b[" in line or "FutureWarning" in line or "repeated" in line]


@pytest.mark.parametrize("argv, message", [
    (["simulate", "strategy=fedsgd"], "strategy"),
    (["compare", "--arms", "local,bogus"], "unknown arm"),
    (["compare", "compare.seeds=0"], "compare.seeds must be a whole number ≥ 1"),
    (["compare", "data.synth.sizes.scanner5.test=1"],
     "site scanner5 has 1 test subject(s) (data.synth.sizes.scanner5)"),
    (["compare", "--arms", "local,fedavg-ft", "federation.rounds=1"], "fedavg-ft needs at least one FedAvg round"),
    (["compare", "--arms", "local,pooled-ft", "federation.rounds=1"],
     "pooled-ft needs at least one centralised round before its 1 local round(s)"),
    (["simulate", "strategy=pooled-ft"], "strategy=pooled-ft trains on every site's scans in one place"),
    (["simulate", "federation.sites=[]"], "federation.sites is empty"),
])
def test_bad_simulation_settings_fail_before_flower_starts(argv, message, capsys, tmp_path, monkeypatch):
    from petite_fl.cli.main import main

    monkeypatch.setenv("PETITE_FL_HOME", str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
