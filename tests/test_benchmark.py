"""The benchmark command: its byte figures (exact, no training) and its report files."""

from __future__ import annotations

import json
from pathlib import Path

from petite_fl.experiments.benchmark import main


def test_comm_benchmark_covers_every_spec_at_paper_size_and_writes_json_and_markdown(tmp_path: Path, capsys):
    assert main(["--quick", "--only", "comm", "--no-quality", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["machine"]["cores"] >= 1 and report["command"].endswith("--no-quality --out " + str(tmp_path))
    comm = report["results"]["comm"]
    rows = comm["rows"]
    assert comm["mix_count"] == 21 and sum(r["petite"] for r in rows) == 2
    assert all(r["percent_of_backbone"] < 1.5 for r in rows if r["kind"] != "full")  # PETITE's sub-1 % regime
    full = [r for r in rows if r["kind"] == "full"]
    assert len(full) == 2 and all(r["percent_of_backbone"] > 99 for r in full)
    options = {(o["model"], o["option"]): o for o in comm["options"]}
    for model in ("unetr", "cvtgan"):
        assert 0.45 < options[model, "PETITE, bfloat16"]["saving_vs_float32"] < 0.5  # .npy headers stay
        assert abs(options[model, "LoRA + FFA-LoRA"]["saving_vs_float32"] - 0.5) < 0.01  # A's bytes gone
    md = (tmp_path / "benchmark.md").read_text()
    assert "lora+ssf+bitfit (PETITE)" in md and report["machine_label"] in md


def test_an_unknown_section_is_refused_by_name(tmp_path: Path, capsys):
    assert main(["--only", "comm,speed", "--out", str(tmp_path)]) != 0
    assert "unknown section(s) ['speed']" in capsys.readouterr().err


def test_train_speed_times_float32_and_mixed_precision_on_the_same_device():
    """The GPU check times both precisions: the train worker must take the setting, not always 'auto'."""
    from petite_fl.experiments.benchmark.training import train_speed

    fp32 = train_speed("unetr", "tiny", 16, 1, "petite", 0, 1, "cpu", False)  # one 16³ patch: the wiring, not speed
    mixed = train_speed("unetr", "tiny", 16, 1, "petite", 0, 1, "cpu", True)
    assert (fp32["amp"], fp32["amp_dtype"]) == (False, None)
    assert (mixed["amp"], mixed["amp_dtype"]) == (True, "bfloat16")  # CPU autocast, as the trainer's
    assert 0 < mixed["trainable_parameters"] < mixed["total_parameters"]
    assert mixed["trainable_percent"] == 100.0 * mixed["trainable_parameters"] / mixed["total_parameters"]


def test_the_site_section_times_rounds_through_the_endpoint_beside_bare_steps(tmp_path):
    """The wiring of `site`: every round answered by the site's endpoint, split into its phases, each
    set against the bare steps around it (tiny sizes: the wiring, not the speed)."""
    from petite_fl.experiments.benchmark.federated import untrained_backbone
    from petite_fl.experiments.benchmark.site_round import site_round_speed

    backbone = untrained_backbone(tmp_path, "unetr", "tiny")
    out = site_round_speed(str(tmp_path), str(backbone), "scanner5", 2, 1, [0, 1], [
        "data=tiny", "data.synth.scanners=[scanner5]", "data.synth.workers=1", "train.patch_scale=0.5",
        "data.loader.patches_per_volume=2", "federation.val.patches=2", "federation.local_steps=2",
        "train.device=cpu"])
    assert [r["round"] for r in out["rounds"]] == [1, 2] and out["batch"] == [2, 1, 32, 32, 16]
    for r in out["rounds"]:
        assert {"prepare", "validate", "data", "train"} <= set(r) and r["train"] < r["seconds"]
        assert r["round_ratio"] == r["seconds"] / (2 * r["bare_step_seconds"])
        assert r["train_ratio"] == (r["seconds"] - r["validate"]) / (2 * r["bare_step_seconds"])
    assert out["round_ratio"] == out["rounds"][1]["round_ratio"]  # rounds 2…: the first fills the caches
