"""SecAgg+ and central DP on the shared tensors, through Flower's own workflow, mods and wrappers.

Three tiny sites (SecAgg+ refuses fewer), one round each, in process with the real
ServerApp/ClientApp logic; the protocol messages are Flower's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_grid import InProcessGrid
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.supercore.task_identity import TaskIdentity

from petite_fl.config import compose
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.flower.app import client_app
from petite_fl.federation.flower.privacy import private_mean
from petite_fl.federation.flower.records import ARRAYS, FITINS, FITRES, from_parameters, from_record
from petite_fl.federation.flower.transport import FlowerTransport
from petite_fl.federation.server.coordinator import Coordinator
from petite_fl.federation.server.protections import Protection, check_combination, protection_from_config
from petite_fl.federation.strategies import build_strategy
from petite_fl.runconfig import compose_run

SITES = "[scanner3,scanner4,scanner5]"
NODES = [{"partition-id": i, "num-partitions": 3} for i in range(3)]


def run_config(cache: Path, overrides: str = "", **extra) -> dict:
    rc = {"paths.cache": str(cache), "data": "tiny", "data.synth.scanners": SITES, "data.synth.workers": 1,
          "source": "scanner4", "train": "tiny", "train.pretrain.steps": 4, "train.patch_scale": 0.5,
          "train.batch_size": 1,
          "data.loader.patches_per_volume": 2, "train.eval.overlap": 0.0, "strategy": "fedavg",
          "overrides": f"federation.val.patches=2 peft.lr=0.01 {overrides}".strip(), "federation.sites": SITES,
          "federation.rounds": 1, "federation.local_steps": 2, "federation.wait_for_sites": 1}
    rc.update(extra)
    return rc


def federate(rc: dict, fail=None):
    grid = InProcessGrid(client_app, rc, NODES, fail=fail)
    summary = Coordinator(compose_run(rc), FlowerTransport(grid), quiet=True).run()
    return summary, grid, torch.load(Path(summary["run_dir"]) / "checkpoint.pt", weights_only=False)["global"]


def summary_init(run) -> dict:
    """The global tensors the run started from (the first train message's)."""
    _, grid, _ = run
    first = next(m for m in grid.sent if m.metadata.message_type == "train" and FITINS in m.content.array_records)
    names = json.loads(str(first.content.config_records["fitins.config"]["names"]))
    return from_parameters(compat.recorddict_to_fitins(first.content, True).parameters, names)


def _masked_stage(msg) -> bool:
    c = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return c is not None and c.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS


@pytest.fixture(scope="module")
def cache(federation_cache) -> Path:
    return federation_cache  # the same data set and backbone as tests/test_federation_run.py


@pytest.fixture(scope="module")
def plain(cache):
    return federate(run_config(cache))


@pytest.fixture(scope="module")
def secure(cache, plain):
    return federate(run_config(cache, "federation.secagg.enabled=true"))


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, n_sites, fragment", [
    (["strategy=local", "federation.secagg.enabled=true"], 5, "shares nothing"),
    (["strategy=local", "federation.dp.mode=server"], 5, "shares nothing"),
    (["federation.secagg.enabled=true", "federation.dp.mode=server"], 5, "use federation.dp.mode=client"),
    (["federation.secagg.enabled=true"], 2, "at least 3 sites"),
])
def test_combinations_that_would_not_protect_are_refused_saying_why(overrides, n_sites, fragment):
    cfg = compose("config", overrides)
    strategy = build_strategy(cfg.strategy)
    with pytest.raises(ConfigError, match=fragment):
        check_combination(protection_from_config(cfg), strategy.name, bool(strategy.rule.share), n_sites)


@pytest.mark.parametrize("override, fragment", [
    ("federation.dp.mode=laplace", "federation.dp.mode must be one of"),
    ("federation.dp.noise_multiplier=0", "no noise is no privacy"),
    ("federation.dp.clipping_norm=-1", "federation.dp.clipping_norm"),
    ("federation.secagg.clipping_range=0", "federation.secagg.clipping_range"),
])
def test_bad_privacy_settings_name_the_field(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        protection_from_config(compose("config", ["federation.dp.mode=server", override]))


def test_protected_combinations_are_accepted():
    for overrides in (["federation.dp.mode=off"], ["strategy=shared-encoder", "federation.secagg.enabled=true"],
                      ["strategy=personalized", "federation.secagg.enabled=true", "federation.dp.mode=client"]):
        cfg = compose("config", overrides)
        check_combination(protection_from_config(cfg), "x", True, 5)


# -- SecAgg+ ---------------------------------------------------------------------------------


def test_secagg_average_equals_the_plain_average_up_to_quantization(plain, secure):
    _, _, a = plain
    summary, _, b = secure
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    # Flower's quantization: 2^22 levels over ±8 → steps of 3.8e-6 per site's weighted value
    assert diff < 2e-5, diff
    assert max(float((b[k] - summary_init(secure)[k]).abs().max()) for k in b) > 1e-3  # the round moved it
    assert summary["protection"] == "SecAgg+" and not summary["rejected"]
    assert 10 < summary["test_mean"]["psnr"] < 60


def test_under_secagg_no_site_upload_reaches_the_server_in_the_clear(secure):
    _, grid, _ = secure
    train_replies = [r for r in grid.replies if r.metadata.message_type == "train" and not r.has_error()]
    masked = [r for r in train_replies if Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]]
    assert len(masked) == 3  # one masked vector per site
    for reply in train_replies:  # setup, share keys, masked vectors, unmask: no array leaves a site
        assert all(not len(rec) for rec in reply.content.array_records.values())
        assert FITRES not in reply.content.array_records or not len(reply.content.array_records[FITRES])
    sent = [m for m in grid.sent if m.metadata.message_type == "train" and FITINS in m.content.array_records]
    assert len(sent) == 3  # the global tensors go down once per site, in the masked-vector stage


def test_secagg_bytes_are_counted_for_every_stage(plain, secure):
    rows = {n: json.loads((Path(s[0]["run_dir"]) / "log.json").read_text())["transfer"] for n, s in
            (("plain", plain), ("secure", secure))}
    up_plain = max(r["bytes_up"] for r in rows["plain"] if r["what"] == "peft")
    up_secure = max(r["bytes_up"] for r in rows["secure"] if r["what"] == "peft-secagg")
    # masked values are 4-byte integers like the float32 uploads, plus keys and shares
    assert up_secure > up_plain


def test_a_site_dropping_out_mid_secagg_leaves_a_sum_of_two_that_is_discarded(cache):
    """The attack: with three sites, one dropping out after the masks leaves a sum of two, from which
    each reads the other's upload. The round is refused and nothing of it is kept."""
    rc = run_config(cache, "federation.secagg.enabled=true",
                    **{"federation.min_sites": 3, "federation.run_name": "secagg-dropout"})
    with pytest.raises(PetiteError, match=r"round 1: the SecAgg\+ sum holds the uploads of only 2 site\(s\)"):
        federate(rc, fail={1002: _masked_stage})
    run_dirs = list((cache / "runs" / "federated").glob("secagg-dropout"))
    assert run_dirs and not (run_dirs[0] / "checkpoint.pt").exists()


def test_secagg_refuses_fewer_than_three_sites_as_min_sites():
    from petite_fl.federation.server.coordinator import min_sites

    assert min_sites(None, 5, secagg=False) == 3 and min_sites(None, 2, secagg=False) == 1
    assert min_sites(None, 3, secagg=True) == 3 and min_sites(None, 5, secagg=True) == 3
    with pytest.raises(ConfigError, match=r"federation\.min_sites must be a whole number from 3 to the 5 sites"):
        min_sites(2, 5, secagg=True)


# -- differential privacy ------------------------------------------------------------------------


def _protection(mode: str, z: float = 1.0, c: float = 0.1) -> Protection:
    return Protection(False, 1.0, 0.7, 8.0, 2**22, mode, z, c, 1e-5)


def test_server_side_dp_clips_each_update_and_adds_noise_of_z_c_over_n():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # Messages outside a run
    current = {"w": torch.zeros(40_000)}
    g = torch.Generator().manual_seed(0)
    directions = [torch.randn(40_000, generator=g) for _ in range(3)]
    uploads = [{"w": d / d.norm() * norm} for d, norm in zip(directions, (10.0, 0.05, 0.02), strict=True)]
    clipped = [u["w"] * min(1.0, 0.1 / float(u["w"].norm())) for u in uploads]
    mean = sum(clipped) / 3
    before = np.random.get_state()[1].copy()
    out = private_mean(_protection("server"), current, uploads, seed=7)["w"]
    assert np.array_equal(np.random.get_state()[1], before)  # the caller's generator is untouched
    noise = out - mean
    assert abs(float(noise.mean())) < 1e-3
    assert float(noise.std()) == pytest.approx(1.0 * 0.1 / 3, rel=0.03)
    assert torch.equal(out, private_mean(_protection("server"), current, uploads, seed=7)["w"])  # seeded (tests)
    # client mode: the server does not clip (the sites' fixedclipping_mod did)
    tiny = private_mean(_protection("client", z=1e-9), current, uploads, seed=7)["w"]
    torch.testing.assert_close(tiny, sum(u["w"] for u in uploads) / 3, atol=1e-6, rtol=0)


def test_the_dp_noise_cannot_be_replayed_from_the_run_config():
    """The attack: every site knows the run's seed; if the noise came from it, regenerating it and
    subtracting it from the release would give back the true mean (to 4e-9 before this fix)."""
    from petite_fl.federation.flower.privacy import CentralDP
    from petite_fl.federation.server.protections import Protected
    from petite_fl.federation.site.worker import round_seed
    from petite_fl.federation.strategies import build_strategy

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    p = _protection("server")
    current = {"w": torch.zeros(5_000)}
    g = torch.Generator().manual_seed(1)
    uploads = [({"w": torch.randn(5_000, generator=g) * 1e-4}, 1) for _ in range(3)]
    mean = sum(u["w"] for u, _ in uploads) / 3  # all within the clipping norm: the release is mean + noise
    strategy = CentralDP(Protected(build_strategy({"name": "fedavg", "sharing": {"share": ["*"]}})), p, 3)
    before = np.random.get_state()[1].copy()
    first = strategy.aggregate(current, uploads)["w"]
    second = strategy.aggregate(current, uploads)["w"]
    assert np.array_equal(np.random.get_state()[1], before)  # determinism elsewhere is kept
    assert not torch.equal(first, second)  # same run, same seed, same inputs: fresh noise per release
    assert float((first - mean).std()) == pytest.approx(p.noise_multiplier * p.clipping_norm / 3, rel=0.05)
    for seed in (0, round_seed(0, "(server)", 1, "dp-noise")):  # the run seed, and the old per-round seed
        replayed = first - (private_mean(p, current, [u for u, _ in uploads], seed=seed)["w"] - mean)
        assert float((replayed - mean).abs().max()) > 1e-3  # subtracting a regenerated noise recovers nothing


def _update_norms(grid) -> list[float]:
    """‖upload − global‖ of every train reply, in either layout (legacy FitIns/FitRes or petite-fl's)."""
    sent = {m.metadata.dst_node_id: m for m in grid.sent if m.metadata.message_type == "train"}
    norms = []
    for r in grid.replies:
        if r.metadata.message_type != "train" or r.has_error():
            continue
        ins = sent[r.metadata.src_node_id].content
        if FITINS in ins.array_records:
            names = json.loads(str(ins.config_records["fitins.config"]["names"]))
            down = from_parameters(compat.recorddict_to_fitins(ins, True).parameters, names)
            up = from_parameters(compat.recorddict_to_fitres(r.content, True).parameters, names)
        else:
            down, up = from_record(ins.array_records[ARRAYS]), from_record(r.content.array_records[ARRAYS])
        norms.append(sum(float(((up[n].double() - down[n].double()) ** 2).sum()) for n in down) ** 0.5)
    return norms


def test_client_side_dp_clipping_happens_at_the_sites(cache, plain):
    summary, grid, _ = federate(run_config(cache, "federation.dp.mode=client federation.dp.clipping_norm=0.001"))
    norms = _update_norms(grid)
    assert len(norms) == 3 and max(norms) <= 0.001 * (1 + 1e-4)  # float32 round-off
    assert min(_update_norms(plain[1])) > 0.01  # unclipped, the same round moves every site further
    assert summary["protection"].startswith("central DP (client-side clipping")


def test_dp_runs_report_the_privacy_spent_by_flowers_accountant(cache, secure):
    accountant = RdpAccountant(PrivacyConfig(1e-5, 3, NeighboringRelation.ADD_OR_REMOVE_ONE,
                                             SamplingMethod.NO_AMPLIFICATION))
    accountant.compose(GaussianPrivacyEvent(1.0, 3, 3))
    expected = accountant.get_privacy_spent().epsilon
    for overrides in ("federation.dp.mode=server", "federation.dp.mode=client federation.secagg.enabled=true"):
        summary, _, _ = federate(run_config(cache, overrides))
        assert summary["privacy"]["epsilon"] == pytest.approx(expected) and summary["privacy"]["releases"] == 1
        assert not summary["rejected"] and 10 < summary["test_mean"]["psnr"] < 60
