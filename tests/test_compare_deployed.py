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


@pytest.mark.parametrize("arms, named", [("local,pooled", "pooled"), ("pooled", "pooled"),
                                         ("local,pooled-ft", "pooled-ft")])
def test_a_pooled_arm_against_a_deployment_is_refused_before_anything_is_submitted(home, capsys, arms, named):
    err = refused(["compare", "--federation", "petite", "--arms", arms], capsys)
    assert f"arm(s) {named} train on every site's scans in one place" in err and "--federation petite" in err
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


@pytest.mark.slow  # a one-round run, then two zero-round arms: 238 s on a shared 2-core machine
def test_a_given_adapter_evaluated_at_every_site_reproduces_the_metrics_of_the_site_that_made_it(
        federation_cache, tmp_path):
    """--evaluate's arm through the real apps in process: scanner5's own adapter of a local run, evaluated at
    both sites with zero rounds, scores exactly what scanner5 reported for it; at scanner4 it is another
    model than scanner4's own; the bare backbone arm beside it."""
    import json
    import shlex

    from flower_grid import InProcessGrid
    from flwr.app import Context, RecordDict
    from test_federation_run import NODES, federate, run_config

    from petite_fl.experiments.compare_evaluate import evaluation
    from petite_fl.federation.flower.app import client_app
    from petite_fl.federation.flower.server import serve
    from petite_fl.federation.server.arms import arm_dir
    from petite_fl.runconfig import compose_run

    rc = run_config(federation_cache, strategy="local", **{"federation.run_name": "given-source",
                                                           "federation.rounds": 1})
    source, _ = federate(rc)
    given = evaluation(compose_run(rc), source["sites"]["scanner5"]["adapter"])
    extra = [*given.overrides, "federation.run_name=null", f"compare.run=[{','.join(given.arms)}]",
             f"compare.dir={tmp_path}"]
    rc_eval = {**rc, "overrides": f"{rc['overrides']} {shlex.join(extra)}"}
    serve(InProcessGrid(client_app, rc_eval, NODES),
          Context(run_id=2, node_id=0, node_config={}, state=RecordDict(), run_config=rc_eval))
    evaluated = json.loads((arm_dir(tmp_path, "adapter", 0) / "summary.json").read_text())
    assert evaluated["rounds"] == 0 and evaluated["given_adapter"]["path"] == source["sites"]["scanner5"]["adapter"]
    assert "evaluated at every site without training" in evaluated["describe"]

    def psnr(summary, site):
        return [r["psnr_fg"] for r in summary["sites"][site]["test_subjects"]]

    assert psnr(evaluated, "scanner5") == pytest.approx(psnr(source, "scanner5"), abs=1e-6)
    assert psnr(evaluated, "scanner4") != pytest.approx(psnr(source, "scanner4"), abs=1e-6)
    bare = json.loads((arm_dir(tmp_path, "no-finetune", 0) / "summary.json").read_text())
    assert bare["peft"] == "none" and sorted(bare["sites"]) == ["scanner4", "scanner5"]


# -- a real deployment: petite-server (nginx, TLS, site keys) and three petite-client sites on 127.0.0.1 ----------

THREE = "[scanner3,scanner4,scanner5]"
#: the sites' synthetic data and the comparison's sizing: 1 round of 2 steps, 2 test subjects per site
DATA = ["data=tiny", f"data.synth.scanners={THREE}", "data.synth.workers=1", "data.synth.subjects=4",
        "data.synth.splits={train:1,val:1,test:2}"]
SIZING = ["source=scanner4", "train.pretrain.steps=4", "train.patch_scale=0.5", "train.batch_size=1",
          "data.loader.patches_per_volume=2", "train.eval.overlap=0", "federation.val.patches=2",
          f"federation.sites={THREE}", "federation.rounds=1", "federation.local_steps=2",
          "federation.wait_for_sites=120", "federation.timeout=600"]


def _processes(folder):
    import os

    from deployment_kit import Processes

    from petite_fl.deploy.processes import BIN

    return Processes(folder, {**os.environ, "FLWR_HOME": str(folder / "flwr"), "PETITE_FL_HOME": str(folder / "cache"),
                              "FLWR_DISABLE_UPDATE_CHECK": "1",
                              "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})


def _coordinator_with_three_sites(folder, procs) -> None:
    """petite-server certs / keygen / petite-server / register / petite-client, as test_deployment does."""
    import time

    from deployment_kit import Link

    from petite_fl.data.sites import resolve_site
    from petite_fl.deploy.processes import BIN

    link = Link(folder, procs)
    # the sites' data, made once here (three sites starting together would each make it)
    resolve_site(compose(overrides=[*DATA, f"paths.cache={link.cache}"]), "scanner3")
    assert procs.run([str(BIN / "petite-server"), "certs", "--out", str(folder / "tls")], 60).returncode == 0
    for site in ("scanner3", "scanner4", "scanner5"):
        keys = procs.run([str(BIN / "petite-client"), "keygen", "--site", site, "--out", str(folder / "keys")], 60)
        assert keys.returncode == 0, keys.stderr
    link.start_server()
    deadline = time.monotonic() + 120
    for site in ("scanner3", "scanner4", "scanner5"):
        while True:
            reg = procs.run([str(BIN / "petite-server"), "register", "--site", site,
                             "--key", str(folder / "keys" / f"{site}.key.pub")], 60)
            if reg.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert reg.returncode == 0, reg.stdout + reg.stderr + procs.log("server0")
        link.clients[site] = procs.start(site, [str(BIN / "petite-client"), "--site", str(link.yaml(site)),
                                                "-o", f"paths.cache={link.cache}",
                                                *[a for o in DATA for a in ("-o", o)]])


@pytest.mark.slow
def test_a_comparison_at_a_deployed_coordinator_with_three_sites_and_its_report_rebuilt(tmp_path):
    """`petite compare --federation petite --arms no-finetune,local` against a real petite-server and three
    real sites: the report is written at the coordinator with each site's paired differences (from the
    per-subject metrics the sites returned), without slices; `--report DIR` rebuilds it from the folder."""
    import csv
    import json
    import os
    import shutil
    import sys
    import time

    from test_deployment import _nginx_installed

    if not _nginx_installed() and not os.environ.get("CI"):  # CI installs nginx: there it never skips
        pytest.skip("nginx is not installed")
    procs = _processes(tmp_path)
    try:
        _coordinator_with_three_sites(tmp_path, procs)
        out = tmp_path / "compare"
        begin = time.monotonic()
        done = procs.run([sys.executable, "-m", "petite_fl.cli.main", "compare", "--federation", "petite",
                          "--arms", "no-finetune,local", "--out", str(out), *DATA, *SIZING], 1500)
        seconds = time.monotonic() - begin
        print(done.stdout[-6000:], done.stderr[-3000:], f"\n[petite compare --federation: {seconds:.0f} s]")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + procs.log("server0")[-3000:]
        assert "submitted as run" in done.stdout and "local/seed-0 done" in done.stdout
        plan = json.loads((out / "compare.json").read_text())
        assert plan["federation"] == "petite" and plan["run_id"] and plan["arms"] == ["no-finetune", "local"]
        md = (out / "report.md").read_text()
        assert "Deployed federation `petite`" in md and "scanner3 2, scanner4 2, scanner5 2" in md
        assert "## Δ head-mask PSNR vs truth (dB) vs no-finetune" in md and not list(out.glob("slices_*.png"))
        with open(out / "differences.csv", newline="") as fh:
            diffs = list(csv.DictReader(fh))
        per_site = {r["site"]: r for r in diffs if (r["arm"], r["baseline"], r["metric"]) ==
                    ("local", "no-finetune", "psnr_fg")}
        assert set(per_site) == {"scanner3", "scanner4", "scanner5", "fixed", "random"}  # + the two poolings
        assert all(r["subjects"] == "2" for s, r in per_site.items() if s not in ("fixed", "random"))
        assert per_site["fixed"]["subjects"] == per_site["random"]["subjects"] == "6"
        for line in md.splitlines():
            if line.startswith(("Command:", "Deployed", "| local", "| no-finetune")):
                print(line)

        shutil.copy(out / "differences.csv", tmp_path / "differences.before.csv")
        for name in ("report.md", "differences.csv", "results.csv"):
            (out / name).unlink()
        rebuilt = procs.run([sys.executable, "-m", "petite_fl.cli.main", "compare", "--report", str(out)], 300)
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        assert (out / "differences.csv").read_text() == (tmp_path / "differences.before.csv").read_text()
        assert "Deployed federation `petite`" in (out / "report.md").read_text()
    finally:
        procs.stop()


def test_the_coordinator_refuses_a_given_adapter_a_site_would_not_evaluate_as_it_is(tmp_path):
    """federation.server.given: the adapter's spec must be the run's, all of it shared, its tensors those the
    spec trains, its backbone this one, and the run must not train; each refusal one line naming the file."""
    from petite_fl.artifacts import load_backbone
    from petite_fl.errors import PetiteError
    from petite_fl.federation.server.given import given_adapter

    backbone, adapter = _backbone_and_adapter(tmp_path, 0)
    _, for_another = _backbone_and_adapter(tmp_path, 1)  # an adapter made on another backbone
    model, meta = load_backbone(backbone)
    state = apply_peft(model, spec_from_config(compose().peft, model))
    names = state.names
    got = given_adapter(adapter, meta, state.spec, names, 0)
    assert sorted(got) == sorted(names)
    with pytest.raises(PetiteError, match=r"federation\.rounds=0"):
        given_adapter(adapter, meta, state.spec, names, 2)
    with pytest.raises(PetiteError, match="adapter was trained on backbone"):
        given_adapter(for_another, meta, state.spec, names, 0)
    lora = spec_from_config(compose(overrides=["peft=lora"]).peft, model)
    with pytest.raises(PetiteError, match=r"its PEFT spec \(lora\+ssf\+bitfit.*is not the run's peft \(lora"):
        given_adapter(adapter, meta, lora, names, 0)
    encoder_only = [n for n in names if "encoder" in n] or names[:1]
    with pytest.raises(PetiteError, match="evaluate it with strategy=fedavg"):
        given_adapter(adapter, meta, state.spec, encoder_only, 0)
    shared_only = save_adapter(tmp_path / "global-adapter.safetensors", dict(got), state.spec.to_dict(), meta,
                               extra={"run": "r1", "shared_only": True})
    with pytest.raises(PetiteError, match="holds only the shared tensors of run r1"):
        given_adapter(shared_only, meta, state.spec, names, 0)
