"""The learning-rate schedule: warm-up over a fraction of the whole budget, then cosine; a federated
site's rounds are slices of one run's schedule; a bad fraction is one line before any step."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from petite_fl.config import compose
from petite_fl.errors import ConfigError
from petite_fl.federation.server.checks import honest_update_bound
from petite_fl.federation.server.coordinator import Coordinator
from petite_fl.models.registry import build_backbone
from petite_fl.training.objectives import Supervised
from petite_fl.training.schedule import Schedule, warmup_fraction
from petite_fl.training.settings import check_settings
from petite_fl.training.trainer import ADAMW_BETAS, train
from tests.test_trainer import _data


@pytest.mark.parametrize("fraction, total, steps", [(0.1, 160, 16), (0.1, 16, 2), (0.25, 36, 9), (0.0, 36, 0),
                                                    (0.1, 4, 1), (0.5, 1, 1)])
def test_the_warm_up_is_the_fraction_of_the_budget(fraction, total, steps):
    s = Schedule(fraction, total)
    assert s.warmup_steps == steps
    factors = s.factors(0, total)
    if steps:
        assert factors[steps - 1] == 1.0 and factors[0] == pytest.approx(1 / steps)  # the peak rate is reached
        assert all(a < b for a, b in pairwise(factors[:steps]))
    else:
        assert factors[0] == 1.0
    assert all(a >= b for a, b in pairwise(factors[steps:]))  # then only down
    if total > steps:
        assert s.factor(total) == pytest.approx(0.0)  # the cosine ends at the budget's end
    assert s.describe() == {"warmup_fraction": fraction, "warmup_steps": steps, "total_steps": total,
                            "decay": "cosine to 0 over the remaining steps"}


def test_a_sixteen_step_budget_reaches_the_peak_rate():
    # the fixed 20-step warm-up never did: its 16th step was at 0.8 of the peak
    assert max(Schedule.from_config(compose().train, 16).factors(0, 16)) == 1.0


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, "a lot", True])
def test_a_warm_up_outside_zero_to_one_is_one_line(value):
    with pytest.raises(ConfigError) as info:
        warmup_fraction({"warmup": value})
    assert str(info.value) == f"train.warmup must be a fraction in [0, 1) of a run's steps, got {value!r}"


def test_a_bad_fraction_is_refused_before_any_training_step():
    cfg = compose(overrides=["train=tiny", "train.warmup=1.0"])
    with pytest.raises(ConfigError, match=r"^train.warmup must be a fraction in \[0, 1\)"):
        check_settings(cfg)
    model = build_backbone("unetr", "tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = []
    with pytest.raises(ConfigError, match=r"train\.warmup"):
        train(model, _data(), Supervised(), steps=2, lr=1e-3, train_cfg=cfg.train, device=torch.device("cpu"),
              amp=False, quiet=True, on_step=lambda i, logs: steps.append(i))
    assert not steps and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_federated_sites_rounds_are_slices_of_one_runs_schedule():
    """Round r of S steps trains steps [(r − 1)·S, r·S) of the R·S-step schedule: the rates of three
    rounds of 4 steps, each a fresh optimiser as a site's round is, are those of one 12-step run.
    (The rates do not depend on the network: a one-voxel convolution keeps the test fast.)"""
    cfg = compose(overrides=["train=tiny", "train.batch_size=1", "train.warmup=0.25"]).train
    rounds, steps = 3, 4

    def rates(offset: int, n: int, total: int) -> list[float]:
        seen: list[float] = []
        torch.manual_seed(0)
        train(torch.nn.Conv3d(1, 1, 1), _data(), Supervised(), steps=n, lr=1e-3, train_cfg=cfg,
              device=torch.device("cpu"), amp=False, quiet=True, schedule_offset=offset, schedule_total=total,
              on_step=lambda i, logs: seen.append(logs["lr"]))
        return seen

    single = rates(0, rounds * steps, rounds * steps)
    federated = [lr for r in range(1, rounds + 1) for lr in rates((r - 1) * steps, steps, rounds * steps)]
    assert federated == pytest.approx(single, rel=1e-12)
    assert single[2] == pytest.approx(1e-3)  # 3 warm-up steps (0.25 × 12), then the peak
    assert single == pytest.approx([1e-3 * f for f in Schedule(0.25, 12).factors(0, 12)], rel=1e-12)


@pytest.mark.parametrize("strategy", ["fedavg", "personalized"])
def test_the_coordinators_bound_reads_the_sites_schedule(strategy):
    """The honest bound sums the very factors the site's trainer applies in that round (for Ditto,
    those of the global adapter's own run), so a longer warm-up gives a smaller first-round bound."""
    def coordinator(fraction: float) -> Coordinator:
        return Coordinator(compose(overrides=[f"strategy={strategy}", "federation.rounds=3", "federation.local_steps=8",
                                              f"train.warmup={fraction}"]), None, quiet=True)

    tensors = {"w": torch.ones(10, 10)}
    for fraction in (0.1, 0.5):
        c = coordinator(fraction)
        for rnd in (1, 3):
            runs = [Schedule(fraction, total).factors(offset, n) for offset, n, total in
                    c.strategy.upload_steps(rnd, 8, 3)]
            assert sum(len(r) for r in runs) == (8 if strategy == "fedavg" else 4)
            assert c.update_bound(rnd, tensors) == pytest.approx(honest_update_bound(
                lr=float(c.cfg.peft.lr), runs=runs, n=100, weight_decay=float(c.cfg.train.weight_decay),
                global_norm=10.0, betas=ADAMW_BETAS), rel=1e-12)
    assert coordinator(0.5).update_bound(1, tensors) < coordinator(0.1).update_bound(1, tensors)
