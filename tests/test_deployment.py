"""A real deployment on 127.0.0.1: SuperLink with TLS and SuperNode authentication, two sites.

Every process is started by the same command builders as `petite-server` / `petite-client`,
bounded in time, and killed at the end whatever happens.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from petite_fl.deploy.certs import make_server_credentials, make_site_keys
from petite_fl.deploy.processes import BIN, ServerTLS, connection_toml, superlink_command, supernode_command

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data=tiny", "data.synth.scanners=[scanner4,scanner5]", "data.synth.workers=1", "source=scanner4",
        "train.pretrain.steps=4", "train.batch_size=1", "data.loader.patches_per_volume=2", "train.eval.overlap=0",
        "federation.val.patches=2", "federation.sites=[scanner4,scanner5]", "federation.rounds=2",
        "federation.local_steps=2", "federation.wait_for_sites=60", "federation.timeout=300"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env, self.procs = folder, env, []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(ROOT))
        self.procs.append(proc)
        return proc

    def run(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def deployment(tmp_path):
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "PETITE_FL_HOME": str(tmp_path / "cache"),
           "FLWR_DISABLE_UPDATE_CHECK": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    procs = Processes(tmp_path, env)
    yield procs
    procs.stop()


def test_tls_and_authenticated_sites_complete_two_rounds(tmp_path, deployment):
    tls = ServerTLS.from_folder(make_server_credentials(tmp_path / "tls").ca_cert.parent)
    port = free_port()
    deployment.start("superlink", superlink_command(tls=tls, auth=True, host="127.0.0.1", port=port,
                                                    database=tmp_path / "state.db"))
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        '[superlink]\ndefault = "petite"\n\n' + connection_toml("petite", f"127.0.0.1:{port}", tls.ca_cert))
    sites = ["scanner4", "scanner5"]
    keys = {s: make_site_keys(tmp_path / "keys", s)[0] for s in sites}
    deadline = time.monotonic() + 60
    for site in sites:
        while True:
            reg = deployment.run([str(BIN / "flwr"), "supernode", "register", f"{keys[site]}.pub", "petite"], 60)
            if reg.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert reg.returncode == 0, reg.stdout + reg.stderr + deployment.log("superlink")
    for site in sites:
        deployment.start(site, supernode_command(
            superlink=f"127.0.0.1:{port}", ca_cert=tls.ca_cert, private_key=keys[site], port=free_port(),
            node_config={"site": site, "site-root": str(tmp_path / "sites")}))
    overrides = tmp_path / "run.toml"
    cache = tmp_path / "cache"
    overrides.write_text(f"overrides = {json.dumps(shlex.join([f'paths.cache={cache}', *TINY]))}\n")
    started = deployment.run([str(BIN / "flwr"), "run", str(ROOT), "petite", "--run-config", str(overrides),
                              "--format", "json"], 120)
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = str(json.loads(started.stdout)["run-id"])
    status = ""
    end = time.monotonic() + 420
    while time.monotonic() < end:
        out = deployment.run([str(BIN / "flwr"), "ls", "petite", "--run-id", run_id, "--format", "json"], 60)
        status = json.loads(out.stdout)["runs"][0]["status"] if out.returncode == 0 else status
        if status.startswith("finished"):
            break
        time.sleep(3)
    assert status == "finished:completed", status + deployment.log("superlink")[-3000:]
    runs = list((tmp_path / "cache" / "runs" / "federated").iterdir())
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert sorted(summary["sites"]) == sites
    for site in sites:
        assert Path(summary["sites"][site]["adapter"]).is_file()
        assert str(tmp_path / "sites") in summary["sites"][site]["adapter"]
