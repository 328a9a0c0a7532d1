"""The learning-curve experiment: its gate and convergence arithmetic, its settings, its code path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from petite_fl.config import compose
from petite_fl.errors import ConfigError
from petite_fl.experiments.learning_curve import compose_experiment, run
from petite_fl.experiments.learning_curve_report import markdown, summarise


def _records(gain: float, longer_gain: float, seeds: int = 3, subjects: int = 8) -> list[dict]:
    rng = np.random.default_rng(0)
    level = rng.normal(25.0, 1.0, subjects)  # subjects differ far more than the effects
    rows = [{"size": 0, "seed": 0, "steps": 0, "psnr_truth": float(v), "psnr_target": float(v)} for v in level]
    for size, shift in ((1, 0.5), (3, 1.0), (16, 1.0 + gain)):
        for steps, extra in ((10, 0.0), (20, longer_gain)):
            if steps == 20 and size != 16:
                continue
            for seed in range(seeds):
                for v in level + shift + extra + rng.normal(0, 0.03, subjects):
                    rows.append({"size": size, "seed": seed, "steps": steps, "psnr_truth": float(v),
                                 "psnr_target": float(v), "train_s": 1.0, "train_cpu_s": 1.0})
    return rows


def _cfg():
    return compose(overrides=["+learning_curve=default", "learning_curve.sizes=[1,3,16]", "learning_curve.steps=10",
                              "learning_curve.check.sizes=[16]"])


def test_the_gate_needs_the_gain_and_an_interval_above_zero():
    timings = {"total_s": 1.0, "data_s": 0.0, "pretrain_s": 0.0}
    passed = summarise(_records(gain=0.5, longer_gain=0.01), _cfg(), timings)
    assert passed["gate"]["passed"] and passed["gate"]["mean"] == pytest.approx(0.5, abs=0.05)
    assert passed["convergence"][0]["converged"]
    assert [r["size"] for r in passed["sizes"]] == [1, 3, 16]
    small = summarise(_records(gain=0.1, longer_gain=0.2), _cfg(), timings)
    assert not small["gate"]["passed"] and small["gate"]["low"] > 0  # detectable, but below 0.3 dB
    assert not small["convergence"][0]["converged"]


def test_the_table_gives_no_finetuning_against_the_target_and_says_when_convergence_was_not_checked():
    timings = {"total_s": 1.0, "data_s": 0.0, "pretrain_s": 0.0}
    records = _records(gain=0.5, longer_gain=0.01)
    records[0] = {**records[0], "psnr_target": records[0]["psnr_target"] - 8.0}  # target ≠ truth for one subject
    s = summarise(records, _cfg(), timings)
    base = [r for r in records if r["size"] == 0]
    assert s["no_finetune_psnr_target"] == pytest.approx(np.mean([r["psnr_target"] for r in base]))
    assert s["no_finetune_psnr_target"] < s["no_finetune_psnr_truth"] - 0.5
    assert f"| 0 (no fine-tuning) | {s['no_finetune_psnr_truth']:.2f} | – | {s['no_finetune_psnr_target']:.2f} |" \
        in markdown(s, _cfg())
    unchecked = compose(overrides=["+learning_curve=default", "learning_curve.sizes=[1,3,16]",
                                   "learning_curve.steps=10", "learning_curve.check.sizes=[]"])
    text = markdown(summarise(records, unchecked, timings), unchecked)
    assert "not checked" in text and "| training scans | steps → steps" not in text


def test_bad_experiment_settings_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"gate\.high=16 is not one of the sizes"):
        compose_experiment(["learning_curve.sizes=[1,3]"])
    with pytest.raises(ConfigError, match="source and target are both"):
        compose_experiment(["source=scanner5"])
    with pytest.raises(ConfigError, match=r"must lie in \[1, learning_curve.pool"):
        compose_experiment(["learning_curve.sizes=[1,3,16,32]"])
    with pytest.raises(ConfigError, match=r"check\.sizes \[5\] must be among the sizes"):
        compose_experiment(["learning_curve.check.sizes=[5]"])
    with pytest.raises(ConfigError, match=r"check\.factor=1\.0 must give another number of steps"):
        compose_experiment(["learning_curve.check.factor=1.0"])
    with pytest.raises(ConfigError, match=r"learning_curve\.peft=bogus is not an entry of the peft group"):
        compose_experiment(["learning_curve.peft=bogus"])
    with pytest.raises(ConfigError, match=r"learning_curve\.lr=-0\.1 must be a learning rate > 0"):
        compose_experiment(["learning_curve.lr=-0.1"])


def test_every_run_fine_tunes_the_chosen_method_at_the_experiments_learning_rate(tmp_path):
    """The method and its learning rate reach each run's own config; a null lr is the method's own."""
    from petite_fl.config import compose
    from petite_fl.experiments.learning_curve import run_overrides

    for extra, method, lr in (([], "petite", 0.1), (["learning_curve.peft=full", "learning_curve.lr=null"], "full",
                                                     float(compose(overrides=["peft=full"]).peft.lr))):
        cfg, base = compose_experiment(extra)
        assert cfg.learning_curve.lr == lr
        rcfg = compose(overrides=run_overrides(base, cfg.learning_curve, tmp_path / "b.safetensors",
                                               tmp_path / "manifest.json", 0, 7))
        assert rcfg.peft.name == method and rcfg.peft.lr == lr and rcfg.train.finetune.steps == 7


def test_the_data_set_has_the_pool_and_fixed_test_subjects():
    cfg, _ = compose_experiment([])
    from petite_fl.data.synthetic import SynthSpec

    spec = SynthSpec.from_config(cfg.data.synth)
    assert dict(spec.splits_for("scanner5")) == {"train": 16, "val": 0, "test": 8}
    assert dict(spec.splits_for("scanner1")) == {"train": 8, "val": 0, "test": 0}
    assert cfg.data.loader.scaling == "grey-matter" and cfg.train.eval.region == "head"


@pytest.mark.slow
def test_the_experiment_runs_end_to_end_on_the_tiny_config(tmp_path, monkeypatch):
    monkeypatch.setenv("PETITE_FL_HOME", str(tmp_path))
    summary, out = run(["learning_curve=tiny", "learning_curve.seeds=1"], quiet=True)
    rows = json.loads((out / "results.json").read_text())
    assert [r["size"] for r in rows["sizes"]] == [1, 2]
    assert rows["convergence"][0]["longer_steps"] == 4
    assert "Gate" in (out / "results.md").read_text()
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + 1 + 3  # header, no fine-tuning, three trained models × one test subject
    assert np.isfinite(summary["no_finetune_psnr_truth"])
    # scored against the truth by the comparison's own evaluation: a finite head-mask PSNR per model
    assert all(np.isfinite(r["psnr_truth"]) and np.isfinite(r["vs_no_finetune"]["mean"]) for r in rows["sizes"])
    # a second run reuses the data, the backbone and every adapter
    again, _ = run(["learning_curve=tiny", "learning_curve.seeds=1"], quiet=True)
    assert again["sizes"][0]["psnr_truth"] == pytest.approx(summary["sizes"][0]["psnr_truth"])
