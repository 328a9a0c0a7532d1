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
from conftest import write_site

from petite_fl.deploy.ports import free_port
from petite_fl.deploy.processes import BIN, stop_process_tree

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data=tiny", "data.synth.scanners=[scanner4,scanner5]", "data.synth.workers=1", "source=scanner4",
        "train.pretrain.steps=4", "train.patch_scale=0.5", "train.batch_size=1",
        "data.loader.patches_per_volume=2", "train.eval.overlap=0",
        "federation.val.patches=2", "federation.sites=[scanner4,scanner5]", "federation.rounds=2",
        "federation.local_steps=2", "federation.wait_for_sites=60", "federation.timeout=300"]


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


def site_yaml(folder: Path, site: str, port: int, key: Path, ca: Path, node_port: int,
              manifest: Path | None = None) -> Path:
    path = folder / f"{site}-{len(list(folder.glob('*.yaml')))}.yaml"  # one file per use
    path.write_text(f"""name: {site}
manifest: {manifest or "null"}
device: cpu
cache: {folder / "sites"}
server: 127.0.0.1:{port}
ca_cert: {ca}
private_key: {key}
port: {node_port}
""")
    return path


SITE_DATA = ["-o", "data=tiny", "-o", "data.synth.scanners=[scanner4,scanner5]", "-o", "data.synth.workers=1"]


class Link:
    """One coordinator (TLS + site authentication) for the module, restartable, and its sites."""

    def __init__(self, folder: Path, procs: Processes) -> None:
        self.folder, self.procs = folder, procs
        self.cache = folder / "cache"
        self.port = free_port()
        self.server: subprocess.Popen | None = None
        self.clients: dict[str, subprocess.Popen] = {}

    def start_server(self, *extra: str) -> subprocess.Popen:
        self.server = self.procs.start(f"server{len(self.procs.procs)}", [
            str(BIN / "petite-server"), "--tls", str(self.folder / "tls"), "--host", "127.0.0.1",
            "--port", str(self.port), "--database", str(self.folder / "state.db"), *extra])
        return self.server

    def yaml(self, site: str, ca: str = "tls", key: str | None = None, port: int | None = None,
             manifest: Path | None = None) -> Path:
        return site_yaml(self.folder, site, port or self.port, self.folder / "keys" / f"{key or site}.key",
                         self.folder / ca / "ca.crt", free_port(), manifest)

    def submit(self, *overrides: str) -> str:
        config = self.folder / f"run-{len(list(self.folder.glob('run-*.toml')))}.toml"
        config.write_text(f"overrides = {json.dumps(shlex.join([f'paths.cache={self.cache}', *TINY, *overrides]))}\n")
        started = self.procs.run([str(BIN / "flwr"), "run", str(ROOT), "petite", "--run-config", str(config),
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


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    """petite-server certs / petite-server / keygen / register, as a hospital IT team runs them.

    A site with an unregistered key is started here too, beside the coordinator coming up,
    so that its start-up overlaps the rest; test_bad_credentials_are_refused_in_one_line reads it.
    """
    folder = tmp_path_factory.mktemp("deploy")
    env = {**os.environ, "FLWR_HOME": str(folder / "flwr"), "PETITE_FL_HOME": str(folder / "cache"),
           "FLWR_DISABLE_UPDATE_CHECK": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    procs = Processes(folder, env)
    link = Link(folder, procs)
    try:
        for tls in ("tls", "tls-other"):  # the coordinator's CA, and a stranger's
            certs = procs.run([str(BIN / "petite-server"), "certs", "--out", str(folder / tls)], 60)
            assert certs.returncode == 0, certs.stderr
        for site in ("scanner3", "scanner4", "scanner5"):
            keys = procs.run([str(BIN / "petite-client"), "keygen", "--site", site, "--out", str(folder / "keys")], 60)
            assert keys.returncode == 0, keys.stderr
        link.start_server()
        plain_port = free_port()  # a second coordinator, plain text (--insecure), for the mismatch case
        procs.start("plain-server", [str(BIN / "petite-server"), "--insecure", "--host", "127.0.0.1", "--port",
                                     str(plain_port), "--database", str(folder / "plain.db")],
                    FLWR_HOME=str(folder / "flwr-plain"))  # its own `petite` connection entry
        deadline = time.monotonic() + 60
        for site in ("scanner4", "scanner5"):  # scanner3's key stays unregistered
            while True:
                reg = procs.run([str(BIN / "petite-server"), "register", "--site", site,
                                 "--key", str(folder / "keys" / f"{site}.key.pub")], 60)
                if reg.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert reg.returncode == 0, reg.stdout + reg.stderr + procs.log("server0")
        link.plain_port = plain_port
        link.unregistered = procs.start("unregistered", [
            str(BIN / "petite-client"), "--site", str(link.yaml("scanner3", manifest=write_site(folder / "h3"))),
            *SITE_DATA,
            "-o", f"paths.cache={link.cache}"])
        for site in ("scanner4", "scanner5"):
            link.clients[site] = procs.start(site, [str(BIN / "petite-client"), "--site", str(link.yaml(site)),
                                                    "-o", f"paths.cache={link.cache}", *SITE_DATA])
        yield link
    finally:
        procs.stop()


def test_bad_credentials_are_refused_in_one_line(link, capsys):
    """Against the real coordinators: a wrong CA, --insecure on one side only (either side), and (the
    SuperLink's own refusal) an unregistered key; each one line naming the site."""
    from petite_fl.cli.client import main as client

    def listening(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(lambda: listening(link.plain_port), 60, "the plain-text coordinator", link.procs.log("plain-server"))
    # A small real site of its own (not the synthetic one the running sites may still be generating).
    data = link.folder / "h3" / "manifest.json"
    cases = {"is not accepted with": [str(link.yaml("scanner4", ca="tls-other", manifest=data))],
             "uses TLS; drop --insecure": [str(link.yaml("scanner4", manifest=data)), "--insecure"],
             "started with --insecure": [str(link.yaml("scanner4", port=link.plain_port, manifest=data))]}
    for fragment, args in cases.items():
        assert client(["--site", *args, "--check", "-o", f"paths.cache={link.cache}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("petite-client: error: site scanner4:") and fragment in err, err
    assert link.unregistered.wait(timeout=120) == 2
    log = link.procs.log("unregistered")
    errors = [ln for ln in log.splitlines() if ln.startswith("petite-client: error:")]
    assert len(errors) == 1 and "it is not registered" in errors[0] and "--site scanner3" in errors[0], log[-2000:]
    assert "Traceback" not in log


def _reference(link: Link, run_config: dict, name: str, fail=None):
    """The same run-config, uninterrupted and in process (the real apps over InProcessGrid)."""
    from flower_grid import InProcessGrid

    from petite_fl.federation.coordinator import Coordinator
    from petite_fl.federation.flower.app import client_app
    from petite_fl.federation.flower.transport import FlowerTransport
    from petite_fl.runconfig import compose_run

    rc = {**run_config, "overrides": run_config["overrides"] + f" federation.run_name={name} "
                                                             "federation.wait_for_sites=1"}
    nodes = [{"site": s, "site-root": str(link.folder / name)} for s in ("scanner4", "scanner5")]
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


@pytest.mark.slow
def test_two_tls_sites_finish_two_rounds_through_a_server_crash(link):
    """Two authenticated TLS sites, two rounds. After round 1 the coordinator is killed (SIGKILL, its
    whole process tree) and restarted with --resume. The run completes, both sites write their
    adapters, and the global adapter and each site's adapter equal those of an uninterrupted run of the
    same configuration."""
    run_dir, run_config = _crash_and_resume(link, "crash")

    log = json.loads((run_dir / "log.json").read_text())
    assert sorted((r["round"], r["site"]) for r in log["train"]) == [
        (1, "scanner4"), (1, "scanner5"), (2, "scanner4"), (2, "scanner5")]
    assert sorted({r["session"] for r in log["transfer"] if r["what"] == "backbone"}) == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sorted(summary["sites"]) == ["scanner4", "scanner5"] and not summary["rejected"]
    for site in ("scanner4", "scanner5"):
        assert "joining" in link.procs.log(site)
    reference = _reference(link, run_config, "crash-reference")
    assert _same(run_dir / "global-adapter.safetensors", Path(reference["run_dir"]) / "global-adapter.safetensors")
    for site in ("scanner4", "scanner5"):
        adapter = Path(summary["sites"][site]["adapter"])
        assert adapter.is_file() and str(link.folder / "sites") in str(adapter)
        assert _same(adapter, Path(reference["sites"][site]["adapter"]))


@pytest.mark.slow  # ~3 min of real processes; the in-process resume tests cover the logic by default
def test_a_killed_server_resumes_and_a_killed_site_is_left_out_with_nothing_lost(link):
    """Two authenticated TLS sites, two rounds. After round 1 the coordinator and site scanner5 are
    killed (SIGKILL, their whole process trees); the coordinator restarts with --resume. The run
    completes round 2 with scanner4 (Flower's heartbeat marks scanner5 lost), writes the global adapter
    and scanner4's, and both equal those of an uninterrupted run of the same configuration in which
    scanner5 misses round 2. (Both sites through a coordinator crash: the slow test above.)"""
    run_dir, run_config = _crash_and_resume(link, "faults", "federation.min_sites=1",
                                            "federation.wait_for_sites=30", kill=("scanner5",))

    log = json.loads((run_dir / "log.json").read_text())
    assert sorted((r["round"], r["site"]) for r in log["train"]) == [(1, "scanner4"), (1, "scanner5"), (2, "scanner4")]
    assert sorted({r["session"] for r in log["transfer"] if r["what"] == "backbone"}) == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["sites"]) == ["scanner4"] and not summary["rejected"]
    for site in ("scanner4", "scanner5"):
        assert "joining" in link.procs.log(site)
    reference = _reference(link, run_config, "faults-reference",
                           fail={1001: lambda m: m.metadata.group_id in ("round-2", "final")})
    assert _same(run_dir / "global-adapter.safetensors", Path(reference["run_dir"]) / "global-adapter.safetensors")
    adapter = Path(summary["sites"]["scanner4"]["adapter"])
    assert str(link.folder / "sites") in str(adapter)
    assert _same(adapter, Path(reference["sites"]["scanner4"]["adapter"]))


@pytest.mark.slow
def test_secagg_runs_across_real_supernodes(link):
    """SecAgg+ over real SuperNodes, where each message is a fresh ClientApp process and Flower keeps
    the protocol's keys in the node's state: three sites (SecAgg+'s minimum), one round."""
    reg = link.procs.run([str(BIN / "petite-server"), "register", "--site", "scanner3",
                          "--key", str(link.folder / "keys" / "scanner3.key.pub")], 60)
    assert reg.returncode == 0, reg.stdout + reg.stderr
    three = "[scanner3,scanner4,scanner5]"
    for site in ("scanner3", "scanner4", "scanner5"):
        if site not in link.clients or link.clients[site].poll() is not None:
            link.clients[site] = link.procs.start(f"{site}-secagg", [
                str(BIN / "petite-client"), "--site", str(link.yaml(site)), "-o", f"paths.cache={link.cache}",
                "-o", "data=tiny", "-o", f"data.synth.scanners={three}", "-o", "data.synth.workers=1"])
    run_id = link.submit(f"data.synth.scanners={three}", f"federation.sites={three}", "federation.rounds=1",
                         "federation.secagg.enabled=true", "federation.run_name=secagg")
    status = link.wait_finished(run_id, 600)
    assert status == "finished:completed", status
    summary = json.loads((link.cache / "runs" / "federated" / "secagg" / "summary.json").read_text())
    assert summary["protection"] == "SecAgg+" and sorted(summary["sites"]) == ["scanner3", "scanner4", "scanner5"]
    log = json.loads((link.cache / "runs" / "federated" / "secagg" / "log.json").read_text())
    assert {r["what"] for r in log["transfer"] if r["round"] == 1} == {"peft-secagg"}
