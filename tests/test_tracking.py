"""Experiment tracking, read back with TensorBoard's own event reader and MLflow's own client.

Real jobs on the tiny presets: a fine-tuning job (and the pretraining it needs) and two-round
federated runs through the real apps in process (tests/test_federation_run.py's helpers).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_federation_run import SITES, federate, run_config
from tracking_readers import config_text, curve, events, history, mlflow_runs, tracked_files

from petite_fl.artifacts import load_adapter
from petite_fl.config import compose
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.site.paths import run_folder, site_dir
from petite_fl.runconfig import site_config, site_sections
from petite_fl.tracking import available_trackers, open_tracker, tracker_name
from petite_fl.training.jobs import default_backbone_path, finetune

TAGS = {"job": "finetune", "run": "r", "site": "s"}


# -- the registry -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", available_trackers())
def test_every_tracker_has_its_config_file_and_records_what_a_job_gives_it(name, tmp_path):
    cfg = compose(overrides=[f"tracking={name}"])
    assert tracker_name(cfg.tracking) == name
    with open_tracker(cfg.tracking, tmp_path, "job", TAGS) as tracker:
        tracker.config({"peft": {"name": "lora", "args": [1, 2]}, "out": None})
        for step in (1, 2, 3):
            tracker.scalars({"train/loss": 1.0 / step, "skipped": None, "also": "text"}, step)
        tracker.final({"loss": 0.25})
    if name == "none":
        assert not list(tmp_path.iterdir())
    elif name == "tensorboard":
        acc = events(tmp_path / "tensorboard")
        assert curve(acc, "train/loss") == pytest.approx({1: 1.0, 2: 0.5, 3: 1 / 3})
        assert curve(acc, "final/loss") == {3: 0.25} and "skipped" not in acc.Tags()["scalars"]
        assert "name: lora" in config_text(acc) and "job: finetune" in config_text(acc)
    else:
        client, runs = mlflow_runs(tmp_path / "mlflow")
        assert len(runs) == 1 and runs[0].data.params["peft.name"] == "lora"
        assert runs[0].data.tags["petite.job"] == "finetune" and runs[0].info.status == "FINISHED"
        assert history(client, runs[0], "train/loss") == pytest.approx({1: 1.0, 2: 0.5, 3: 1 / 3})
        assert history(client, runs[0], "final/loss") == {3: 0.25}


def test_mlflow_takes_a_manifest_path_site_marks_a_failed_job_and_never_records_credentials(tmp_path):
    """A site named by its manifest path makes `val_psnr//data/…`, which MLflow refuses as a name; a job
    that raises is FAILED, not FINISHED; a tracking server's user and password reach no tracker."""
    uri = "http://alice:s3cret@mlflow.example:5000/"
    with pytest.raises(RuntimeError), open_tracker({"name": "mlflow"}, tmp_path, "job", TAGS) as tracker:
        tracker.config({"tracking": {"name": "mlflow", "uri": uri}, "seed": 0})
        tracker.scalars({"val_psnr//data/site-a/manifest.json": 30.0, "val_psnr/../x": 1.0}, 1)
        raise RuntimeError("the job failed")
    client, runs = mlflow_runs(tmp_path / "mlflow")
    assert runs[0].info.status == "FAILED"
    assert history(client, runs[0], "val_psnr/data/site-a/manifest.json") == {1: 30.0}
    assert runs[0].data.params["tracking.uri"] == "http://mlflow.example:5000/"
    config = client.download_artifacts(runs[0].info.run_id, "config.yaml", str(tmp_path))
    assert "s3cret" not in Path(config).read_text()
    with open_tracker({"name": "tensorboard"}, tmp_path, "job", TAGS) as tracker:
        tracker.config({"tracking": {"name": "tensorboard", "uri": uri}})
    assert "s3cret" not in config_text(events(tmp_path / "tensorboard"))


def test_an_unreachable_mlflow_store_is_one_line_and_a_store_failing_mid_job_costs_only_the_curves(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(PetiteError, match=r"^tracking=mlflow: cannot open the MLflow store sqlite:///.*; fix "):
        open_tracker({"name": "mlflow", "uri": f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"}, tmp_path, "job",
                     TAGS)
    with open_tracker({"name": "mlflow"}, tmp_path, "job", TAGS) as tracker:
        tracker.scalars({"loss": 1.0}, 1)
        (tmp_path / "mlflow" / "mlflow.db").write_bytes(b"not a database")  # the store breaks mid-job
        tracker.scalars({"loss": 0.5}, 2)
        tracker.scalars({"loss": 0.25}, 3)  # nothing more is tried, nothing raises
    out = capsys.readouterr().out
    assert out.count("tracking=mlflow: writing to sqlite:///") == 1 and "the job goes on" in out


def test_an_unknown_tracker_is_one_line_naming_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown tracker 'wandb' \(known: tensorboard, mlflow, none\)"):
        open_tracker({"name": "wandb"}, tmp_path, "job", TAGS)


def test_a_long_param_value_is_cut_to_mlflows_limit_and_a_second_start_continues_the_same_run(tmp_path):
    for start in (1, 2):
        with open_tracker({"name": "mlflow"}, tmp_path, "job", TAGS) as tracker:
            tracker.config({"note": "x" * 7000, "start": start})
            tracker.scalars({"loss": float(start)}, start)
    client, runs = mlflow_runs(tmp_path / "mlflow")
    assert len(runs) == 1 and len(runs[0].data.params["note"]) == 6000
    assert runs[0].data.params["start"] == "1"  # the first start's settings stay
    assert history(client, runs[0], "loss") == {1: 1.0, 2: 2.0}
    assert not Path("mlruns").exists() and not Path("mlartifacts").exists()  # nothing in the working directory


# -- pretrain and fine-tune ------------------------------------------------------------------------


def job_overrides(cache: Path, *extra: str) -> list[str]:
    return [f"paths.cache={cache}", "data=tiny", "data.synth.scanners=[scanner4,scanner5]", "data.synth.workers=1",
            "source=scanner4", "target=scanner5", "train=tiny", "train.pretrain.steps=4", "train.patch_scale=0.5",
            "train.finetune.steps=3", "train.batch_size=1", "data.loader.patches_per_volume=2", "peft=lora", *extra]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jobs")
    cfg = compose(overrides=job_overrides(cache))
    adapter, meta = finetune(cfg, quiet=True)
    return cache, cfg, adapter, meta


def test_pretraining_and_fine_tuning_write_their_loss_per_step_config_and_final_metrics(finetuned):
    cache, cfg, adapter, meta = finetuned
    pre = events(cache / "runs" / "pretrain" / default_backbone_path(cfg).stem / "tensorboard")
    assert sorted(curve(pre, "train/loss")) == [1, 2, 3, 4] and sorted(curve(pre, "train/lr")) == [1, 2, 3, 4]
    assert curve(pre, "final/steps") == {4: 4.0}
    acc = events(adapter.parent / "tensorboard")
    assert sorted(curve(acc, "train/loss")) == [1, 2, 3]
    assert curve(acc, "final/loss")[3] == pytest.approx(meta["final_loss"])
    assert curve(acc, "final/trainable_percent")[3] == pytest.approx(meta["trainable_percent"])
    assert "target: scanner5" in config_text(acc) and "run: " + adapter.parent.name in config_text(acc)


def test_a_fine_tuning_job_with_mlflow_is_one_run_with_its_config_artifact(finetuned, tmp_path):
    cache = finetuned[0]
    out = tmp_path / "ft"
    adapter, _ = finetune(compose(overrides=job_overrides(cache, "tracking=mlflow", f"out={out}")), quiet=True)
    assert not (out / "mlflow").exists()  # the machine's one store, where `mlflow ui` compares jobs
    client, runs = mlflow_runs(cache / "mlflow", run="ft")
    assert len(runs) == 1 and runs[0].data.tags["petite.job"] == "finetune"
    assert sorted(history(client, runs[0], "train/loss")) == [1, 2, 3]
    assert history(client, runs[0], "final/loss")[3] == pytest.approx(load_adapter(adapter)[1]["final_loss"])
    config = client.download_artifacts(runs[0].info.run_id, "config.yaml", str(tmp_path))
    assert OmegaConf.load(config).target == "scanner5"
    assert not (out / "tensorboard").exists()


# -- a federated run (its TensorBoard curves: tests/test_federation_run.py, on the runs made there) ---------


def test_a_federated_run_with_tracking_none_writes_nothing(federation_cache):
    rc = run_config(federation_cache, strategy="fedavg", **{"federation.rounds": 1, "overrides": (
        "federation.val.patches=4 tracking=none federation.run_name=track-none")})
    summary, _ = federate(rc)
    assert (Path(summary["run_dir"]) / "metrics.csv").is_file() and not tracked_files(Path(summary["run_dir"]))
    for site in SITES:
        assert not tracked_files(run_folder(federation_cache / "sites", site, "track-none"))


def test_a_federated_run_with_mlflow_is_one_run_that_a_resumed_start_continues(federation_cache):
    for rounds in (1, 2):  # the second start resumes after round 1
        rc = run_config(federation_cache, strategy="fedavg", **{"federation.rounds": rounds, "overrides": (
            "federation.val.patches=4 tracking=mlflow federation.run_name=track-mlflow")})
        summary, _ = federate(rc)
    run_dir = Path(summary["run_dir"])
    assert not (run_dir / "mlflow").exists()
    client, found = mlflow_runs(federation_cache / "mlflow", run="track-mlflow")
    assert len(found) == 1 and found[0].data.tags["petite.job"] == "federated"
    assert sorted(history(client, found[0], f"train_loss/{SITES[0]}")) == [1, 2]
    assert client.list_artifacts(found[0].info.run_id)[0].path == "config.yaml"
    for site in SITES:  # simulated sites follow the run's choice, each in its own store
        client, found = mlflow_runs(site_dir(federation_cache / "sites", site) / "mlflow", run="track-mlflow")
        assert len(found) == 1 and found[0].data.tags["petite.site"] == site
        assert found[0].data.tags["petite.job"] == "site"
        assert sorted(history(client, found[0], "train_loss")) == [1, 2]


# -- whose choice the tracking of a site is ------------------------------------------------------------


def test_a_simulated_partition_follows_the_run_and_a_deployed_site_its_own_node_config():
    sections = site_sections(compose(overrides=["tracking=mlflow", "tracking.uri=http://user:token@mlflow.example/"]))
    assert "token" not in json.dumps(sections)  # a tracking server's address (and credentials) stays home
    simulated = site_config(sections, {"partition-id": 0, "num-partitions": 2}).tracking
    assert simulated.name == "mlflow" and "uri" not in simulated  # the run's tracker, the site's own local store
    assert OmegaConf.to_container(site_config(sections, {"site": "a", "site-root": "/x"}).tracking) == {
        "name": "tensorboard"}
    node = {"site": "a", "site-root": "/x", "tracking": '{"name": "mlflow", "uri": null}'}
    own = site_config(sections, node).tracking
    assert own.name == "mlflow" and own.uri is None
