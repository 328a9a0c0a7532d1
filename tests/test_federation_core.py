"""The Flower-free federation core: typed messages, the in-process transport, and one algorithm.

The same coordinator and site code run over Flower (here Flower's real ClientApp behind an
in-process Grid) and over `LocalTransport`; both must give the same global adapter, so the
overhead benchmark's plain loop measures the very algorithm Flower runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from safetensors.torch import load_file
from test_federation_run import NODES, federate, run_config

from petite_fl.errors import ConfigError
from petite_fl.federation.fields import Unreadable
from petite_fl.federation.flower.codec import decode, encode
from petite_fl.federation.messages import (
    PROTOCOL,
    BackboneRes,
    EvaluateIns,
    EvaluateRes,
    Hello,
    HelloRes,
    ProtocolMismatch,
    TrainIns,
    TrainRes,
)
from petite_fl.federation.server.coordinator import Coordinator
from petite_fl.federation.transport import LocalTransport
from petite_fl.runconfig import compose_run, site_config


@pytest.fixture(scope="module")
def cache(federation_cache) -> Path:
    return federation_cache


@pytest.mark.parametrize("transport", ["float32", "bfloat16"])
def test_the_plain_loop_and_flower_run_the_same_algorithm(cache, transport):
    extra = {"strategy": "fedavg", "federation.rounds": 1}
    wire = f"federation.val.patches=4 federation.transport={transport}"
    flower, _ = federate(run_config(cache, **extra, **{"federation.run_name": f"core-flower-{transport}",
                                                       "overrides": wire}))
    rc = run_config(cache, **extra, **{"federation.run_name": f"core-plain-{transport}",
                                       "overrides": f"{wire} federation.site_root={cache}/plain-{transport}"})
    plain = Coordinator(compose_run(rc), LocalTransport(NODES), quiet=True).run()
    a = load_file(Path(flower["run_dir"]) / "global-adapter.safetensors")
    b = load_file(Path(plain["run_dir"]) / "global-adapter.safetensors")
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain["test_mean"]["psnr"] == pytest.approx(flower["test_mean"]["psnr"], abs=1e-6)
    assert plain["sites"]["scanner5"]["backbone_bytes"] > 0  # the backbone went to the in-process sites too


def test_the_plain_loop_refuses_flower_protocols(cache):
    rc = run_config(cache, **{"strategy": "fedavg", "federation.dp.mode": "server"})
    with pytest.raises(ConfigError, match="Flower's protocols"):
        Coordinator(compose_run(rc), LocalTransport(NODES), quiet=True).run()


def test_the_core_imports_no_flower():
    code = ("import sys, petite_fl.federation.server.coordinator, petite_fl.federation.site.endpoint, "
            "petite_fl.federation.transport, petite_fl.federation.server.arms, petite_fl.federation.messages; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'flwr'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_core_module_imports_flower_even_lazily():
    """Not only at import time: no function of the core reaches for a record either (the codec is the edge's)."""
    import ast

    import petite_fl.federation as core

    root = Path(core.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if "flower" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(root)}:{node.lineno} {n}" for n in names
                      if n.split(".")[0] == "flwr" or n.startswith("petite_fl.federation.flower")]
    assert found == []


def _train_ins(**changes) -> TrainIns:
    base = {"run": "r", "round": 1, "rounds": 2, "steps": 3, "sha256": "a" * 64, "validate": True,
            "uniform_weight": False, "tensors": {"x.lora.A": torch.ones(2, 3)}}
    return TrainIns(**{**base, **changes})


@pytest.mark.parametrize("message", [
    Hello("run-1", {"seed": 0, "federation": {"sites": ["scanner4"]}}),
    _train_ins(), _train_ins(transport="bfloat16"), _train_ins(clipping_norm=0.5, secagg_range=8.0),
    EvaluateIns("r", 2, "b" * 64, ("val", "test"), {"x": torch.zeros(4)}),
])
def test_every_instruction_reads_back_as_it_was_sent(message):
    back = decode(type(message), encode(message))
    for field in message.__dataclass_fields__:
        sent, got = getattr(message, field), getattr(back, field)
        if field == "tensors":
            assert sent.keys() == got.keys()
            assert all(torch.allclose(sent[k].float(), got[k], atol=1e-2) for k in sent)
        else:
            assert got == sent, field


def test_replies_read_back_in_both_layouts():
    for ins in (_train_ins(), _train_ins(clipping_norm=0.5)):
        res = TrainRes({"x.lora.A": torch.full((2, 3), 0.25)}, 7, "c" * 64, {"train_loss": 0.5})
        back = decode(TrainRes, encode(res, ins), ins)
        assert (back.num_examples, back.backbone_sha256, back.metrics) == (7, "c" * 64, {"train_loss": 0.5})
        assert torch.equal(back.tensors["x.lora.A"], res.tensors["x.lora.A"])
    hello = HelloRes("scanner4", ("a" * 64,), 3, "cpu")
    assert decode(HelloRes, encode(hello)) == hello
    assert decode(BackboneRes, encode(BackboneRes("d" * 64))).stored == "d" * 64
    ev = EvaluateRes({"test_psnr": 30.0, "test_subject_psnr": [29.0, 31.0]}, "/site/adapter.safetensors")
    assert decode(EvaluateRes, encode(ev)) == ev


@pytest.mark.parametrize(("config", "why"), [
    ({"held": "", "num_examples": 3, "device": "cpu"}, "missing 'site'"),
    ({"site": "scanner4", "held": "", "num_examples": "3", "device": "cpu"}, "'num_examples' must be a whole"),
    ({"site": "scanner4", "held": "", "num_examples": 0, "device": "cpu"}, "'num_examples' must be a whole"),
    ({"site": "", "held": "", "num_examples": 3, "device": "cpu"}, "'site' must be a non-empty string"),
])
def test_a_malformed_hello_reply_is_one_line_naming_the_field(config, why):
    versions = {"protocol": PROTOCOL, "petite_fl": "0.1.0"}  # of this protocol: its other fields are read
    with pytest.raises(Unreadable, match=why):
        decode(HelloRes, RecordDict({"config": ConfigRecord({**versions, **config})}))


def test_a_train_reply_without_a_weight_a_hash_or_with_a_list_metric_is_unreadable():
    ins = _train_ins()
    good = encode(TrainRes({"x.lora.A": torch.ones(2, 3)}, 4, "c" * 64), ins)
    missing = RecordDict({"arrays": good.array_records["arrays"], "config": good.config_records["config"],
                          "metrics": MetricRecord({"train_loss": 1.0})})
    with pytest.raises(Unreadable, match="num-examples"):
        decode(TrainRes, missing, ins)
    bad = RecordDict({"arrays": good.array_records["arrays"], "metrics": good.metric_records["metrics"],
                      "config": ConfigRecord({"backbone_sha256": 5})})
    with pytest.raises(Unreadable, match="backbone_sha256"):
        decode(TrainRes, bad, ins)
    listed = RecordDict({"arrays": good.array_records["arrays"], "config": good.config_records["config"],
                         "metrics": MetricRecord({"num-examples": 4, "val_psnr": [1.0, 2.0]})})
    with pytest.raises(Unreadable, match="'val_psnr' is not a number"):
        decode(TrainRes, listed, ins)
    counted = RecordDict({"arrays": good.array_records["arrays"], "config": good.config_records["config"],
                          "metrics": MetricRecord({"num-examples": 4, "val_subjects": 0})})
    with pytest.raises(Unreadable, match="'val_subjects' must be a whole number"):
        decode(TrainRes, counted, ins)


def test_a_site_keeps_its_own_node_settings_over_the_runs():
    sections = {"seed": 0, "data": {"root": "/server/data"}, "train": {"device": "cuda"}, "peft": {},
                "strategy": {}, "federation": {"site_root": "/server/sites"}}
    simulated = site_config(sections, {"partition-id": 0})
    assert (simulated.data.root, simulated.federation.site_root) == ("/server/data", "/server/sites")
    deployed = site_config(sections, {"site": "scanner4", "site-root": "/site/state", "data-root": "/site/data",
                                      "device": "cpu"})
    assert (deployed.data.root, deployed.federation.site_root, deployed.train.device) == (
        "/site/data", "/site/state", "cpu")
    with pytest.raises(ConfigError, match="sections a site does not take"):
        site_config({**sections, "paths": {"cache": "/x"}}, {})


def test_a_deployed_site_never_takes_its_folders_from_the_run():
    """Issue 26 B1, in process: a coordinator's `data.root` / `federation.site_root` named the folder a
    deployed site generated into and swapped whole; a deployed site's folders are its own."""
    sections = {"seed": 0, "data": {"root": "/victim/parent", "name": "victim"}, "train": {}, "peft": {},
                "strategy": {}, "federation": {"site_root": "/victim/sites"}}
    own = site_config(sections, {"site": "scanner4", "site-root": "/site/state"})
    assert (own.data.root, own.federation.site_root) == ("/site/state/data", "/site/state")
    with pytest.raises(ConfigError, match=r"^site scanner4: its node config names no 'site-root'"):
        site_config(sections, {"site": "scanner4", "data-root": "/site/data"})


@pytest.mark.parametrize("run_name", ["'../../x'", "a/b", "'..'"])
def test_a_run_name_that_would_leave_its_folder_is_refused_before_any_work(run_name):
    with pytest.raises(ConfigError, match=r"federation.run_name: .* is not a name"):
        Coordinator(compose_run({"overrides": f"federation.run_name={run_name}"}), LocalTransport([]))


@pytest.mark.parametrize("site", ["..", ".", "../../etc", "/tmp/site/manifest.json"])
def test_a_sites_folder_stays_under_its_root_whatever_it_is_called(tmp_path, site):
    from petite_fl.federation.site.paths import run_folder, site_dir

    folder = site_dir(tmp_path, site)
    assert folder.parent == tmp_path and folder.name not in (".", "..")
    run = run_folder(tmp_path, "scanner4", site)
    assert run.parent == tmp_path / "scanner4" / "runs" and run.name not in (".", "..")


@pytest.mark.parametrize("run", ["../x", "..", "a/b", "run\n"])
def test_a_site_refuses_a_run_name_that_is_not_a_name(run):
    with pytest.raises(Unreadable, match=r"'run' .* is not a name"):
        decode(Hello, encode(Hello(run, {})))


def _reply_to(ins, build):
    """`read_reply` of a Flower reply to `ins` made by `build`, as a site would send it."""
    from flower_grid import outside_a_run
    from flwr.app import Message

    from petite_fl.federation.flower.transport import read_reply

    outside_a_run()
    sent = Message(content=encode(ins), dst_node_id=1000, message_type=ins.KIND, group_id="g")
    return read_reply(build(sent), ins)


@pytest.mark.parametrize(("reason", "expected"), [
    ("<class 'petite_fl.deploy.approval.AppNotApproved'>:<'site scanner4: refused app x'>",
     "site scanner4: refused app x"),
    ("\x1b[31mred\x1b[0m\nsecond line\r\x07", "[31mred [0m second line"),
    ("", "error code 7"),
    ("x" * 10_000, "x" * 399 + "…"),
])
def test_an_error_reply_is_one_clean_line(reason, expected):
    from flwr.app import Error

    from petite_fl.federation.flower.transport import SiteRefused

    with pytest.raises(SiteRefused) as refused:
        _reply_to(Hello("r", {}), lambda sent: sent.create_error_reply(Error(7, reason)))
    assert str(refused.value) == expected and "\x1b" not in str(refused.value)


def test_a_reply_of_another_kind_or_layout_is_unreadable_not_a_crash():
    from flwr.app import Message

    ins = _train_ins()
    hello = HelloRes("scanner4", (), 3, "cpu")
    with pytest.raises(ProtocolMismatch, match="a site no versioned wire protocol"):  # a train reply as a hello's
        _reply_to(Hello("r", {}), lambda sent: Message(
            encode(TrainRes({"x.lora.A": torch.ones(2, 3)}, 4, "c" * 64), ins), reply_to=sent))
    assert _reply_to(Hello("r", {}), lambda sent: Message(encode(hello), reply_to=sent)) == hello
