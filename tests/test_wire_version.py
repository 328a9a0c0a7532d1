"""The versioned wire: a site and a coordinator of different petite-fl wire protocols refuse each other at the
hello, in one line naming both versions, before any backbone moves.

Each peer of another version is laid out as it would reach the real code: a hello as today's (unversioned)
coordinator sends it, or as a future one (another protocol, other fields), through petite-fl's real ClientApp;
a hello reply as today's site sends it, or a future one's, read by the real coordinator through a real
Flower grid (the real site answers, its reply is then laid out as the other version's).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from petite_fl import __version__
from petite_fl.errors import PetiteError
from petite_fl.federation.flower.app import client_app
from petite_fl.federation.flower.client import SITE_REFUSED
from petite_fl.federation.flower.codec import decode, encode
from petite_fl.federation.messages import PROTOCOL, Hello, HelloRes, ProtocolMismatch
from tests.conftest import write_site
from tests.test_outgoing_errors import node
from tests.test_site_policy import backbone, sections  # noqa: F401 - `backbone` is a fixture

OURS = f"petite-fl wire protocol {PROTOCOL} (petite-fl {__version__})"
BEFORE = "no versioned wire protocol (a petite-fl from before wire protocol 1)"
NEXT = PROTOCOL + 1  # a protocol this code does not speak
ADVICE = "; install the same petite-fl version at both"


def hello_record(**fields) -> RecordDict:
    """A hello's records as a coordinator of another version lays them out."""
    return RecordDict({"config": ConfigRecord(fields)})


def today(run: str = "run-a") -> dict:
    """The hello of a coordinator from before versions: its run and its settings, nothing else."""
    return {"run": run, "config": json.dumps(sections())}


def to_site(tmp_path: Path, content: RecordDict) -> Message:
    from flower_grid import outside_a_run

    outside_a_run()
    message = Message(content=content, dst_node_id=1000, message_type="query.hello", group_id="g")
    config = node(tmp_path, write_site(tmp_path / "data"))
    return client_app(message, Context(run_id=1, node_id=1000, node_config=config, state=RecordDict(),
                                       run_config={}))


@pytest.mark.parametrize(("fields", "theirs"), [
    (today(), BEFORE),                                                             # today's coordinator
    ({"protocol": NEXT, "petite_fl": "9.0.0", **today()}, f"{NEXT} (petite-fl 9.0.0)"),
    ({"protocol": NEXT, "petite_fl": "9.0.0", "settings": "{}"}, f"{NEXT} (petite-fl 9.0.0)"),
    ({"protocol": NEXT, "petite_fl": "9.0\x1b[2J\nsite x: ok", **today()}, f"{NEXT} (petite-fl unknown)"),
    ({"protocol": str(PROTOCOL), "petite_fl": __version__, **today()}, "an unreadable wire protocol version"),
    ({"protocol": True, "petite_fl": __version__, **today()}, "an unreadable wire protocol version"),
], ids=["unversioned", "newer", "newer-other-fields", "hostile-version", "text-protocol", "bool-protocol"])
def test_a_site_refuses_a_hello_of_another_protocol_naming_both_versions(tmp_path, capsys, fields, theirs):
    """Read before any other field: a future hello without `run` or `config` still gets the version line, and
    the site does nothing for it (no run folder)."""
    reply = to_site(tmp_path, hello_record(**fields))
    assert reply.has_error() and reply.error.code == SITE_REFUSED
    assert reply.error.reason == f"site hospital: refused: this site speaks {OURS}, the coordinator {theirs}{ADVICE}"
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("config.yaml"))
    assert "this site speaks" in capsys.readouterr().err  # the site's own log has the line too


def test_a_hello_of_the_same_protocol_is_answered_with_this_sites_versions(tmp_path):
    reply = to_site(tmp_path, encode(Hello("run-a", sections())))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    said = dict(reply.content.config_records["config"])
    assert (said["protocol"], said["petite_fl"]) == (PROTOCOL, __version__)


@pytest.mark.parametrize(("said", "line"), [
    ({"site": "scanner4", "held": "", "num_examples": 3, "device": "cpu"}, f"site scanner4 {BEFORE}"),
    ({"protocol": NEXT, "petite_fl": "9.0.0", "site": "scanner4", "scans": 3},
     f"site scanner4 {NEXT} (petite-fl 9.0.0)"),
    ({"protocol": NEXT, "site": "../etc\x1b[2J"}, f"a site {NEXT} (petite-fl unknown)"),
], ids=["unversioned", "newer-other-fields", "hostile-name"])
def test_the_coordinator_reads_a_hello_replys_protocol_before_any_other_field(said, line):
    with pytest.raises(ProtocolMismatch) as refused:
        decode(HelloRes, RecordDict({"config": ConfigRecord(said)}))
    assert str(refused.value) == f"this coordinator speaks {OURS}, {line}{ADVICE}"


def _laid_out_as(versions: dict[int, dict | None]):
    """The real ClientApp, whose hello replies are then laid out as a site of another version sends them:
    None drops the version keys (today's sites), a mapping replaces them."""
    def app(message: Message, context: Context) -> Message:
        reply = client_app(message, context)
        if context.node_id in versions and message.metadata.message_type == "query.hello" and not reply.has_error():
            said = {k: v for k, v in reply.content.config_records["config"].items()
                    if k not in ("protocol", "petite_fl")}
            reply.content.config_records["config"] = ConfigRecord({**said, **(versions[context.node_id] or {})})
        return reply
    return app


def test_the_coordinator_leaves_out_a_site_of_another_protocol_and_sends_it_no_backbone(
        tmp_path, backbone):  # noqa: F811 - the imported fixture
    """scanner5 answers as today's sites do (no version): one line at the coordinator, and the backbone goes
    to scanner4 only. Then both other-version sites: the run stops at the hello, nothing but hellos sent."""
    from flower_grid import InProcessGrid

    from petite_fl.federation.flower.transport import FlowerTransport
    from petite_fl.federation.server.coordinator import Coordinator
    from petite_fl.runconfig import compose_run

    rc = {"federation.sites": "[scanner4,scanner5]", "federation.min_sites": 1, "federation.wait_for_sites": 1,
          "paths.cache": str(tmp_path / "cache"), "data": "tiny", "train": "tiny"}
    nodes = [{**node(tmp_path, write_site(tmp_path / site / "data"), tmp_path / site), "site": site}
             for site in ("scanner4", "scanner5")]
    grid = InProcessGrid(_laid_out_as({1001: None}), rc, nodes)
    coordinator = Coordinator(compose_run(rc), FlowerTransport(grid), quiet=True)
    lines: list[str] = []
    coordinator.say = lines.append
    infos = coordinator.hello("run-v")
    assert [i.site for i in infos.values()] == ["scanner4"]
    assert f"node 1001 left out: this coordinator speaks {OURS}, site scanner5 {BEFORE}{ADVICE}" in lines, lines
    model, meta = backbone
    coordinator.distribute(infos, "run-v", model, meta)
    offered = [m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == "query.backbone"]
    assert offered == [1000] and not list((tmp_path / "scanner5").rglob("*.safetensors"))

    future = {"protocol": NEXT, "petite_fl": "9.0.0"}
    grid = InProcessGrid(_laid_out_as({1000: future, 1001: None}), rc, nodes)
    coordinator = Coordinator(compose_run(rc), FlowerTransport(grid), quiet=True)
    coordinator.say = lambda text: None
    with pytest.raises(PetiteError, match=rf"0 site\(s\) ready, 1 needed: node 1000: this coordinator speaks .*, "
                                        rf"site scanner4 {NEXT} \(petite-fl 9\.0\.0\)"):
        coordinator.hello("run-w")
    assert {m.metadata.message_type for m in grid.sent} == {"query.hello"}


# -- the protocol number follows the layout -------------------------------------------------------------------

#: the records and keys of every message, per protocol: a change of the layout without a new protocol fails below
LAYOUTS = {1: {
    "query.hello": {"config:config": ["config", "petite_fl", "protocol", "run"]},
    "query.hello reply": {"config:config": ["device", "held", "num_examples", "petite_fl", "protocol", "site"]},
    "query.backbone": {"config:config": ["meta", "run"], "array:arrays": 1},
    "query.backbone reply": {"config:config": ["stored"]},
    "train": {"config:config": ["max_weight", "round", "rounds", "run", "sha256", "steps", "transport", "validate",
                                "weight"], "array:arrays": 1},
    "train reply": {"config:config": ["backbone_sha256"], "metric:metrics": ["num-examples", "train_loss"],
                    "array:arrays": 1},
    "train legacy": {"config:fitins.config": ["clipping_norm", "max_weight", "names", "round", "rounds", "run",
                                              "secagg_clipping_range", "sha256", "steps", "transport", "validate",
                                              "weight"], "array:fitins.parameters": 1},
    "train legacy reply": {"config:fitres.metrics": ["backbone_sha256", "train_loss"],
                           "config:fitres.status": ["code", "message"],
                           "metric:fitres.num_examples": ["num_examples"], "array:fitres.parameters": 1},
    "evaluate": {"config:config": ["round", "run", "sha256", "splits", "transport"], "array:arrays": 1},
    "evaluate reply": {"config:config": ["adapter"], "metric:metrics": ["test_psnr"]},
}}


def _layout(content: RecordDict) -> dict:
    records = (("config", content.config_records), ("metric", content.metric_records), ("array", content.array_records))
    return {f"{kind}:{name}": len(record) if kind == "array" else sorted(record) for kind, found in records
            for name, record in found.items()}


def test_the_wire_layout_is_the_one_its_protocol_number_names():
    """A message's records or keys changed without a new `messages.PROTOCOL` would let two petite-fl versions
    pass the hello and misread each other."""
    import torch

    from petite_fl.federation.messages import BackboneOffer, BackboneRes, EvaluateIns, EvaluateRes, TrainIns, TrainRes

    t = {"x.lora.A": torch.ones(2, 3)}
    plain = TrainIns("r", 1, 2, 3, "a" * 64, True, False, t, max_weight=4)
    legacy = TrainIns("r", 1, 2, 3, "a" * 64, True, False, t, clipping_norm=0.5, secagg_range=8.0, max_weight=4)
    res = TrainRes(t, 3, "a" * 64, {"train_loss": 1.0})
    layout = {"query.hello": encode(Hello("r", {})), "query.hello reply": encode(HelloRes("s", (), 1, "cpu")),
              "query.backbone": encode(BackboneOffer("r", t, {"model": "m", "config": {}, "sha256": "a" * 64})),
              "query.backbone reply": encode(BackboneRes("a" * 64)), "train": encode(plain),
              "train reply": encode(res, plain), "train legacy": encode(legacy),
              "train legacy reply": encode(res, legacy),
              "evaluate": encode(EvaluateIns("r", 2, "a" * 64, ("val",), t)),
              "evaluate reply": encode(EvaluateRes({"test_psnr": 1.0}, "a"))}
    assert PROTOCOL in LAYOUTS, f"record protocol {PROTOCOL}'s layout in LAYOUTS"
    assert {k: _layout(v) for k, v in layout.items()} == LAYOUTS[PROTOCOL], (
        f"the wire layout changed: bump messages.PROTOCOL (now {PROTOCOL}) and record the new layout in LAYOUTS")
