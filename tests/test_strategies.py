"""The strategy registry and the site half of each strategy, without Flower."""

from __future__ import annotations

import pytest
import torch

from petite_fl.config import compose, configs_dir
from petite_fl.errors import ConfigError
from petite_fl.federation.strategies import LocalTraining, available_strategies, build_strategy
from petite_fl.federation.strategies.base import proximal


def strategy(name: str, *overrides: str):
    return build_strategy(compose(overrides=[f"strategy={name}", *overrides]).strategy)


def test_registry_has_one_class_per_algorithm_and_each_config_selects_one_by_label():
    assert available_strategies() == ["fedavg", "fedavg-ft", "local", "personalized"]
    configs = sorted(p.stem for p in (configs_dir() / "strategy").glob("*.yaml"))
    assert {"fedbn", "shared-encoder", "split-lora", "pooled", "pooled-ft"} <= set(configs)
    for name in configs:
        if name in ("pooled", "pooled-ft"):  # the centralised arms of `petite compare`, refused as a federation
            with pytest.raises(ConfigError, match="centralised arm of `petite compare`"):
                strategy(name)
            continue
        built = strategy(name)
        assert built.name == name and built.algorithm in available_strategies()
    # a strategy that only changes the sharing rule is a config of fedavg, labelled by its file
    assert type(strategy("shared-encoder")) is type(strategy("fedavg"))
    assert strategy("shared-encoder").describe().startswith("shared-encoder: shares encoder/*")
    with pytest.raises(ConfigError, match=r"^unknown strategy algorithm 'fedsgd' \(known: fedavg, fedavg-ft, "):
        build_strategy({"name": "fedsgd"})
    with pytest.raises(ConfigError, match="unknown strategy algorithm 'fedsgd'"):
        build_strategy({"name": "mine", "algorithm": "fedsgd"})
    assert build_strategy({"name": "mine", "algorithm": "fedavg"}).name == "mine"


def test_bad_strategy_settings_are_refused_with_the_field_named():
    with pytest.raises(ConfigError, match="proximal_mu"):
        strategy("fedavg", "strategy.proximal_mu=-1")
    with pytest.raises(ConfigError, match="shares nothing"):
        strategy("local", "strategy.sharing.share=[*]")
    with pytest.raises(ConfigError, match="global_fraction"):
        strategy("personalized", "strategy.ditto.global_fraction=1.0")
    with pytest.raises(ConfigError, match="unknown part 'neck'"):
        strategy("fedavg", "strategy.sharing.share=[neck/*]")


def test_sharing_rules_split_by_part_and_method():
    trainable = {"a.lora_A": "encoder", "b.ssf_scale": "decoder", "c.bitfit_delta": "decoder"}
    assert strategy("fedavg").split(trainable) == (sorted(trainable), [])
    assert strategy("shared-encoder").split(trainable) == (["a.lora_A"], ["b.ssf_scale", "c.bitfit_delta"])
    assert strategy("local").split(trainable) == ([], sorted(trainable))
    assert strategy("fedbn").split(trainable) == (["a.lora_A", "c.bitfit_delta"], ["b.ssf_scale"])


def test_split_lora_shares_lora_a_only_and_refuses_a_role_a_method_lacks():
    trainable = {"q.lora_A.default.weight": "encoder", "q.lora_B.default.weight": "encoder",
                 "d.lora_A.default.weight": "decoder", "b.ssf_scale": "decoder", "c.bitfit_delta": "decoder"}
    shared, personal = strategy("split-lora").split(trainable)
    assert shared == ["d.lora_A.default.weight", "q.lora_A.default.weight"]
    assert personal == ["b.ssf_scale", "c.bitfit_delta", "q.lora_B.default.weight"]
    assert "shares */lora/A" in strategy("split-lora").describe()
    with pytest.raises(ConfigError, match="method 'ssf' has no tensor role 'A'"):
        strategy("fedavg", "strategy.sharing.share=[*/ssf/A]")


def test_fedavg_ft_spends_the_last_quarter_of_rounds_on_local_fine_tuning():
    s = strategy("fedavg-ft")
    assert [s.federated_rounds(r) for r in (0, 2, 4, 8, 10)] == [0, 1, 3, 6, 7]  # 0: nothing to split
    with pytest.raises(ConfigError, match="at least one FedAvg round"):
        s.federated_rounds(1)
    with pytest.raises(ConfigError, match=r"finetune\.fraction"):
        strategy("fedavg-ft", "strategy.finetune.fraction=1.0")


def test_proximal_term_is_zero_at_the_anchor_and_pulls_toward_it():
    model = torch.nn.Linear(3, 1)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    penalty = proximal(anchor, 0.5)
    assert float(penalty(model).detach()) == 0.0
    with torch.no_grad():
        model.weight += 1.0
    value = penalty(model)
    assert float(value.detach()) == pytest.approx(0.5 / 2 * 3)
    value.backward()
    assert torch.all(model.weight.grad > 0)  # gradient descent moves back toward the anchor
    assert proximal(anchor, 0.0) is None and proximal({}, 1.0) is None


class _Job:
    """A LocalTraining over a dict of tensors; 'training' adds 1 and records the penalty."""

    def __init__(self, names, steps=4):
        self.tensors, self.calls = {}, []
        self.job = LocalTraining(names=names, load=self.load, read=lambda: dict(self.tensors), train=self.train,
                                 round=2, steps=steps, total_rounds=3)

    def load(self, tensors):
        self.tensors = {k: v.clone() for k, v in tensors.items()}

    def train(self, n, penalty, offset, total):
        self.calls.append((n, penalty is not None, offset, total))
        self.tensors = {k: v + 1 for k, v in self.tensors.items()}
        return 0.5


def test_split_strategies_upload_the_shared_part_and_keep_the_rest():
    init = {"enc": torch.zeros(2), "dec": torch.zeros(2)}
    fake = _Job(list(init))
    update = strategy("shared-encoder", "strategy.proximal_mu=0.1").local_update(
        fake.job, init, {"enc": torch.full((2,), 5.0)}, {"dec": torch.full((2,), 7.0)})
    assert set(update.upload) == {"enc"} and torch.equal(update.upload["enc"], torch.full((2,), 6.0))
    assert set(update.personal) == {"dec"} and torch.equal(update.personal["dec"], torch.full((2,), 8.0))
    assert fake.calls == [(4, True, 4, 12)]  # one schedule over all rounds: round 2 starts at step 4


def test_ditto_trains_global_then_personal_within_the_same_step_budget():
    init = {"t": torch.zeros(1)}
    fake = _Job(["t"], steps=6)
    s = strategy("personalized", "strategy.ditto.global_fraction=0.5")
    update = s.local_update(fake.job, init, {"t": torch.full((1,), 10.0)}, {"t": torch.full((1,), 3.0)})
    assert torch.equal(update.upload["t"], torch.full((1,), 11.0))     # w: from the global
    assert torch.equal(update.personal["t"], torch.full((1,), 4.0))    # v: from its own state
    assert [c[0] for c in fake.calls] == [3, 3] and fake.calls[1][1]   # λ pulls v toward w
    # before any personal state exists, v starts from the global adapter
    assert torch.equal(s.current_adapter(init, {"t": torch.ones(1)}, {})["t"], torch.ones(1))
