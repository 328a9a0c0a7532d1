"""A site runs only the apps it approved: petite-fl's own app as installed there, and the app
hashes of its config's approved_apps. Any other bundle a coordinator sends is refused in one
line, and none of its code is installed or imported."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResultStatus

from petite_fl.cli.client import main as client
from petite_fl.deploy.approval import AppNotApproved, app_hash, check_app
from petite_fl.deploy.site_exec import ApprovedApp, ApprovedAppExecutor, app_folder_hash
from petite_fl.errors import ConfigError
from petite_fl.runconfig import app_dir

REFUSAL = ("site scanner4: refused app 'petite-fl/petite-fl' 0.1.0 with app hash {}: it is neither petite-fl's own "
           "app as installed at this site nor listed in approved_apps of the site config; nothing of it was installed "
           "or run (to approve it: `petite-client approve --app DIR` on the reviewed app folder)")

PROBE_CLIENT = '''"""A coordinator's own ClientApp: it leaves a mark on the site's disk when imported and when run."""
import os
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

MARKS = Path({marks!r})
(MARKS / ("imported-by-" + Path(os.environ.get("FLWR_HOME", "?")).parent.name)).touch()
app = ClientApp()


@app.query()
def query(message, context):
    site = str(context.node_config["site"])
    (MARKS / f"ran-{{site}}").touch()
    return Message(RecordDict({{"site": ConfigRecord({{"name": site}})}}), reply_to=message)
'''

PROBE_SERVER = '''"""Asks every site once and writes what each answered (or its error) to a file."""
import json
import time
from pathlib import Path

from flwr.app import Message, RecordDict
from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    deadline = time.monotonic() + 120
    while len(nodes := sorted(grid.get_node_ids())) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    replies = grid.send_and_receive([Message(RecordDict(), dst_node_id=n, message_type="query") for n in nodes],
                                    timeout=180)
    out = {{str(r.metadata.src_node_id): ("error: " + r.error.reason if r.has_error()
                                         else str(r.content["site"]["name"])) for r in replies}}
    Path({result!r}).write_text(json.dumps(out))
'''


def modified_app(folder: Path, marks: Path | None = None, result: Path | None = None) -> Path:
    """petite-fl's own app folder with its components pointed at a coordinator's own modules:
    same name, publisher and version, so only its files tell it apart."""
    shutil.copytree(app_dir(), folder)
    pyproject = folder / "pyproject.toml"
    pyproject.write_text(pyproject.read_text()
                         .replace('"petite_fl.federation.flower.app:server_app"', '"probe_server:app"')
                         .replace('"petite_fl.federation.flower.app:client_app"', '"probe_client:app"'))
    (folder / "probe_client.py").write_text(PROBE_CLIENT.format(marks=str(marks or folder)))
    (folder / "probe_server.py").write_text(PROBE_SERVER.format(result=str(result or folder / "result.json")))
    return folder


def rezip(bundle: bytes, compression: int, order=lambda infos: infos) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(bundle)) as src, zipfile.ZipFile(out, "w", compression) as dst:
        for info in order(src.infolist()):
            dst.writestr(info.filename, src.read(info))
    return out.getvalue()


def test_petite_fls_own_app_runs_and_a_modified_one_is_refused_in_one_line(tmp_path):
    own = app_folder_hash()
    assert check_app(build_fab_from_disk(app_dir()), [own], "scanner4") == own

    probe = modified_app(tmp_path / "probe")
    bundle = build_fab_from_disk(probe)
    with pytest.raises(AppNotApproved) as refused:
        check_app(bundle, [own], "scanner4")
    assert str(refused.value) == REFUSAL.format(app_hash(bundle))

    # One added .py file, a component moved, a run-config default changed: each is another app.
    variants = {}
    for name, change in {"added": lambda f: (f / "extra.py").write_text("x = 1\n"),
                         "component": lambda f: (f / "pyproject.toml").write_text(
                             (f / "pyproject.toml").read_text().replace("flower.app:client_app", "flower.app:x")),
                         "default": lambda f: (f / "pyproject.toml").write_text(
                             (f / "pyproject.toml").read_text().replace('"federation.rounds" = 5',
                                                                        '"federation.rounds" = 1'))}.items():
        folder = tmp_path / name
        shutil.copytree(app_dir(), folder)
        change(folder)
        variants[name] = app_folder_hash(folder)
        with pytest.raises(AppNotApproved, match="nothing of it was installed or run"):
            check_app(build_fab_from_disk(folder), [own], "scanner4")
    assert len({own, *variants.values()}) == 4


def test_the_app_hash_is_the_apps_files_not_the_zip_bytes(tmp_path):
    """Zip compression differs between zlib builds (zlib-ng deflates differently), so Flower's FAB
    hash (sha256 of the zip) of one app can differ between a coordinator and a site; the app hash
    cannot. Names, contents and order still count, and a bundle that is not a zip is refused."""
    import hashlib

    bundle = build_fab_from_disk(app_dir())
    stored = rezip(bundle, zipfile.ZIP_STORED)
    assert hashlib.sha256(stored).digest() != hashlib.sha256(bundle).digest()
    assert app_hash(stored) == app_hash(bundle) == app_folder_hash()
    assert app_hash(rezip(bundle, zipfile.ZIP_DEFLATED, order=lambda i: i[::-1])) != app_hash(bundle)
    assert tomllib.loads(zipfile.ZipFile(io.BytesIO(bundle)).read("pyproject.toml").decode())  # what a site reads
    with pytest.raises(AppNotApproved) as refused:
        check_app(b"#!/bin/sh\nrm -rf /\n", [app_hash(bundle)], "scanner4")
    assert str(refused.value).startswith("site scanner4: refused the app the coordinator sent: not a Flower app "
                                         "bundle (BadZipFile")


def test_a_refused_bundle_is_never_installed_and_an_approved_one_runs_from_where_it_was_installed(
        tmp_path, monkeypatch):
    """The runner's two steps inside Flower's `run_clientapp`, on the same bytes: a refused bundle
    leaves nothing in the site's app folder, so nothing of it can be imported; an approved one is
    loaded from the folder it was installed in, whatever folder the run's fab_id and version name."""
    from flwr.cli.install import install_from_fab
    from flwr.clientapp import ClientApp
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # Flower's loader puts the app's folder first
    refusing = ApprovedApp("scanner4", [app_folder_hash()], install_from_fab, get_load_client_app_fn)
    with pytest.raises(AppNotApproved):
        refusing.install(build_fab_from_disk(modified_app(tmp_path / "probe")), skip_prompt=True)
    assert not (tmp_path / "flwr").exists()
    with pytest.raises(RuntimeError, match="no approved app was installed"):
        refusing.loader(default_app_ref="", app_path=None, multi_app=True)

    probe = modified_app(tmp_path / "approved", marks=tmp_path)  # approved here; its ClientApp imports quickly
    app = ApprovedApp("scanner4", [app_folder_hash(probe)], install_from_fab, get_load_client_app_fn)
    installed = app.install(build_fab_from_disk(probe), skip_prompt=True)
    assert installed.is_relative_to(tmp_path / "flwr") and (installed / "probe_client.py").is_file()
    load = app.loader(default_app_ref="", app_path=None, multi_app=True)
    assert isinstance(load("petite-fl/petite-fl", "0.1.0", "0" * 64), ClientApp)
    with pytest.raises(LoadClientAppError, match="mismatch"):
        load("mallory/petite-fl", "0.1.0", "0" * 64)
    sys.modules.pop("probe_client", None)


def test_the_sites_superexec_starts_client_app_tasks_only():
    """A coordinator's bundle may declare an AgentApp; the site's SuperExec never takes such a task."""
    executor = ApprovedAppExecutor("scanner4", ["ab" * 32])
    assert executor.get_eligible_capacity(set(TaskType)) == ({TaskType.CLIENT_APP}, set())
    spec = ExecutionSpec(task_type=TaskType.AGENT_APP, runtime_api_address="127.0.0.1:1", token="t", insecure=True,
                         root_certificates_path=None, runtime_dependency_install=False, parent_pid=None,
                         suppress_output=False, task_id=1)
    result = executor.launch(spec)
    assert result.status == LaunchResultStatus.FAILED and "ClientApp tasks only" in result.message


def test_approved_apps_in_the_site_config(tmp_path, capsys):
    from petite_fl.deploy.site import site_deployment

    base = ("name: h\nmanifest: null\ndevice: cpu\ncache: /tmp/c\nserver: 127.0.0.1:1\nca_cert: /c\n"
            "private_key: null\nport: 1\n")
    (tmp_path / "none.yaml").write_text(base)
    assert site_deployment(str(tmp_path / "none.yaml")).approved_apps == ()
    (tmp_path / "one.yaml").write_text(base + f"approved_apps: [{'ab' * 32}]\n")
    assert site_deployment(str(tmp_path / "one.yaml")).approved_apps == ("ab" * 32,)
    (tmp_path / "bad.yaml").write_text(base + "approved_apps: [abc]\n")
    with pytest.raises(ConfigError, match=r"approved_apps must be a list of app hashes .* got 'abc'"):
        site_deployment(str(tmp_path / "bad.yaml"))


def test_petite_client_approve_prints_an_apps_hash(tmp_path, capsys):
    probe = modified_app(tmp_path / "probe")
    assert client(["approve", "--app", str(probe)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == app_folder_hash(probe) and f"approved_apps: [{out.out.strip()}]" in out.err
    assert client(["approve"]) == 0
    assert capsys.readouterr().out.strip() == app_folder_hash()
    assert client(["approve", "--app", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "is not a Flower app folder" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_site_refuses_a_modified_app_and_runs_it_once_approved(tmp_path):
    """Real processes on 127.0.0.1: the coordinator (TLS, site keys) and two sites started by
    petite-client. The coordinator submits a modified app whose ClientApp leaves marks on disk.
    scanner4 (petite-fl's own app only) refuses it: one line in its log, an error reply with that
    line at the coordinator, and no mark (its code was never imported). scanner5, whose config
    approves the app's hash (from `petite-client approve`), runs it: the marks show the probe
    would have been seen."""
    from conftest import write_site
    from deployment_kit import Link, Processes, wait_for

    from petite_fl.deploy.processes import BIN

    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "PETITE_FL_HOME": str(tmp_path / "cache"),
           "FLWR_DISABLE_UPDATE_CHECK": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    procs = Processes(tmp_path, env)
    link = Link(tmp_path, procs)
    marks, result = tmp_path / "marks", tmp_path / "result.json"
    marks.mkdir()
    try:
        assert procs.run([str(BIN / "petite-server"), "certs", "--out", str(tmp_path / "tls")], 60).returncode == 0
        for site in ("scanner4", "scanner5"):
            keys = procs.run([str(BIN / "petite-client"), "keygen", "--site", site, "--out",
                              str(tmp_path / "keys")], 60)
            assert keys.returncode == 0, keys.stderr
        link.start_server()
        probe = modified_app(tmp_path / "probe", marks, result)
        approve = procs.run([str(BIN / "petite-client"), "approve", "--app", str(probe)], 60)
        assert approve.returncode == 0, approve.stderr
        digest = approve.stdout.strip()
        for site in ("scanner4", "scanner5"):
            deadline = time.monotonic() + 60
            while (reg := procs.run([str(BIN / "petite-server"), "register", "--site", site, "--key",
                                     str(tmp_path / "keys" / f"{site}.key.pub")], 60)).returncode != 0:
                assert time.monotonic() < deadline, reg.stdout + reg.stderr + procs.log("server0")
                time.sleep(1)
            yaml = link.yaml(site, manifest=write_site(tmp_path / f"h-{site}"),
                             approved_apps=(digest,) if site == "scanner5" else ())
            link.clients[site] = procs.start(site, [str(BIN / "petite-client"), "--site", str(yaml)])
        run = procs.run([str(BIN / "flwr"), "run", str(probe), "petite", "--format", "json"], 120)
        assert run.returncode == 0, run.stdout + run.stderr
        wait_for(result.is_file, 300, "the probe's replies",
                 procs.log("scanner4")[-3000:] + procs.log("server0")[-3000:])

        answers = sorted(json.loads(result.read_text()).values())
        line = REFUSAL.format(digest)
        assert answers[0].startswith("error: ") and line in answers[0], answers
        assert answers[1] == "scanner5", answers
        log = procs.log("scanner4")
        assert [ln for ln in log.splitlines() if "refused app" in ln] == [ln for ln in log.splitlines() if line in ln]
        assert sum(line in ln for ln in log.splitlines()) == 1, log[-3000:]
        assert "Traceback" not in log and "Exit Code" not in log, log[-3000:]  # Flower's additions, dropped
        assert sorted(p.name for p in marks.iterdir()) == ["imported-by-scanner5", "ran-scanner5"]
        assert not (tmp_path / "sites" / "scanner4" / "flwr" / "apps").exists()  # nothing installed at scanner4
    finally:
        procs.stop()
