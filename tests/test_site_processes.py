"""What a site's own processes leave open to other users and to the folder they start in: the
task token is not on any command line, an app runs from a folder keyed by its bundle's full
hash, the coordinator's database is 0600 wherever it is, and code planted in the working
directory is never imported."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec
from test_site_approval import modified_app

from petite_fl.deploy.site_exec import ApprovedApp, ApprovedAppExecutor, app_folder_hash


def test_the_clientapp_gets_its_task_token_on_stdin_and_never_on_its_command_line(tmp_path):
    """A real launch: the ClientApp process reaches a Runtime API (a socket here) with the token
    it read from stdin, while its command line, readable by every user, holds no token."""
    token = secrets.token_hex(128)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(60)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        spec = ExecutionSpec(task_type=TaskType.CLIENT_APP, runtime_api_address=address, token=token, insecure=True,
                             root_certificates_path=None, runtime_dependency_install=False,
                             parent_pid=None, suppress_output=True, task_id=1)
        before = {p.pid for p in psutil.Process().children()}
        ApprovedAppExecutor("scanner4", ["ab" * 32]).launch(spec)
        [child] = [p for p in psutil.Process().children() if p.pid not in before]
        try:
            command_line = " ".join(child.cmdline())
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(30)
                request = connection.recv(65536)
        finally:
            child.kill()  # the process this test started
            child.wait(10)
    assert "clientapp" in command_line and "--token-stdin" in command_line
    assert token not in command_line and token[:16] not in command_line
    assert token.encode() in request  # Flower's client sends it, from stdin


def test_an_approved_bundle_never_runs_from_a_folder_left_under_its_hash_prefix(tmp_path, monkeypatch):
    """Flower names an app's folder by 8 hex digits of the bundle's hash and reuses it without
    copying; a coordinator grinding 32 bits (simulated: the folder planted under the prefix of
    the approved bundle) would have the approved bundle run a revoked app's files."""
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    approved = modified_app(tmp_path / "approved", marks=tmp_path)
    bundle = build_fab_from_disk(approved)
    digest = hashlib.sha256(bundle).hexdigest()
    planted = tmp_path / "flwr" / "apps" / f"petite-fl.petite-fl.0.1.0.{digest[:8]}"
    planted.mkdir(parents=True)
    (planted / "probe_client.py").write_text("REVOKED = True\n")
    app = ApprovedApp("scanner4", [app_folder_hash(approved)], install_from_fab, get_load_client_app_fn)
    installed = app.install(bundle, skip_prompt=True)
    assert digest in str(installed) and installed != planted
    assert (installed / "probe_client.py").read_text() == (approved / "probe_client.py").read_text()
    assert app.install(bundle, skip_prompt=True) == installed  # the same bytes: the same folder


def test_the_coordinators_database_is_private_wherever_it_is(tmp_path):
    """`petite-server --database` in a shared folder: the file and SQLite's WAL files are 0600."""
    import sqlite3

    from petite_fl.deploy.coordinator import private_database

    previous = os.umask(0o022)
    try:
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o755)
        database = private_database(shared / "state.db")
        connection = sqlite3.connect(database)  # as Flower's SuperLink: WAL mode
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE run (id INTEGER)")
        connection.commit()
        files = sorted(p.name for p in shared.iterdir())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in shared.iterdir()}
        connection.close()
    finally:
        os.umask(previous)
    assert {"state.db", "state.db-wal", "state.db-shm"} <= set(files)
    assert set(modes.values()) == {0o600}, modes
    (shared / "old.db").write_bytes(b"")
    os.chmod(shared / "old.db", 0o644)
    assert stat.S_IMODE(private_database(shared / "old.db").stat().st_mode) == 0o600


PLANTED = "import pathlib; pathlib.Path({mark!r}).write_text('imported')\n"


def _superexec(secret: Path) -> list[str]:
    from petite_fl.deploy.processes import site_superexec_command

    return site_superexec_command(site="scanner4", port=1, approved=["ab" * 32], superexec_secret=secret,
                                  parent_pid=os.getpid())


def _supernode(secret: Path) -> list[str]:
    from petite_fl.deploy.processes import supernode_command

    return supernode_command(superlink="127.0.0.1:1", ca_cert=None, private_key=None, node_config=secret, port=1,
                             superexec_secret=secret, site="scanner4", approved=["ab" * 32])


@pytest.mark.parametrize("command", [_superexec, _supernode])
def test_code_planted_in_the_working_directory_is_never_imported_by_a_sites_processes(tmp_path, command):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for name in ("petite_fl", "flwr"):
        (cwd / f"{name}.py").write_text(PLANTED.format(mark=str(tmp_path / f"imported-{name}")))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),  # this checkout, as installed
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    cmd = command(tmp_path / "secret")
    assert cmd[0] == sys.executable
    done = subprocess.run([*cmd, "--help"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not list(tmp_path.glob("imported-*")), done.stderr[-2000:]


@pytest.mark.parametrize("name", ["petite_fl", "flwr"])
def test_a_planted_module_would_be_imported_without_the_flag(tmp_path, name):
    """The check above can fail: the same command without -P imports the planted file."""
    (tmp_path / f"{name}.py").write_text(PLANTED.format(mark=str(tmp_path / "imported")))
    subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, timeout=60)
    assert (tmp_path / "imported").is_file()
