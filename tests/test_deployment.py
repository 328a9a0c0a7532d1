"""A real deployment on 127.0.0.1: SuperLink with TLS and SuperNode authentication, two sites.

Every process is started by the same command builders as `petite-server` / `petite-client`,
bounded in time, and killed at the end whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import write_site
from deployment_kit import ROOT, SITE_DATA, Link, Processes, _crash_and_resume, _reference, _same, wait_for

from petite_fl.deploy.ports import free_port
from petite_fl.deploy.processes import BIN
from petite_fl.deploy.proxy import INSTALL_HINT, REFUSAL, find_nginx
from petite_fl.errors import PetiteError


def _nginx_installed() -> bool:
    try:
        return bool(find_nginx())
    except PetiteError:
        return False


# The coordinator's public port is nginx's (petite_fl/deploy/proxy.py). CI installs it (.ci/run), so
# there these tests never skip: a missing nginx fails them with petite-server's one-line refusal.
pytestmark = pytest.mark.skipif(not _nginx_installed() and not os.environ.get("CI"),
                                reason=f"nginx is not installed: {INSTALL_HINT}")


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
                                         "127.0.0.1", "--port", str(port), "--control-port", str(free_port()),
                                         "--database", str(tmp_path / "s.db")])
    deadline = time.monotonic() + 60
    while not all(any(name in " ".join(p.cmdline()) for p in deployment.leftovers())
                  for name in ("flower-superlink", "nginx: master")):
        assert time.monotonic() < deadline and server.poll() is None, deployment.log("server")
        time.sleep(0.5)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=40)
    time.sleep(1)
    assert not [p for p in deployment.leftovers() if p.is_running() and p.status() != "zombie"]


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
                                     str(plain_port), "--control-port", str(free_port()),
                                     "--database", str(folder / "plain.db")],
                    FLWR_HOME=str(folder / "flwr-plain"),  # its own `petite` connection entry
                    PETITE_FL_HOME=str(folder / "plain-home"))  # and its own proxy folder
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


def _public(link: Link, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"") -> tuple[int, str]:
    """One HTTPS request to the coordinator's public port, its path sent as written (http.client
    does not normalise it), verified with the coordinator's CA certificate as a site holds it."""
    import http.client
    import ssl

    context = ssl.create_default_context(cafile=str(link.folder / "tls" / "ca.crt"))
    conn = http.client.HTTPSConnection("127.0.0.1", link.port, context=context, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/protobuf", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def _signed_headers(private_key: Path) -> dict[str, str]:
    """The headers a SuperNode signs with its key (as Flower's NodeAuthHttpInterceptor does)."""
    from base64 import b64encode

    from cryptography.hazmat.primitives import serialization
    from flwr.supercore.date import now
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message

    key = serialization.load_ssh_private_key(private_key.read_bytes(), password=None)
    stamp = now().isoformat()
    return {"flwr-public-key": b64encode(public_key_to_bytes(key.public_key())).decode(),
            "flwr-timestamp": stamp, "flwr-signature": b64encode(sign_message(key, stamp.encode())).decode()}


def test_the_public_port_serves_the_fleet_api_only(link):
    """On the port the sites dial, every Control and Runtime route the installed Flower declares, its API
    docs, and paths that climb out of /v1/fleet/ are answered 403 by the proxy with its one line, even
    when signed with a registered site's key; the Fleet routes, POST only, reach Flower, which answers
    them itself; and the SuperLink listens on 127.0.0.1 only."""
    import psutil
    from flwr.supercore.routers.runtime.responses import router as responses
    from flwr.supercore.routers.runtime.router import router as runtime
    from flwr.superlink.routers.control.router import router as control

    from petite_fl.deploy.proxy import fleet_routes

    signed = _signed_headers(link.folder / "keys" / "scanner4.key")
    refused = [route.path for route in (*control.routes, *runtime.routes, *responses.routes)]
    assert "/v1/control/start-run" in refused and "/v1/control/register-node" in refused
    refused += ["/docs", "/openapi.json", "/v1/fleet/../control/start-run", "/v1/fleet/%2e%2e/control/start-run",
                "/v1/fleet/..%2fcontrol/start-run", "//v1/control/start-run", "/v1/fleet/get-run/",
                "/v1/fleetx/get-run", "/V1/control/start-run"]
    for path in refused:
        status, body = _public(link, "POST", path, signed)
        assert status == 403 and json.loads(body) == {"code": 403, "detail": REFUSAL}, (path, status, body)
    for path in fleet_routes():
        status, body = _public(link, "POST", path, body=b"\x00")  # not a protobuf message: Flower says so
        assert status in (400, 401, 415, 422) and REFUSAL not in body, (path, status, body)
    assert _public(link, "GET", "/v1/fleet/get-run")[0] == 403
    superlink = next(p for p in link.procs.leftovers()
                     if "flower-superlink" in " ".join(p.cmdline()) and str(link.control_port) in p.cmdline())
    listening = {c.laddr.ip for c in superlink.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}, listening


def test_flwr_from_outside_the_coordinator_is_refused(link):
    """From another FLWR_HOME that holds the coordinator's CA certificate (as every site does), `flwr run`,
    `flwr supernode register` of a key the coordinator has not admitted, `flwr ls`, `flwr log` and
    `flwr stop` against the public port all fail with the proxy's one line, and none of them reaches
    the SuperLink (its access log shows no Control call meanwhile)."""
    home = link.folder / "outsider"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "coordinator"\n\n[superlink.coordinator]\naddress = "127.0.0.1:{link.port}"\n'
        f'root-certificates = "{link.folder / "tls" / "ca.crt"}"\n')
    env = {**link.procs.env, "FLWR_HOME": str(home), "COLUMNS": "400"}  # rich wraps no line at 400 columns
    attempts = {"start-run": ["run", str(ROOT), "coordinator"],
                "register-node": ["supernode", "register", str(link.folder / "keys" / "scanner3.key.pub"),
                                  "coordinator"],
                "list-runs": ["ls", "coordinator"], "stream-logs": ["log", "1", "coordinator"],
                "stop-run": ["stop", "1", "coordinator"]}
    server_log = link.procs.log("server0")
    running = {route: subprocess.Popen([str(BIN / "flwr"), *args], env=env, cwd=str(home), text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for route, args in attempts.items()}  # together: five CLI start-ups cost the time of two
    for route, proc in running.items():
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode != 0 and f"[code: 403] {REFUSAL}" in out, (route, out)
    refused = (link.cache / "server" / "proxy" / "refused.log").read_text()
    for route in attempts:
        assert f'"POST /v1/control/{route}" 403' in refused, (route, refused)
    assert "/v1/control/" not in link.procs.log("server0")[len(server_log):]


def test_registered_sites_join_through_the_proxy(link):
    """The two registered sites, whose SuperNodes dial the public port (nginx), are online at the
    SuperLink: activation and heartbeats, signed with their keys, pass the proxy."""
    def online() -> int:
        out = link.procs.run([str(BIN / "flwr"), "supernode", "list", "petite", "--format", "json"], 60)
        nodes = json.loads(out.stdout).get("nodes", []) if out.returncode == 0 else []
        return sum(node.get("status") == "online" for node in nodes)

    def joined() -> bool:
        time.sleep(2)
        return online() == 2

    wait_for(joined, 300, "two online sites", link.procs.log("scanner4")[-2000:] + link.procs.log("scanner5")[-2000:])


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
        name = summary["sites"][site]["adapter"]  # the site's name for it, under its own root: never its path
        adapter = link.folder / "sites" / name
        assert not Path(name).is_absolute() and adapter.is_file()
        assert _same(adapter, link.folder / "crash-reference" / reference["sites"][site]["adapter"])


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
    name = summary["sites"]["scanner4"]["adapter"]
    assert not Path(name).is_absolute()
    reference_adapter = link.folder / "faults-reference" / reference["sites"]["scanner4"]["adapter"]
    assert _same(link.folder / "sites" / name, reference_adapter)


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


@pytest.mark.slow  # a run through the real processes (about a minute)
def test_a_coordinator_cannot_name_a_folder_outside_a_sites_data_root(link):
    """Issue 26 B1 with real processes: a coordinator's hello said `data.name=../../victim`; the site (its
    YAML has `manifest: null`: it makes its own demo data) generated into `<data root>/../../victim` and the
    atomic swap replaced that folder. The stock coordinator refuses such a name itself, so this one is
    hostile (its installation changed, tests/hostile_coordinator): its hello carries the name and a
    `data.root` of its choice. The sites refuse at the hello, in one line, and the folder is untouched."""
    victim = link.folder / "victim"  # = <the sites' data root>/../../victim
    victim.mkdir(exist_ok=True)
    (victim / "keep.txt").write_text("the site's own file")
    link.hostile_hello.write_text(json.dumps({"data": {"name": "../../victim", "root": str(link.folder / "x")}}))
    try:
        run_id = link.submit("federation.rounds=1", "federation.run_name=victim", "federation.wait_for_sites=60")
        status = link.wait_finished(run_id, 300)
    finally:
        link.hostile_hello.unlink()
    assert status.startswith("finished"), status
    assert (victim / "keep.txt").read_text() == "the site's own file"
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"] and not (link.folder / "x").exists()
    refusal = "data.name '../../victim' is not a plain folder name"
    journal = json.loads((link.cache / "server" / "runs" / f"{run_id}.json").read_text())
    assert journal["status"] == "failed" and "refused by the run-config whitelist" in journal["detail"], journal
    for site in ("scanner4", "scanner5"):  # its log under any name it was (re)started with in this module
        log = "".join(path.read_text(errors="replace") for path in sorted(link.folder.glob(f"{site}*.log")))
        assert refusal in log, log[-3000:]
