"""What a site tells the coordinator when it fails: nothing of an exception's text, whatever it holds.

Each attack puts identifying text (a manifest path with spaces, a relative and a Windows path, a
subject's name) into an error at a site and sends the site a real Flower message through petite-fl's
real ClientApp (`flower.app.client_app`, the object a SuperNode runs): the error reply holds none of
it, the site's own log (stderr) holds all of it. Also: peer-chosen names are printed escaped at the
coordinator and at the site, and no reply carries the site's absolute paths.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from petite_fl.federation.flower.app import client_app
from petite_fl.federation.flower.codec import encode
from petite_fl.federation.messages import BackboneOffer, EvaluateIns, Hello, HelloRes
from tests.conftest import write_site
from tests.test_site_policy import adapter, backbone, sections  # noqa: F401 - `backbone` is a fixture

#: a manifest folder as hospitals name them, a Windows path, a DICOM-style patient name
STUDY = "PET Studies/DOE John 1957-03-02"
WINDOWS = "C:\\PET Studies\\DOE John\\x.nii.gz"
SUBJECT = "DOE^JOHN"
IDENTIFYING = ("PET Studies", "DOE John", "1957-03-02", "early.nii.gz", "x.nii.gz", "DOE^JOHN", "C:\\", "Studies")
TEXT = f"cannot open '{STUDY}/early.nii.gz' (subject \"{SUBJECT}\") nor ../{STUDY}/early.nii.gz nor {WINDOWS}"


def node(tmp_path: Path, manifest: Path | str, site_root: Path | None = None) -> dict:
    return {"site": "hospital", "site-root": str(site_root or tmp_path / "state"), "manifest": str(manifest),
            "device": "cpu"}


def send(node_config: dict, ins, kind: str, state: RecordDict | None = None) -> Message:
    """One instruction through the real ClientApp, as a SuperNode hands it a Flower message."""
    from flower_grid import outside_a_run

    outside_a_run()
    message = Message(content=encode(ins), dst_node_id=1000, message_type=kind, group_id="g")
    context = Context(run_id=1, node_id=1000, node_config=node_config, state=state or RecordDict(), run_config={})
    return client_app(message, context)


def assert_private(reply: Message, *more: str) -> str:
    assert reply.has_error()
    reason = reply.error.reason
    for secret in (*IDENTIFYING, *more):
        assert secret not in reason, (secret, reason)
    return reason


def study_site(tmp_path: Path, rows: list[dict]) -> Path:
    """A site whose manifest lives in a folder named after a patient, its rows as given."""
    manifest = write_site(tmp_path / STUDY)
    data = json.loads(manifest.read_text())
    data["subjects"] = rows + data["subjects"][len(rows):]
    manifest.write_text(json.dumps({**data, "scanner": "scanner5"}))
    return manifest


@pytest.mark.parametrize("row, kind", [
    ({"id": "sub-001", "split": "train", "input": "early.nii.gz", "target": "sub-001_target.nii.gz"},
     "file not found"),                                                        # a path with spaces
    ({"id": SUBJECT, "split": "train", "input": WINDOWS, "target": "sub-001_target.nii.gz"},
     "file not found"),                                                        # a Windows path, a subject name
    ({"id": SUBJECT, "split": "train", "input": f"../../{STUDY}/early.nii.gz", "target": "sub-001_target.nii.gz"},
     "file not found"),                                                        # a relative path
    ({"id": SUBJECT, "split": "trian", "input": "early.nii.gz", "target": "x.nii.gz"},
     "unknown split"),                                                         # a manifest refusal naming the subject
], ids=["spaces", "windows-and-subject", "relative", "subject-in-manifest-error"])
def test_a_data_error_reaches_the_coordinator_as_its_kind_and_row_only(tmp_path, capsys, row, kind):
    manifest = study_site(tmp_path, [row])
    reply = send(node(tmp_path, manifest), Hello("run-a", sections()), "query.hello")
    reason = assert_private(reply, str(tmp_path))
    assert reason.startswith("site hospital: refused (DataError: ") and kind in reason and "manifest row 1" in reason
    log = capsys.readouterr().err
    assert "DOE John 1957-03-02" in log and (row["input"] in log or SUBJECT in log)  # the site's log has it all


@pytest.mark.parametrize("error", [OSError, KeyError, RuntimeError, ValueError, FileNotFoundError])
def test_any_other_exception_reaches_the_coordinator_as_its_class_only(tmp_path, capsys, monkeypatch, error):
    """Not a PetiteError: before, it left the ClientApp and Flower's runner sent its text
    (`<class 'KeyError'>:<'...'>`) to the coordinator."""
    from petite_fl.federation.site.worker import SiteWorker

    def fails(self):
        raise error(TEXT)

    monkeypatch.setattr(SiteWorker, "hello", fails)
    reply = send(node(tmp_path, write_site(tmp_path / "data")), Hello("run-a", sections()), "query.hello")
    reason = assert_private(reply, str(tmp_path), "cannot open")
    assert reason == f"site hospital: site error: {error.__name__} (the whole error is in the site's own log)"
    log = capsys.readouterr().err
    assert all(part in log for part in (f"{STUDY}/early.nii.gz", SUBJECT, "x.nii.gz")) and "Traceback" in log


def test_an_os_error_with_the_sites_path_reaches_the_coordinator_as_its_class_only(tmp_path, capsys):
    """A real OSError: the site root lies under a file of the patient's folder (NotADirectoryError)."""
    (tmp_path / "PET Studies").mkdir()
    (tmp_path / STUDY).write_text("not a folder")
    reply = send(node(tmp_path, write_site(tmp_path / "data"), tmp_path / STUDY / "state"),
                 Hello("run-a", sections()), "query.hello")
    reason = assert_private(reply, str(tmp_path))
    assert "NotADirectoryError" in reason or "FileExistsError" in reason, reason
    assert "DOE John 1957-03-02" in capsys.readouterr().err


def test_nothing_escapes_the_client_app_to_flowers_own_error_text(tmp_path, capsys):
    """A message type no handler takes makes Flower's ClientApp raise; it is an error reply at the boundary."""
    reply = send(node(tmp_path, write_site(tmp_path / "data")), Hello("run-a", sections()), "query.DOE_John")
    assert reply.error.reason == "site hospital: site error: ValueError (the whole error is in the site's own log)"
    assert "DOE_John" in capsys.readouterr().err


def test_a_policy_refusal_still_reads_whole_at_the_coordinator(tmp_path, capsys):
    from petite_fl.federation.site.policy import NODE_KEY, SitePolicy

    config = {**node(tmp_path, write_site(tmp_path / "data")),
              NODE_KEY: SitePolicy.from_mapping({"require_secagg": True}).to_json()}
    reply = send(config, Hello("run-a", sections()), "query.hello")
    assert reply.error.reason == ("site hospital: refused by policy.require_secagg (true): the run does not use "
                                  "SecAgg+ (federation.secagg.enabled=false)")


def test_the_in_process_carrier_sends_the_same_line(tmp_path, capsys):
    from petite_fl.federation.transport import LocalTransport

    manifest = study_site(tmp_path, [{"id": SUBJECT, "split": "train", "input": WINDOWS, "target": "t.nii.gz"}])
    transport = LocalTransport([node(tmp_path, manifest)])
    out = transport.exchange({1000: Hello("run-a", sections())}, "g", 10)
    assert "manifest row 1" in out.errors[1000] and not any(s in out.errors[1000] for s in IDENTIFYING)


def test_a_hostile_run_name_is_printable_and_capped(tmp_path, capsys):
    from petite_fl.federation.messages import EvaluateIns

    run = "x\x1b[31m\nsite hospital: all fine" + "y" * 5000
    reply = send(node(tmp_path, write_site(tmp_path / "data")), EvaluateIns(run, 1, "a" * 64, ("test",), {}),
                 "evaluate")
    assert "\x1b" not in reply.error.reason and "\n" not in reply.error.reason and len(reply.error.reason) <= 400


# -- printable fields ------------------------------------------------------------------------------


def test_printable_escapes_control_characters_and_caps_length():
    from petite_fl.console import printable

    assert printable("scanner4\x1b[31m\nFAKE\u202e") == "scanner4\\x1b[31m\\nFAKE\\u202e"
    assert printable("é ü 東京") == "é ü 東京"
    assert printable("x" * 100, 10) == "x" * 9 + "…"


def test_the_coordinator_prints_a_sites_name_and_device_escaped(tmp_path):
    """Two hostile sites answer the hello with ANSI codes and newlines in `site` and `device`."""
    from flower_grid import InProcessGrid
    from flwr.clientapp import ClientApp

    from petite_fl.federation.flower.transport import FlowerTransport
    from petite_fl.federation.server.coordinator import Coordinator
    from petite_fl.runconfig import compose_run

    hostile = ClientApp()
    claims = {1000: ("scanner4\x1b[31m\nserver · round 9: all sites agreed", "cpu"),
              1001: ("scanner5", "cpu\x1b[2J\nserver · sites: none")}

    @hostile.query("hello")
    def hello(message: Message, context: Context) -> Message:
        site, device = claims[context.node_id]
        return Message(encode(HelloRes(site, (), 1, device), None), reply_to=message)

    rc = {"federation.sites": "[scanner4,scanner5]", "federation.min_sites": 1, "federation.wait_for_sites": 1,
          "paths.cache": str(tmp_path / "cache")}
    grid = InProcessGrid(hostile, rc, [{"partition-id": 0}, {"partition-id": 1}])
    coordinator = Coordinator(compose_run(rc), FlowerTransport(grid), quiet=True)
    lines: list[str] = []
    coordinator.say = lines.append
    coordinator.hello("printable")
    text = "\n".join(lines)
    assert "\x1b" not in text and all("\n" not in line for line in lines), lines
    assert "scanner4\\x1b[31m\\nserver" in text and "cpu\\x1b[2J\\nserver" in text


def test_a_bundles_name_is_printed_escaped_at_the_site():
    from petite_fl.deploy.approval import AppNotApproved, check_app, describe

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("pyproject.toml", '[project]\nname = "evil\\u001b[32m\\nsite hospital: approved"\n'
                                           'version = "1.0"\n[tool.flwr.app]\npublisher = "x"\n')
    assert "\x1b" not in describe(out.getvalue()) and "\\x1b[32m\\nsite" in describe(out.getvalue())
    with pytest.raises(AppNotApproved) as refused:
        check_app(out.getvalue(), [], "hospital")
    assert "\x1b" not in str(refused.value) and "\n" not in str(refused.value)


# -- no absolute paths in replies --------------------------------------------------------------------


def test_no_reply_field_holds_the_sites_own_paths(tmp_path, backbone):  # noqa: F811 - the imported fixture
    """The site's root lies in its user's home: hello, backbone and evaluation replies name nothing of it."""
    from flwr.app import ArrayRecord, MetricRecord

    home = tmp_path / "home" / "DOE John"
    manifest = write_site(tmp_path / "data")
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "scanner": "scanner5"}))
    config = node(tmp_path, manifest, home / "petite-sites")
    state = RecordDict()
    model, meta = backbone
    tensors, shared = adapter(backbone)
    replies = [send(config, Hello("run-a", sections()), "query.hello", state),
               send(config, BackboneOffer("run-a", model.state_dict(), meta), "query.backbone", state),
               send(config, EvaluateIns("run-a", 0, meta["sha256"], ("val", "test"), {n: tensors[n] for n in shared}),
                    "evaluate", state)]
    for reply in replies:
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        for record in reply.content.values():
            if isinstance(record, (ConfigRecord, MetricRecord)):
                text = json.dumps({k: v for k, v in record.items()}, default=str)
            else:
                assert isinstance(record, ArrayRecord)
                text = " ".join(record.keys())
            assert str(home) not in text and "DOE John" not in text and str(tmp_path) not in text, text
    adapter_name = replies[-1].content.config_records["config"]["adapter"]
    assert adapter_name == "hospital/runs/run-a/adapter.safetensors"
    assert (home / "petite-sites" / adapter_name).is_file()


def test_the_coordinator_keeps_a_sites_adapter_name_and_never_follows_one_out_of_its_root(tmp_path):
    from petite_fl.federation.server.evaluation import adapter_file

    (tmp_path / "s" / "runs" / "r").mkdir(parents=True)
    (tmp_path / "s" / "runs" / "r" / "adapter.safetensors").write_bytes(b"x")
    assert adapter_file("s/runs/r/adapter.safetensors", tmp_path) == str(tmp_path / "s/runs/r/adapter.safetensors")
    assert adapter_file("other/runs/r/adapter.safetensors", tmp_path) == "other/runs/r/adapter.safetensors"
    for hostile in ("/etc/passwd", "../../etc/passwd", "s/../../x", "C:\\x\\y", None, ""):
        assert adapter_file(hostile, tmp_path) is None


def test_a_whitelisted_line_is_the_same_for_any_text():
    """The line depends on the error's class, kinds, rows and fields only: two texts, one line."""
    from petite_fl.errors import DataError
    from petite_fl.federation.site.outgoing_errors import for_coordinator

    a = DataError(f"{STUDY}/manifest.json row 3 (subject '{SUBJECT}') input: {WINDOWS}: file not found", rows=[3])
    b = DataError("elsewhere/manifest.json row 3 (subject 'sub-7') input: y.nii.gz: file not found", rows=[3])
    assert for_coordinator(a, "hospital") == for_coordinator(b, "hospital") == (
        "site hospital: refused (DataError: file not found; manifest row 3); the whole error is in the site's own log")
    assert "train.patch_scale" in for_coordinator(DataError(f"{STUDY}: train.patch_scale must be positive"), "h")


def test_a_site_named_by_a_manifest_path_is_not_named_to_the_coordinator():
    from petite_fl.federation.site.outgoing_errors import for_coordinator

    assert for_coordinator(KeyError(STUDY), f"/data/{STUDY}/manifest.json").startswith("a site: site error: KeyError")
    assert for_coordinator(KeyError(STUDY), "partition 1").startswith("site partition 1: site error: KeyError")
