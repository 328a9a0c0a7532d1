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

from petite_fl.deploy.processes import BIN

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

    def leftovers(self) -> list:
        """Processes still running whose command line mentions this test's folder."""
        import psutil

        mine = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid != os.getpid() and str(self.folder) in " ".join(p.info["cmdline"] or []):
                    mine.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return mine

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        for p in self.leftovers():  # never leave a process behind, even if a launcher failed
            p.kill()

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def deployment(tmp_path):
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "PETITE_FL_HOME": str(tmp_path / "cache"),
           "FLWR_DISABLE_UPDATE_CHECK": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    procs = Processes(tmp_path, env)
    yield procs
    procs.stop()


def test_stopping_the_launchers_stops_flowers_processes(tmp_path, deployment):
    """SIGTERM to petite-server / petite-client (a service manager's stop) takes Flower's processes with it."""
    port = free_port()
    assert deployment.run([str(BIN / "petite-server"), "certs", "--out", str(tmp_path / "tls")], 60).returncode == 0
    server = deployment.start("server", [str(BIN / "petite-server"), "--tls", str(tmp_path / "tls"), "--host",
                                         "127.0.0.1", "--port", str(port), "--database", str(tmp_path / "s.db")])
    deadline = time.monotonic() + 60
    while not any("flower-superlink" in " ".join(p.cmdline()) for p in deployment.leftovers()):
        assert time.monotonic() < deadline and server.poll() is None, deployment.log("server")
        time.sleep(0.5)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=40)
    time.sleep(1)
    assert not [p for p in deployment.leftovers() if p.is_running() and p.status() != "zombie"]


def site_yaml(tmp_path: Path, site: str, port: int, key: Path, ca: Path, node_port: int) -> Path:
    path = tmp_path / f"{site}.yaml"
    path.write_text(f"""name: {site}
manifest: null
device: cpu
cache: {tmp_path / "sites"}
server: 127.0.0.1:{port}
ca_cert: {ca}
private_key: {key}
port: {node_port}
""")
    return path


def test_tls_and_authenticated_sites_complete_two_rounds(tmp_path, deployment):
    """petite-server certs / petite-server / register / petite-client --site, as a hospital IT team runs them."""
    cache = tmp_path / "cache"
    port = free_port()
    certs = deployment.run([str(BIN / "petite-server"), "certs", "--out", str(tmp_path / "tls")], 60)
    assert certs.returncode == 0, certs.stderr
    deployment.start("superlink", [str(BIN / "petite-server"), "--tls", str(tmp_path / "tls"), "--host", "127.0.0.1",
                                   "--port", str(port), "--database", str(tmp_path / "state.db")])
    sites = ["scanner4", "scanner5"]
    deadline = time.monotonic() + 60
    for site in sites:
        keys = deployment.run([str(BIN / "petite-client"), "keygen", "--site", site,
                               "--out", str(tmp_path / "keys")], 60)
        assert keys.returncode == 0, keys.stderr
        while True:
            reg = deployment.run([str(BIN / "petite-server"), "register", "--site", site,
                                  "--key", str(tmp_path / "keys" / f"{site}.key.pub")], 60)
            if reg.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert reg.returncode == 0, reg.stdout + reg.stderr + deployment.log("superlink")
    for site in sites:
        yaml = site_yaml(tmp_path, site, port, tmp_path / "keys" / f"{site}.key", tmp_path / "tls" / "ca.crt",
                         free_port())
        deployment.start(site, [str(BIN / "petite-client"), "--site", str(yaml), "-o", f"paths.cache={cache}",
                                "-o", "data=tiny", "-o", "data.synth.scanners=[scanner4,scanner5]",
                                "-o", "data.synth.workers=1"])
    overrides = tmp_path / "run.toml"
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
    runs = list((cache / "runs" / "federated").iterdir())
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert sorted(summary["sites"]) == sites
    for site in sites:
        assert Path(summary["sites"][site]["adapter"]).is_file()
        assert str(tmp_path / "sites") in summary["sites"][site]["adapter"]
        assert "joining" in deployment.log(site)
