"""A site bounds what a run may spend and refuses a run that trains nothing (issue 26, G1 and G3).

The attacks are messages a coordinator could send, answered by the site's real endpoint on the
tiny site of tests/test_site_policy.py: 10¹² local steps, 10⁹ volumes per batch, 10⁴ loader
processes, a 10⁶× patch, 10⁹ patches per volume, 10⁹ rounds, evaluation windows without end; a
learning rate of zero (a train message is then a measurement of the coordinator's weights on the
training scans) and a train reply's training loss, which a deployed site sends only where its
policy says so. Every shipped preset and comparison arm passes the default policy.
"""

# ruff: noqa: F811  (pytest fixtures imported from test_site_policy, named again as test arguments)
from __future__ import annotations

import math
from dataclasses import replace

import pytest
from omegaconf import OmegaConf

from petite_fl.config import compose
from petite_fl.errors import ConfigError, PolicyError
from petite_fl.federation.messages import BackboneOffer, TrainIns
from petite_fl.federation.site.policy import SIMULATION, SitePolicy
from petite_fl.federation.strategies import build_strategy
from petite_fl.runconfig import site_config, site_sections

# the tiny site, its backbone and messages of tests/test_site_policy.py (fixtures are used as arguments)
from tests.test_site_policy import adapter, backbone, manifest, site, train_ins  # noqa: F401

NOTHING = "a run that trains nothing only measures the coordinator's weights on this site's training scans"
LR = f"a site trains only with a positive learning rate ({NOTHING})"


# -- G1: every resource has an upper bound ------------------------------------------------------------


@pytest.mark.parametrize(("override", "line"), [
    ("federation.local_steps=1000000000000",
     "refused by policy.max_local_steps (1000): the run asks federation.local_steps=1000000000000"),
    ("federation.rounds=1000000000", "refused by policy.max_rounds (100): the run asks federation.rounds=1000000000"),
    ("train.batch_size=1000000000", "refused by policy.max_batch_size (16): the run asks train.batch_size=1000000000"),
    ("train.num_workers=10000", "refused by policy.max_num_workers (8): the run asks train.num_workers=10000"),
    ("train.patch_scale=1e6", "refused by policy.max_patch_scale (2.0): the run asks train.patch_scale=1e+06"),
    ("data.loader.patches_per_volume=1000000000",
     "refused by policy.max_patches_per_volume (32): the run asks data.loader.patches_per_volume=1000000000"),
    ("train.eval.sw_batch_size=100000",
     "refused by policy.max_eval_batch_size (32): the run asks train.eval.sw_batch_size=100000"),
    ("train.eval.overlap=0.99", "refused by policy.max_eval_overlap (0.75): the run asks train.eval.overlap=0.99"),
    ("federation.val.overlap=0.99",
     "refused by policy.max_eval_overlap (0.75): the run asks federation.val.overlap=0.99"),
    ("federation.val.patches=1000000",
     "refused by policy.max_val_patches (64): the run asks federation.val.patches=1000000"),
    ("train.patch_scale=nan", "refused: the run asks train.patch_scale=nan, which must be a number > 0"),
    ("train.num_workers=-1", "refused: the run asks train.num_workers=-1, which must be a number ≥ 0"),
])
def test_a_resource_beyond_the_sites_bound_is_refused_at_the_hello_in_one_line(site, override, line):
    with pytest.raises(PolicyError) as refused:
        site().hello(override)
    assert str(refused.value) == line


def test_a_train_message_beyond_the_bounds_or_without_steps_is_refused_before_any_work(site, backbone):
    """The coordinator's round may ask other figures than its hello: each train message is checked too."""
    hospital = site()
    hospital.hello()
    tensors, shared = adapter(backbone)
    sent = {n: tensors[n] for n in shared}
    for changes, line in [
        ({"steps": 0}, f"refused: round 1 asks 0 local steps; {NOTHING}"),
        ({"rounds": 10**9}, "refused by policy.max_rounds (100): the run asks the round's total rounds=1000000000"),
        ({"steps": 10**12}, "refused by policy.max_local_steps (1000): the run asks the round's steps=1000000000000"),
    ]:
        with pytest.raises(PolicyError) as refused:
            hospital.endpoint.answer(train_ins(backbone, sent, **changes))
        assert str(refused.value) == line


def test_a_site_may_tighten_or_lift_a_bound_and_a_bad_bound_is_one_line(site):
    with pytest.raises(PolicyError, match=r"^refused by policy.max_local_steps \(8\): the run asks "):
        site(max_local_steps=8).hello()  # the tiny run asks 16
    site(max_local_steps=None, max_rounds=None).hello("federation.local_steps=5000", "federation.rounds=500")
    with pytest.raises(ConfigError, match=r"^policy.max_patch_scale must be a number > 0 \(or null for no limit\)"):
        SitePolicy.from_mapping({"max_patch_scale": "big"})
    with pytest.raises(ConfigError, match=r"^policy.report_train_loss must be true or false, got 'yes'"):
        SitePolicy.from_mapping({"report_train_loss": "yes"})


def _presets() -> list[tuple[str, list[str]]]:
    """Every shipped configuration a federated run starts from: the root presets and each comparison
    preset's arms, as `petite compare` composes them (its preset's overrides, then the arm's)."""
    out = [("default", []), ("tiny", ["data=tiny", "train=tiny"]),
           ("paper-size", ["model.preset=paper", "train=default", "data=paper"])]
    for preset in ("default", "study", "paper"):
        base = compose(overrides=[f"compare={preset}"]).compare
        for arm, overrides in base.arms.items():
            out.append((f"compare={preset} arm {arm}", [f"compare={preset}", *base.overrides, *overrides]))
    return out


def test_every_shipped_preset_and_comparison_arm_passes_the_default_bounds():
    """What each site would check at the hello and in each round, with the default policy's bounds
    (its strategy and method lists aside: `peft=full` and the centralised arms never reach a site)."""
    policy = replace(SitePolicy(), strategies=None, peft_methods=None)
    checked = 0
    for name, overrides in _presets():
        cfg = compose(overrides=overrides)
        if cfg.strategy.get("centralised") or str(cfg.strategy.name).startswith("pooled"):
            continue  # no federation: one process holds every site's scans
        at_site = site_config(site_sections(cfg), {"site": "hospital", "site-root": "/nowhere"})
        try:
            policy.check_run(at_site)
            if int(cfg.federation.rounds) > 0:
                policy.check_train(TrainIns("r", 1, int(cfg.federation.rounds), int(cfg.federation.local_steps),
                                            "a" * 64, False, False, {}), at_site, build_strategy(cfg.strategy))
        except PolicyError as exc:
            pytest.fail(f"{name}: {exc}")
        checked += 1
    assert checked >= 40  # three root presets and the three comparison presets' federated arms


# -- G3: no loss oracle -----------------------------------------------------------------------------


@pytest.mark.parametrize(("override", "line"), [
    ("peft.lr=0", f"refused: the run asks peft.lr=0; {LR}"),
    ("peft.lr=-0.001", f"refused: the run asks peft.lr=-0.001; {LR}"),
    ("peft.lr=nan", f"refused: the run asks peft.lr=nan; {LR}"),
    ("train.gan.d_lr=0", f"refused: the run asks train.gan.d_lr=0; {LR}"),
    ("federation.local_steps=0", f"refused: the run asks federation.local_steps=0 over 2 round(s); {NOTHING}"),
    ("peft=none", f"refused: the run trains peft=none (no parameter) over 2 round(s); {NOTHING}"),
])
def test_a_run_that_trains_nothing_is_refused_at_the_hello(site, override, line):
    with pytest.raises(PolicyError) as refused:
        site(min_samples_per_update=1).hello(override)
    assert str(refused.value) == line


def test_a_learning_rate_of_zero_is_refused_in_a_train_message(site, backbone, tmp_path):
    """A site re-reads the run's kept settings at every message: a run accepted at its hello before this
    check (its `config.yaml` holds peft.lr=0) is refused at its next train message, before any work."""
    hospital = site()
    hospital.hello()
    kept = tmp_path / "state" / "hospital" / "runs" / "run-a" / "config.yaml"
    cfg = OmegaConf.load(kept)
    cfg.peft.lr = 0.0
    kept.write_text(OmegaConf.to_yaml(cfg))
    tensors, shared = adapter(backbone)
    with pytest.raises(PolicyError) as refused:
        hospital.endpoint.answer(train_ins(backbone, {n: tensors[n] for n in shared}))
    assert str(refused.value) == f"refused: the run asks peft.lr=0.0; {LR}"


def test_a_train_reply_carries_the_training_loss_only_where_the_sites_policy_allows_it(site, backbone):
    model, meta = backbone
    tensors, shared = adapter(backbone)
    replies = {}
    for allowed in (False, True):
        hospital = site(min_samples_per_update=2, report_train_loss=allowed)
        hospital.hello("federation.local_steps=2", run=f"run-{allowed}")
        hospital.endpoint.answer(BackboneOffer(f"run-{allowed}", model.state_dict(), meta))
        replies[allowed] = hospital.endpoint.answer(train_ins(backbone, {n: tensors[n] for n in shared}, steps=2,
                                                              run=f"run-{allowed}", validate=True))
    assert "train_loss" not in replies[False].metrics  # the default of a deployed site
    assert "val_psnr" in replies[False].metrics and "seconds" in replies[False].metrics  # the rest as before
    assert math.isfinite(replies[True].metrics["train_loss"])
    assert SitePolicy().report_train_loss is False and SIMULATION.report_train_loss is True
