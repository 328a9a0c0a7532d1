"""Poisoned updates are refused before averaging; the global adapter is unchanged by them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flower_grid import InProcessGrid
from flwr.app import Array, ArrayRecord
from safetensors.torch import load_file
from test_federation_run import NODES, federate, run_config

from petite_fl.errors import PetiteError
from petite_fl.federation.flower.app import client_app
from petite_fl.federation.flower.records import ARRAYS, from_record


def poisoning(kind: str, victim: int = 1001):
    """A ClientApp: the real one, with node `victim`'s train replies altered."""

    def app(message, context):
        reply = client_app(message, context)
        if message.metadata.message_type != "train" or context.node_id != victim or reply.has_error():
            return reply
        tensors = from_record(reply.content.array_records[ARRAYS])
        name = sorted(tensors)[0]
        if kind == "garbage":  # bytes that are no array at all (numpy's loader raises its own errors)
            reply.content[ARRAYS] = ArrayRecord({name: Array(dtype="float32", shape=(2,), stype="numpy.ndarray",
                                                             data=b"PK\x03\x04 not an array")})
            return reply
        if kind == "nan":
            tensors[name] = tensors[name].clone().fill_(float("nan"))
        elif kind == "shape":
            tensors[name] = torch.zeros(*tensors[name].shape, 2)
        elif kind == "extra":
            tensors["unetr.out.conv.weight"] = torch.zeros(1)
        elif kind == "norm":
            tensors[name] = tensors[name] + 1e4
        elif kind == "flipped":  # as far from the global as an honest update, the other way: within the bound
            sent = from_record(message.content.array_records[ARRAYS])
            tensors = {k: 2 * sent[k] - t for k, t in tensors.items()}
        elif kind == "scaled":  # the honest update, 100 times over: within the old 10×Adam bound
            sent = from_record(message.content.array_records[ARRAYS])
            tensors = {k: sent[k] + 100 * (t - sent[k]) for k, t in tensors.items()}
        elif kind == "dtype":
            tensors[name] = tensors[name].double()
        elif kind == "backbone":
            reply.content["config"]["backbone_sha256"] = "0" * 64
        # as a misbehaving site would send them: raw, not through petite-fl's record builder
        reply.content[ARRAYS] = ArrayRecord({k: v.contiguous() for k, v in tensors.items()})
        return reply

    return app


@pytest.fixture(scope="module")
def cache(federation_cache) -> Path:
    return federation_cache


@pytest.mark.parametrize("kind", ["nan", "shape", "extra", "norm", "scaled", "dtype", "backbone", "garbage"])
def test_a_poisoned_update_is_rejected_and_the_global_is_the_honest_average(cache, kind):
    from petite_fl.federation.flower.transport import FlowerTransport
    from petite_fl.federation.server.coordinator import Coordinator
    from petite_fl.runconfig import compose_run

    rc = run_config(cache, strategy="fedavg", **{"federation.rounds": 1, "federation.min_sites": 1,
                                                 "federation.run_name": f"poison-{kind}"})
    grid = InProcessGrid(poisoning(kind), rc, NODES)
    summary = Coordinator(compose_run(rc), FlowerTransport(grid), quiet=True).run()
    assert [r["site"] for r in summary["rejected"]] == ["scanner5"]
    honest = next(r for r in grid.replies if r.metadata.message_type == "train" and r.metadata.src_node_id == 1000)
    expected = from_record(honest.content.array_records[ARRAYS])
    global_adapter = load_file(Path(summary["run_dir"]) / "global-adapter.safetensors")
    assert global_adapter.keys() == expected.keys()
    assert all(torch.equal(global_adapter[k], expected[k]) for k in expected)


@pytest.mark.parametrize("t", [1, 2, 5, 20, 100])
def test_no_adamw_step_moves_a_coordinate_farther_than_the_bound(t):
    """The honest bound's premise, against torch's own AdamW: random gradients never exceed it, and
    the gradients that make Cauchy–Schwarz an equality reach it (so it is not loose)."""
    from petite_fl.federation.server.checks import adam_step_bound
    from petite_fl.training.trainer import ADAMW_BETAS

    def last_step(grads: torch.Tensor) -> torch.Tensor:
        p = torch.zeros(grads.shape[1], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.AdamW([p], lr=1.0, betas=ADAMW_BETAS, weight_decay=0.0, eps=1e-30)
        before = p.detach().clone()
        for g in grads:
            before = p.detach().clone()
            p.grad = g.clone()
            opt.step()
        return (p.detach() - before).abs()

    bound = adam_step_bound(t, ADAMW_BETAS)
    gen = torch.Generator().manual_seed(t)
    random = torch.randn(t, 2000, generator=gen, dtype=torch.float64) * torch.logspace(
        -6, 3, t, dtype=torch.float64)[torch.randperm(t, generator=gen)][:, None]
    assert last_step(random).max() <= bound * (1 + 1e-9)
    b1, b2 = ADAMW_BETAS
    worst = torch.tensor([(b1 / b2) ** (t - k) for k in range(1, t + 1)], dtype=torch.float64)[:, None]
    assert float(last_step(worst).max()) == pytest.approx(bound, rel=1e-6)


def test_the_norm_bound_lets_honest_updates_through_and_is_configurable(cache):
    summary, _ = federate(run_config(cache, strategy="fedavg", **{"federation.rounds": 1,
                                                                  "federation.run_name": "honest"}))
    assert summary["rejected"] == []
    with pytest.raises(PetiteError, match="valid update"):
        federate(run_config(cache, strategy="fedavg", **{"federation.rounds": 1, "federation.run_name": "strict",
                                                         "overrides": "federation.val.patches=4 "
                                                                      "federation.robust.max_update_norm=1e-9"}))


def test_a_site_claiming_a_huge_weight_weighs_what_it_declared_at_the_hello(cache):
    """The attack: num-examples is the averaging weight; claim 10⁹ and your update replaces the global."""
    from petite_fl.federation.flower.transport import FlowerTransport
    from petite_fl.federation.server.coordinator import Coordinator
    from petite_fl.runconfig import compose_run

    def inflate(message, context):
        reply = client_app(message, context)
        if message.metadata.message_type == "train" and context.node_id == 1001 and not reply.has_error():
            reply.content["metrics"]["num-examples"] = 10**9
        return reply

    runs = {}
    for name, app in (("weight-honest", client_app), ("weight-inflated", inflate)):
        rc = run_config(cache, strategy="fedavg", **{"federation.rounds": 1, "federation.run_name": name})
        runs[name] = Coordinator(compose_run(rc), FlowerTransport(InProcessGrid(app, rc, NODES)), quiet=True).run()
    honest, inflated = (load_file(Path(runs[n]["run_dir"]) / "global-adapter.safetensors")
                        for n in ("weight-honest", "weight-inflated"))
    assert all(torch.equal(honest[k], inflated[k]) for k in honest)


_FLIPPED: dict[tuple[str, str], int] = {}


def values_outside_the_honest_range(cache: Path, aggregate: str) -> int:
    """One round with the third site's update flipped around the global: how many values of the aggregate lie
    outside what the two honest sites sent (the mean's run is shared by the parametrized tests)."""
    from petite_fl.federation.flower.transport import FlowerTransport
    from petite_fl.federation.server.coordinator import Coordinator
    from petite_fl.runconfig import compose_run

    key = (str(cache), aggregate)
    if key in _FLIPPED:
        return _FLIPPED[key]
    nodes = [{"partition-id": i, "num-partitions": 3} for i in range(3)]
    rc = run_config(cache, strategy="fedavg", **{
        "federation.rounds": 1, "federation.sites": "[scanner3,scanner4,scanner5]",
        "federation.run_name": f"flip-{aggregate}", "federation.robust.aggregate": aggregate,
        "overrides": "federation.val.patches=4 federation.robust.trim_fraction=0.34"})
    grid = InProcessGrid(poisoning("flipped", victim=1002), rc, nodes)
    summary = Coordinator(compose_run(rc), FlowerTransport(grid), quiet=True).run()
    assert summary["rejected"] == []  # nothing gross: the flipped update passes every check
    honest = [from_record(r.content.array_records[ARRAYS]) for r in grid.replies
              if r.metadata.message_type == "train" and r.metadata.src_node_id in (1000, 1001)]
    result = load_file(Path(summary["run_dir"]) / "global-adapter.safetensors")
    low = {k: torch.minimum(honest[0][k], honest[1][k]) for k in result}
    high = {k: torch.maximum(honest[0][k], honest[1][k]) for k in result}
    _FLIPPED[key] = sum(int(((result[k] < low[k]) | (result[k] > high[k])).sum()) for k in result)
    return _FLIPPED[key]


@pytest.mark.parametrize("how", ["median", "trimmed-mean"])
def test_a_robust_aggregate_keeps_every_value_within_the_honest_sites_range(cache, how):
    """Beyond gross poisons: an update flipped around the global passes every check, and the mean
    follows it outside what the honest sites sent; a coordinate-wise median or trimmed mean does not."""
    outside = {aggregate: values_outside_the_honest_range(cache, aggregate) for aggregate in ("mean", how)}
    assert outside["mean"] > 0 and outside[how] == 0
