"""A site's own policy refuses what a coordinator may not ask, in one line naming the policy line.

Each attack is a message a coordinator could send, answered by the site's real endpoint
(`SiteEndpoint`, the code inside every ClientApp) on a tiny site: three small NIfTI pairs and
the tiny UNETR. The refusals come before any training; one test trains two steps to show that
what leaves the site follows the site's own sharing rule, not the names the server lists.
"""

from __future__ import annotations

import copy
import json
import secrets
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from petite_fl.artifacts import load_backbone, save_backbone
from petite_fl.config import compose
from petite_fl.data.synthetic import dataset_dir
from petite_fl.deploy.site import site_deployment
from petite_fl.errors import ConfigError, PetiteError, PolicyError
from petite_fl.federation.flower.codec import encode
from petite_fl.federation.messages import BackboneOffer, EvaluateIns, Hello, TrainIns
from petite_fl.federation.site.endpoint import SiteEndpoint
from petite_fl.federation.site.policy import NODE_KEY, SIMULATION, SitePolicy, policy_for_node
from petite_fl.federation.strategies import build_strategy
from petite_fl.models.registry import build_backbone
from petite_fl.peft.apply import adapter_state_dict, apply_peft
from petite_fl.peft.spec import spec_from_config
from petite_fl.runconfig import site_sections
from tests.conftest import write_site

#: a run on the tiny site: 16³ windows (scanner 5's patch × 0.25), one window per scan
RUN = ["data=tiny", "train=tiny", "train.patch_scale=0.25", "train.batch_size=1", "data.loader.patches_per_volume=1",
       "federation.rounds=2", "federation.local_steps=16", "strategy=shared-encoder", "federation.val.patches=1"]
DEFAULT_PEFT = "[none, layernorm, bitfit, lora, adapter, ssf, vpt]"


def sections(*overrides: str) -> dict:
    return site_sections(compose(overrides=[*RUN, *overrides]))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """The tiny UNETR as the coordinator offers it: its tensors and metadata (hash, model, config)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("backbone") / "unetr-tiny.safetensors"
    save_backbone(build_backbone("unetr", "tiny"), path, {"preset": "tiny"})
    return load_backbone(path)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    path = write_site(tmp_path_factory.mktemp("hospital") / "data")
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "scanner": "scanner5"}))  # its patch size: scanner 5's
    return path


class Site:
    """One deployed site (a `site` and its own policy in the node config) and its endpoint."""

    def __init__(self, root: Path, manifest: Path, **policy) -> None:
        self.node = {"site": "hospital", "site-root": str(root), "manifest": str(manifest), "device": "cpu",
                     NODE_KEY: SitePolicy.from_mapping(policy).to_json()}
        self.endpoint = SiteEndpoint(self.node, {})

    def hello(self, *overrides: str, run: str = "run-a", config: dict | None = None):
        return self.endpoint.answer(Hello(run, sections(*overrides) if config is None else config))


@pytest.fixture
def site(tmp_path, manifest):
    return lambda **policy: Site(tmp_path / "state", manifest, **policy)


def adapter(backbone, *overrides: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(every trainable PEFT tensor as the coordinator initialises it, the names the strategy shares)."""
    model = copy.deepcopy(backbone[0])
    cfg = compose(overrides=[*RUN, *overrides])
    torch.manual_seed(int(cfg.seed))
    state = apply_peft(model, spec_from_config(cfg.peft, model))
    shared, _ = build_strategy(cfg.strategy).split(state.trainable)
    return adapter_state_dict(model, state), shared


def train_ins(backbone, tensors, **changes) -> TrainIns:
    fields = {"run": "run-a", "round": 1, "rounds": 2, "steps": 16, "sha256": backbone[1]["sha256"],
              "validate": False, "uniform_weight": False, "tensors": tensors}
    return TrainIns(**{**fields, **changes})


# -- one test per attack ----------------------------------------------------------------------


def test_full_fine_tuning_is_refused(site):
    with pytest.raises(PolicyError) as refused:
        site().hello("peft=full")
    assert str(refused.value) == (f"refused by policy.peft_methods ({DEFAULT_PEFT}): the run trains full, "
                                  "and 'full' is not allowed here")


def test_a_strategy_the_site_does_not_allow_or_a_sharing_rule_it_does_not_hold_is_refused(site):
    with pytest.raises(PolicyError) as refused:
        site(strategies=["local", "fedavg"]).hello("strategy=personalized")
    assert str(refused.value) == ("refused by policy.strategies ([local, fedavg]): the run asks strategy "
                                  "'personalized'")
    # the server keeps the label but widens what it shares: the site's own file says what the label shares
    with pytest.raises(PolicyError) as refused:
        site(strategies=["shared-encoder"]).hello("strategy.sharing.share=[*]")
    assert str(refused.value) == ("refused by policy.strategies ([shared-encoder]): strategy 'shared-encoder' is "
                                  "fedavg sharing [encoder/*] at this site; the run asks fedavg sharing [*]")


def test_too_few_samples_behind_an_update_are_refused_at_the_hello_and_in_a_round(site, backbone):
    with pytest.raises(PolicyError) as refused:
        site().hello("federation.local_steps=2")
    assert str(refused.value) == ("refused by policy.min_samples_per_update (8): the run asks 2 steps × batch 1 "
                                  "= 2")
    hospital = site()
    hospital.hello()  # 16 steps × batch 1: accepted; then a round asks one step
    tensors, shared = adapter(backbone)
    with pytest.raises(PolicyError) as refused:
        hospital.endpoint.answer(train_ins(backbone, {n: tensors[n] for n in shared}, steps=1))
    assert str(refused.value) == ("refused by policy.min_samples_per_update (8): the run asks 1 steps × batch 1 "
                                  "= 1")


def test_an_evaluation_on_the_training_split_is_refused(site):
    hospital = site()
    hospital.hello()
    with pytest.raises(PolicyError) as refused:
        hospital.endpoint.answer(EvaluateIns("run-a", 2, "a" * 64, ("train",), {}))
    assert str(refused.value) == "refused by policy.eval_splits ([val, test]): the run asks an evaluation on 'train'"


def test_an_interpolation_is_refused_before_it_is_resolved_and_the_secret_appears_nowhere(site, monkeypatch):
    secret = secrets.token_hex(8)
    monkeypatch.setenv("PETITE_TEST_SITE_SECRET", secret)
    config = sections()
    config["train"]["patch_scale"] = "${oc.env:PETITE_TEST_SITE_SECRET}"
    hospital = site()
    with pytest.raises(ConfigError) as refused:
        hospital.hello(config=config)
    assert str(refused.value) == ("refused by the run-config whitelist: train.patch_scale holds an interpolation "
                                  "('${…}'); a site never resolves what the server sends")
    assert secret not in str(refused.value)
    assert not list(Path(hospital.node["site-root"]).rglob("config.yaml"))  # nothing kept of that run
    config["train"]["patch_scale"] = 0.25
    config["federation"]["sites"] = ["hospital", "${oc.env:PETITE_TEST_SITE_SECRET}"]  # lists too
    with pytest.raises(ConfigError, match=r"federation.sites\[1\] holds an interpolation"):
        hospital.hello(config=config)


def test_an_unknown_key_is_refused(site):
    config = sections()
    config["train"]["evil"] = 1
    with pytest.raises(ConfigError) as refused:
        site().hello(config=config)
    assert str(refused.value) == ("refused by the run-config whitelist: unknown key train.evil (a site takes only "
                                  "keys its own petite-fl configs define)")


def test_a_data_set_name_that_leaves_the_data_root_is_refused_and_nothing_outside_is_touched(site, tmp_path):
    """Issue 26 B1: generation replaces <data root>/<data.name> whole, so '../../victim' would replace a folder
    outside the site's data root."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("a hospital's file")
    hospital = site()
    for name in ("../../victim", str(victim), "a/b", "..", "x\\..\\y"):
        config = sections()
        config["data"]["name"] = name
        with pytest.raises(ConfigError) as refused:
            hospital.hello(config=config)
        assert str(refused.value).startswith(f"refused by the run-config whitelist: data.name {name!r} is not a "
                                             "plain folder name")
    assert (victim / "keep.txt").read_text() == "a hospital's file"
    with pytest.raises(ConfigError, match="is not a plain folder name"):  # the generator's own door, the same rule
        dataset_dir(OmegaConf.create({"root": str(tmp_path / "data"), "name": "../victim"}))
    assert dataset_dir(OmegaConf.create({"root": str(tmp_path), "name": "synthetic-study"})) == \
        tmp_path / "synthetic-study"


def test_an_upload_bigger_than_allowed_is_refused_before_training(site, backbone):
    hospital = site(max_upload_bytes=1000)
    hospital.hello()
    model, meta = backbone
    hospital.endpoint.answer(BackboneOffer("run-a", model.state_dict(), meta))
    tensors, shared = adapter(backbone)
    size = 4 * sum(tensors[n].numel() for n in shared)
    with pytest.raises(PolicyError) as refused:
        hospital.endpoint.answer(train_ins(backbone, {n: tensors[n] for n in shared}))
    assert str(refused.value).startswith(f"refused by policy.max_upload_bytes (1000): the round would upload {size} "
                                         f"bytes (")
    assert str(refused.value).endswith(f") of {len(shared)} shared tensors")


def test_a_backbone_bigger_than_allowed_is_refused_and_not_stored(site, backbone):
    hospital = site(max_backbone_parameters=1000)
    hospital.hello()
    model, meta = backbone
    total = sum(t.numel() for t in model.state_dict().values())
    with pytest.raises(PolicyError) as refused:
        hospital.endpoint.answer(BackboneOffer("run-a", model.state_dict(), meta))
    assert str(refused.value) == (f"refused by policy.max_backbone_parameters (1000): the offered backbone has "
                                  f"{total} parameters")
    assert not list(Path(hospital.node["site-root"]).rglob("*.safetensors"))


def test_a_backbone_whose_config_describes_a_bigger_model_is_refused_before_it_is_built(site, backbone):
    model, meta = backbone
    hospital = site(max_backbone_parameters=3_000_000)  # the tiny UNETR's tensors (1.9 M) pass
    hospital.hello()
    wide = {**meta, "config": {**meta["config"], "mlp_dim": 2000}}  # 12 × 2 × 96 × 2000 more weights
    with pytest.raises(PolicyError, match=r"^refused by policy.max_backbone_parameters \(3000000\): the offered "
                                          r"backbone's config describes \d+ parameters$"):
        hospital.endpoint.answer(BackboneOffer("run-a", model.state_dict(), wide))


@pytest.mark.parametrize(("policy", "line"), [
    ({"require_secagg": True},
     "refused by policy.require_secagg (true): the run does not use SecAgg+ (federation.secagg.enabled=false)"),
    ({"require_dp": "central"},
     "refused by policy.require_dp (central): the run has no differential privacy (federation.dp.mode=off)"),
    ({"require_dp": "client"},
     "refused by policy.require_dp (client): the run does not clip updates at the sites (federation.dp.mode=off)"),
])
def test_a_run_without_the_required_protection_is_refused(site, policy, line):
    with pytest.raises(PolicyError) as refused:
        site(**policy).hello()
    assert str(refused.value) == line


def test_a_round_that_would_leave_without_secagg_is_refused_though_the_run_declared_it(site, backbone):
    hospital = site(require_secagg=True)
    hospital.hello("federation.secagg.enabled=true")
    tensors, shared = adapter(backbone)
    with pytest.raises(PolicyError) as refused:
        hospital.endpoint.answer(train_ins(backbone, {n: tensors[n] for n in shared}))
    assert str(refused.value) == ("refused by policy.require_secagg (true): this round's update would leave without "
                                  "SecAgg+")


def test_the_site_uploads_what_its_own_spec_shares_whatever_names_the_server_lists(site, backbone):
    hospital = site(min_samples_per_update=2)
    hospital.hello("federation.local_steps=2")
    model, meta = backbone
    hospital.endpoint.answer(BackboneOffer("run-a", model.state_dict(), meta))
    tensors, shared = adapter(backbone)
    assert set(shared) < set(tensors)  # shared-encoder: the decoder's PEFT stays at the site
    # the server lists every trainable tensor, the decoder's personal ones included
    reply = hospital.endpoint.answer(train_ins(backbone, tensors, steps=2))
    assert sorted(reply.tensors) == sorted(shared)


def test_a_train_message_that_skips_flowers_secagg_protocol_is_refused(tmp_path, manifest, backbone):
    """The server declares SecAgg+ in the round's fields but sends a plain train message: the site's
    ClientApp sees that Flower's SecAgg+ mod did not carry it, and refuses in its log and reply."""
    from flower_grid import InProcessGrid

    from petite_fl.federation.flower.app import client_app

    grid = InProcessGrid(client_app, {}, [Site(tmp_path / "state", manifest, require_secagg=True).node])

    def send(ins, kind: str):
        return next(iter(grid.send_and_receive([grid.create_message(encode(ins), kind, 1000, "g")])))

    assert not send(Hello("run-a", sections("federation.secagg.enabled=true")), "query.hello").has_error()
    tensors, shared = adapter(backbone)
    reply = send(train_ins(backbone, {n: tensors[n] for n in shared}, secagg_range=8.0), "train")
    assert reply.has_error()
    assert reply.error.reason == ("site hospital: refused by policy.require_secagg (true): this train message does "
                                  "not run Flower's SecAgg+ protocol")


# -- where the policy comes from ------------------------------------------------------------------


def test_a_deployed_site_without_a_policy_gets_the_safe_defaults_and_a_partition_the_simulation_one():
    assert policy_for_node({"site": "scanner1", "site-root": "/x"}) == SitePolicy()
    assert policy_for_node({"partition-id": 0, "num-partitions": 2}) == SIMULATION
    assert SIMULATION.eval_splits == ("val", "test")  # simulated sites never evaluate on train either
    with pytest.raises(PolicyError, match="'train'"):
        SIMULATION.check_splits(("test", "train"))


def test_the_policy_travels_in_the_node_config_from_the_site_yaml(tmp_path):
    yaml = tmp_path / "hospital.yaml"
    yaml.write_text((Path(__file__).resolve().parent.parent / "client" / "sites" / "scanner3.yaml").read_text()
                    .replace("require_secagg: false", "require_secagg: true"))
    node = site_deployment(str(yaml)).node_config()
    assert policy_for_node(node) == SitePolicy(require_secagg=True)
    for i in range(1, 6):  # the shipped examples state the defaults the code has
        assert site_deployment(f"scanner{i}").policy == SitePolicy()


@pytest.mark.parametrize(("policy", "message"), [
    ({"max_uploads": 5}, r"policy: unknown key\(s\) max_uploads \(allowed: strategies, "),
    ({"eval_splits": ["test", "train"]}, r"policy.eval_splits: 'train' is never allowed"),
    ({"strategies": ["pooled"]}, r"policy.strategies: unknown 'pooled'"),
    ({"peft_methods": ["lora", "dora"]}, r"policy.peft_methods: unknown 'dora'"),
    ({"min_samples_per_update": 0}, r"policy.min_samples_per_update must be a whole number ≥ 1, got 0"),
    ({"require_dp": "yes"}, r"policy.require_dp must be one of none, central, client"),
])
def test_a_bad_policy_is_refused_in_one_line(policy, message):
    with pytest.raises(PetiteError, match=message):
        SitePolicy.from_mapping(policy)


# -- where a site's curves go -----------------------------------------------------------------------


def test_a_deployed_site_keeps_its_own_tracking_whatever_tracking_the_server_sends(site, tmp_path):
    """The attack: a coordinator names its own MLflow server in the hello, to receive every site's curves."""
    config = {**sections(), "tracking": {"name": "mlflow", "uri": "http://coordinator.example/", "experiment": "x"}}
    site().hello(config=config)
    folder = tmp_path / "state" / "hospital" / "runs" / "run-a"
    assert OmegaConf.to_container(OmegaConf.load(folder / "config.yaml").tracking) == {"name": "tensorboard"}
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert not (tmp_path / "state" / "hospital" / "mlflow").exists()  # where the site's own MLflow store would be


def test_a_sites_own_tracking_travels_in_its_node_config_from_the_site_yaml(tmp_path, manifest):
    yaml = tmp_path / "hospital.yaml"
    yaml.write_text((Path(__file__).resolve().parent.parent / "client" / "sites" / "scanner3.yaml").read_text()
                    + "tracking: {name: none}\n")
    node = site_deployment(str(yaml)).node_config()
    hospital = Site(tmp_path / "state", manifest)
    hospital.endpoint = SiteEndpoint({**hospital.node, "tracking": node["tracking"]}, {})
    hospital.hello(config={**sections(), "tracking": {"name": "tensorboard"}})
    assert not list((tmp_path / "state").rglob("events.out.tfevents.*"))
    assert site_deployment("scanner3").tracking == {"name": "tensorboard"}  # the shipped examples: the default
    yaml.write_text(yaml.read_text().replace("tracking: {name: none}", "tracking: {name: wandb}"))
    with pytest.raises(ConfigError, match=r"site config '.*hospital.yaml': tracking.name: unknown tracker 'wandb'"):
        site_deployment(str(yaml))
