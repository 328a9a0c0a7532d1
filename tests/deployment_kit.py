"""The deployment tests' kit: real Flower processes on 127.0.0.1, started by the same command
builders as `petite-server` / `petite-client`, bounded in time, always stopped."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from petite_fl.deploy.ports import free_port
from petite_fl.deploy.processes import BIN, stop_process_tree
from petite_fl.runconfig import app_dir

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = Path(__file__).resolve().parent / "hostile_coordinator"  # a sitecustomize for the coordinator
TINY = ["data=tiny", "data.synth.scanners=[scanner4,scanner5]", "data.synth.workers=1", "source=scanner4",
        "train.pretrain.steps=4", "train.patch_scale=0.5", "train.batch_size=1",
        "data.loader.patches_per_volume=2", "train.eval.overlap=0",
        "federation.val.patches=2", "federation.sites=[scanner4,scanner5]", "federation.rounds=2",
        "federation.local_steps=2", "federation.wait_for_sites=60", "federation.timeout=300"]
#: the test sites' policy: the defaults, but TINY's updates come from 2 local steps × batch 1
TEST_POLICY = {"min_samples_per_update": 2}


class Processes:
    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env, self.procs = folder, env, []

    def start(self, name: str, cmd: list[str], **env: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(ROOT))
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
            stop_process_tree(proc, steps=((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)))
        for p in self.leftovers():  # never leave a process behind, even if a launcher failed
            p.kill()

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")


def site_yaml(folder: Path, site: str, port: int, key: Path, ca: Path, node_port: int,
              manifest: Path | None = None, approved_apps: tuple[str, ...] = ()) -> Path:
    path = folder / f"{site}-{len(list(folder.glob('*.yaml')))}.yaml"  # one file per use
    path.write_text(f"""name: {site}
manifest: {manifest or "null"}
device: cpu
cache: {folder / "sites"}
server: 127.0.0.1:{port}
ca_cert: {ca}
private_key: {key}
port: {node_port}
approved_apps: {json.dumps(list(approved_apps))}
policy: {json.dumps(TEST_POLICY)}
""")
    return path


SITE_DATA = ["-o", "data=tiny", "-o", "data.synth.scanners=[scanner4,scanner5]", "-o", "data.synth.workers=1"]


class Link:
    """One coordinator (TLS + site authentication) for the module, restartable, and its sites."""

    def __init__(self, folder: Path, procs: Processes) -> None:
        self.folder, self.procs = folder, procs
        self.cache = folder / "cache"
        self.port = free_port()          # the public port: nginx, the Fleet API only
        self.control_port = free_port()  # the SuperLink on 127.0.0.1, for `flwr` (connection `petite`)
        self.server: subprocess.Popen | None = None
        self.clients: dict[str, subprocess.Popen] = {}
        self.hostile_hello = folder / "hostile-hello.json"

    def start_server(self, *extra: str) -> subprocess.Popen:
        self.server = self.procs.start(f"server{len(self.procs.procs)}", [
            str(BIN / "petite-server"), "--tls", str(self.folder / "tls"), "--host", "127.0.0.1",
            "--port", str(self.port), "--control-port", str(self.control_port),
            "--database", str(self.folder / "state.db"), *extra],
            # inert until a test writes the file: then the hello carries what it says (a hostile coordinator)
            # this checkout's petite_fl (not the editable install's) behind the hostile sitecustomize
            PYTHONPATH=os.pathsep.join([str(HOSTILE), str(ROOT)]), PETITE_TEST_HOSTILE_HELLO=str(self.hostile_hello))
        return self.server

    def yaml(self, site: str, ca: str = "tls", key: str | None = None, port: int | None = None,
             manifest: Path | None = None, approved_apps: tuple[str, ...] = ()) -> Path:
        return site_yaml(self.folder, site, port or self.port, self.folder / "keys" / f"{key or site}.key",
                         self.folder / ca / "ca.crt", free_port(), manifest, approved_apps)

    def submit(self, *overrides: str) -> str:
        config = self.folder / f"run-{len(list(self.folder.glob('run-*.toml')))}.toml"
        config.write_text(f"overrides = {json.dumps(shlex.join([f'paths.cache={self.cache}', *TINY, *overrides]))}\n")
        # petite-fl's own app, as installed: the app every site runs (a checkout's `flwr run .` bundles
        # the checkout's code, which a site runs only if its approved_apps lists its hash)
        started = self.procs.run([str(BIN / "flwr"), "run", str(app_dir()), "petite", "--run-config", str(config),
                                  "--format", "json"], 120)
        assert started.returncode == 0, started.stdout + started.stderr
        return str(json.loads(started.stdout)["run-id"])

    def status(self, run_id: str) -> str:
        out = self.procs.run([str(BIN / "flwr"), "ls", "petite", "--run-id", run_id, "--format", "json"], 60)
        return json.loads(out.stdout)["runs"][0]["status"] if out.returncode == 0 else ""

    def wait_finished(self, run_id: str, seconds: float) -> str:
        """Flower's status of the run once its ServerApp has ended (read from the coordinator's
        journal first: a file, where each `flwr ls` would cost a CLI start on the 2 busy cores)."""
        journal, end = self.cache / "server" / "runs" / f"{run_id}.json", time.monotonic() + seconds
        ticks = 0
        while time.monotonic() < end:
            if journal.is_file() and json.loads(journal.read_text())["status"] in ("finished", "failed"):
                break
            ticks += 1
            if ticks % 20 == 0 and self.status(run_id).startswith("finished"):  # ended unjournaled (a crash)
                break
            time.sleep(1)
        status = ""
        while time.monotonic() < end + 60:  # the SuperLink records the end a moment after the app
            status = self.status(run_id) or status
            if status.startswith("finished"):
                break
            time.sleep(2)
        return status

    def kill(self, proc: subprocess.Popen) -> None:
        """A crash: SIGKILL to the launcher and every process under it (Flower's detached ones too)."""
        assert stop_process_tree(proc, steps=((signal.SIGKILL, 10.0),))


def wait_for(predicate, seconds: float, what: str, log: str = "") -> None:
    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}\n{log}"
        time.sleep(0.5)


def checkpoint_round(run_dir: Path) -> int:
    import torch

    path = run_dir / "checkpoint.pt"
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["round"]) if path.is_file() else 0
    except (EOFError, RuntimeError):  # pragma: no cover - atomic writes make this a replaced file, not a torn one
        return 0


def _reference(link: Link, run_config: dict, name: str, fail=None):
    """The same run-config, uninterrupted and in process (the real apps over InProcessGrid)."""
    from flower_grid import InProcessGrid

    from petite_fl.federation.flower.app import client_app
    from petite_fl.federation.flower.transport import FlowerTransport
    from petite_fl.federation.server.coordinator import Coordinator
    from petite_fl.federation.site.policy import SitePolicy
    from petite_fl.runconfig import compose_run

    rc = {**run_config, "overrides": run_config["overrides"] + f" federation.run_name={name} "
                                                             "federation.wait_for_sites=1"}
    policy = SitePolicy.from_mapping(TEST_POLICY).to_json()  # as the deployed sites' node config has it
    nodes = [{"site": s, "site-root": str(link.folder / name), "data-root": str(link.cache / "data"), "policy": policy}
             for s in ("scanner4", "scanner5")]  # the data root the deployed sites have (paths.cache=link.cache)
    grid = InProcessGrid(client_app, rc, nodes, fail=fail)
    return Coordinator(compose_run(rc), FlowerTransport(grid), quiet=True).run()


def _same(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _crash_and_resume(link: Link, name: str, *overrides: str, kill: tuple[str, ...] = ()) -> tuple[Path, dict]:
    """Submit run `name`; after round 1 SIGKILL the coordinator (and the sites in `kill`), restart it
    with --resume and wait for the resubmitted run to complete. Returns (run folder, run-config)."""
    run_dir = link.cache / "runs" / "federated" / name
    run_id = link.submit(*overrides, f"federation.run_name={name}")
    wait_for(lambda: checkpoint_round(run_dir) >= 1, 300, "round 1", link.procs.log("server0")[-3000:])
    link.kill(link.server)
    for site in kill:
        link.kill(link.clients[site])
    journal = link.cache / "server" / "runs" / f"{run_id}.json"
    assert json.loads(journal.read_text())["status"] == "running"  # what --resume finds

    link.start_server("--resume")
    wait_for(lambda: json.loads(journal.read_text()).get("status") == "resumed", 120, "the resubmission",
             link.procs.log(f"server{len(link.procs.procs) - 1}"))
    entry = json.loads(journal.read_text())
    status = link.wait_finished(str(entry["resumed_as"]), 400)
    assert status == "finished:completed", status
    return run_dir, entry["run_config"]
