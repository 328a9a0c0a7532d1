"""A site measures a coordinator's app bundle from its zip directory before anything reads it:
a small zip that unpacks to far more than a real app is refused in one line, with nothing of
it unpacked, at the SuperNode (before Flower reads the run config from it) and in the
site's own approval check; petite-fl's own bundle passes."""

from __future__ import annotations

import io
import re
import struct
import tracemalloc
import zipfile
import zlib

import pytest
from flwr.cli.build import build_fab_from_disk

from petite_fl.deploy.approval import AppNotApproved, check_app
from petite_fl.deploy.site_exec import app_folder_hash
from petite_fl.errors import ConfigError
from petite_fl.runconfig import app_dir

BOMB = 64 << 20  # 16× the default max_entry: above the bound, quick to build


def bomb(size: int = BOMB, name: str = "pyproject.toml") -> bytes:
    """A real zip whose one entry unpacks to `size` bytes of a TOML comment (deflated ~1000×)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(name, "w", force_zip64=True) as f:
        f.write(b"#")
        for _ in range((size - 1) // (1 << 20)):
            f.write(b" " * (1 << 20))
        f.write(b" " * ((size - 1) % (1 << 20)))
    return out.getvalue()


@pytest.fixture
def unpacked(monkeypatch):
    """Bytes unpacked from any zip entry while the test runs (zipfile's reader, counted)."""
    seen = [0]
    read = zipfile.ZipExtFile.read

    def counting(self, n=-1):
        data = read(self, n)
        seen[0] += len(data)
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting)
    return seen


def test_a_bundle_bomb_is_refused_from_its_zip_directory_before_anything_is_unpacked(unpacked):
    bundle, own_hash = bomb(), app_folder_hash()
    assert len(bundle) < 256 << 10
    unpacked[0] = 0
    tracemalloc.start()
    try:
        with pytest.raises(AppNotApproved) as refused:
            check_app(bundle, [own_hash], "scanner4")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(refused.value) == (
        f"site scanner4: refused the app the coordinator sent: its bundle entry 'pyproject.toml' unpacks to {BOMB} "
        "bytes, over the site's limit of 4194304 (bundle_limits.max_entry); nothing of it was installed or run")
    assert unpacked[0] == 0 and peak < 2 * len(bundle) + (1 << 20), (unpacked[0], peak)

    from petite_fl.deploy.bundle import BundleLimits, measure

    own = build_fab_from_disk(app_dir())  # the real packaged app still passes, within a fraction of every bound
    assert check_app(own, [app_folder_hash()], "scanner4") == app_folder_hash()
    limits = BundleLimits()
    assert len(own) * 100 < limits.max_bytes and len(measure(own, limits)) * 100 < limits.max_entries


def zipped(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize(("bundle", "limits", "why"), [
    (lambda: zipped({"../evil.py": b"x"}), {}, "entry '../evil.py' climbs out with '..'"),
    (lambda: zipped({"/etc/evil.py": b"x"}), {}, "entry '/etc/evil.py' is absolute"),
    (lambda: zipped({"a\\..\\evil.py": b"x"}), {}, "holds a backslash"),
    (lambda: zipped({f"f{i}.py": b"" for i in range(20)}), {"max_entries": 10}, "has 20 entries, over the site's "
     "limit of 10 (bundle_limits.max_entries)"),
    (lambda: zipped({"a.py": b"\0" * (1 << 20)}), {}, "× its compressed size, over the site's limit of 100× "
     "(bundle_limits.max_ratio)"),
    (lambda: zipped({f"{i}.py": bytes(range(256)) * 4096 for i in range(5)}, zipfile.ZIP_STORED),
     {"max_unpacked": 4 << 20, "max_bytes": 8 << 20}, "unpacks to 5242880 bytes, over the site's limit of 4194304 "
     "(bundle_limits.max_unpacked)"),
    (lambda: zipped({"a.py": bytes(range(256)) * 16}, zipfile.ZIP_STORED), {"max_bytes": 1024},
     " bytes, over the site's limit of 1024 (bundle_limits.max_bytes)"),
])
def test_each_bound_is_checked_from_the_zip_directory(bundle, limits, why, unpacked):
    from petite_fl.deploy.bundle import BundleLimits

    with pytest.raises(AppNotApproved) as refused:
        check_app(bundle(), ["ab" * 32], "scanner4", BundleLimits(**limits))
    assert why in str(refused.value) and "\n" not in str(refused.value)
    assert unpacked[0] == 0


def test_an_entry_that_unpacks_to_more_than_its_header_declares_is_refused_at_the_declared_size(unpacked):
    """Header sizes are checked by reading too: an entry whose directory says 100 bytes but whose
    stream holds 1 MiB is never read past 100 bytes."""
    data = b" " * (1 << 20)
    bundle = bytearray(zipped({"pyproject.toml": data}))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, directory entry
        at = bundle.index(signature) + offset
        assert struct.unpack_from("<I", bundle, at)[0] == len(data)
        struct.pack_into("<I", bundle, at, 100)
    with pytest.raises(AppNotApproved, match="refused the app the coordinator sent") as refused:
        check_app(bytes(bundle), ["ab" * 32], "scanner4")
    assert "\n" not in str(refused.value) and unpacked[0] <= 100


def test_bundle_limits_in_the_site_config(tmp_path):
    from petite_fl.deploy.bundle import BundleLimits
    from petite_fl.deploy.site import site_deployment

    base = ("name: h\nmanifest: null\ndevice: cpu\ncache: /tmp/c\nserver: 127.0.0.1:1\nca_cert: /c\n"
            "private_key: null\nport: 1\n")
    (tmp_path / "none.yaml").write_text(base)
    assert site_deployment(str(tmp_path / "none.yaml")).bundle_limits == BundleLimits()
    (tmp_path / "some.yaml").write_text(base + "bundle_limits: {max_entry: 1048576, max_ratio: 20}\n")
    assert site_deployment(str(tmp_path / "some.yaml")).bundle_limits == BundleLimits(max_entry=1 << 20, max_ratio=20)
    for bad, why in (("{max_entry: -1}", "bundle_limits.max_entry must be a positive number"),
                     ("{max_size: 1}", "bundle_limits: unknown key(s) max_size"),
                     ("{max_entries: 2.5}", "bundle_limits.max_entries must be a whole number")):
        (tmp_path / "bad.yaml").write_text(base + f"bundle_limits: {bad}\n")
        with pytest.raises(ConfigError, match=re.escape(why)):
            site_deployment(str(tmp_path / "bad.yaml"))


def test_the_sites_supernode_refuses_a_bomb_before_flower_reads_the_run_config_from_it(unpacked):
    """Flower's own step that pulls a message and, for a new run, its bundle (and reads the run
    config from the bundle), run with a real node state and object store: the site's gate in
    front of it answers the message with the one-line refusal; nothing of the bundle is unpacked
    and the run is not stored."""
    from flower_grid import outside_a_run
    from flwr.app import Message, RecordDict
    from flwr.supercore.fab import Fab
    from flwr.supercore.inflatable.inflatable_object import get_object_tree
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supernode import start_client_internal as flower
    from flwr.supernode.nodestate import NodeStateFactory

    from petite_fl.deploy.bundle import BundleLimits
    from petite_fl.deploy.site_node import BundleGate

    outside_a_run()
    store = ObjectStoreFactory().store()
    state = NodeStateFactory(objectstore_factory=ObjectStoreFactory()).state()
    state.set_node_id(7)
    message = Message(RecordDict(), dst_node_id=7, message_type="query")
    message.metadata.__dict__["_run_id"] = 11  # a message of run 11, as the SuperLink sends it
    message.metadata.__dict__["_message_id"] = message.object_id
    bundle = bomb()
    pulled = []
    gate = BundleGate("scanner4", [app_folder_hash()], BundleLimits(), flower._pull_and_store_message)
    unpacked[0] = 0
    tracemalloc.start()
    try:
        run_id = gate.pull(state=state, object_store=store, node_config={},
                           receive=lambda: (message, get_object_tree(message)),
                           get_run=lambda run_id: Run.create_empty(run_id),
                           get_fab=lambda h, r: pulled.append(h) or Fab("0" * 64, bundle, {}),
                           pull_object=lambda r, o: b"", confirm_message_received=lambda r, m: None,
                           trusted_entities=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert run_id == 11 and pulled and state.get_run(11) is None
    [reply] = state.get_messages_legacy(is_reply=True)
    assert reply.has_error() and reply.error.reason == (
        f"site scanner4: refused the app the coordinator sent: its bundle entry 'pyproject.toml' unpacks to {BOMB} "
        "bytes, over the site's limit of 4194304 (bundle_limits.max_entry); nothing of it was installed or run")
    assert unpacked[0] == 0 and peak < 4 << 20, (unpacked[0], peak)


def test_the_zip_bomb_size_is_what_flower_alone_would_unpack(unpacked):
    """What the gate prevents, measured on Flower's own reader: it unpacks the whole entry."""
    from flwr.common.config import get_fab_config

    with pytest.raises((ValueError, zlib.error, KeyError)):
        get_fab_config(bomb())
    assert unpacked[0] == BOMB
