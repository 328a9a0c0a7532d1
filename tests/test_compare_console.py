"""What `petite compare` says on the console beside its report: the demonstration line, the upload share
labelled for its network's size, and what each phase took."""

from __future__ import annotations

import json
from types import SimpleNamespace

from petite_fl.config import compose
from petite_fl.experiments.compare import DEMONSTRATION, compare_config, compare_overrides, phase_line
from petite_fl.experiments.compare_markdown import upload_line
from petite_fl.federation.server.arms import arm_dir, arm_overrides


def test_the_default_preset_is_a_demonstration_and_the_study_a_measurement_on_head_windows():
    default = compare_config(compare_overrides([]))
    study = compare_config(compare_overrides(["compare=study"]))
    assert default.compare.demonstration and not study.compare.demonstration
    assert "compare=study" in DEMONSTRATION
    assert study.train.eval.region == "head" and default.train.eval.region == "full"


def test_the_study_trains_peft_at_its_own_rate_and_full_fine_tuning_keeps_its_own():
    """The study sets PETITE's rate for every arm; an added local-full arm must not inherit it (0.1 on every
    weight of the backbone is not full fine-tuning's rate)."""
    overrides = compare_overrides(["compare=study"])
    study = compare_config(overrides)
    rates = {arm: float(compare_config([*overrides, *arm_overrides(study, arm)]).peft.lr)
             for arm in ("local", "fedavg-ft", "local-full")}
    assert rates["local"] == rates["fedavg-ft"] == 0.1
    assert rates["local-full"] == float(compose(overrides=["peft=full"]).peft.lr) == 1e-4


def test_the_upload_share_names_the_demonstration_size_beside_the_paper_size():
    cfg = compare_config(compare_overrides([]))
    payload = {"unetr-tiny": {"fedavg": {"percent": 1.851}}, "unetr-paper": {"fedavg": {"percent": 0.2328}}}
    line = upload_line(cfg, payload)
    assert "1.85 % of unetr-tiny, this run's: a demonstration size" in line
    assert "0.23 % of unetr-paper, the paper's network" in line


def test_the_phase_line_gives_each_phase_and_each_federated_arms_share_of_the_flower_run(tmp_path):
    for arm, seconds in (("local", 30.0), ("fedavg", 45.0)):
        folder = arm_dir(tmp_path, arm, 0)
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"phase_seconds": {"rounds": seconds, "hello": 1.0}}))
    s = SimpleNamespace(federated=["local", "fedavg"], seeds=[0])
    line = phase_line({"data": 2.0, "backbone": 3.0, "Flower run": 90.0, "report": 4.0}, tmp_path, s, 101.0)
    assert line == ("time: data 2 s · backbone 3 s · Flower run 90 s (local 31 s, fedavg 46 s) · report 4 s · "
                    "total 101 s")
