"""The coordinator's public port under a flood (issue 27 item 5): real nginx, a real SuperLink and,
in the slow test, two real sites finishing a round while one address floods the port.

All processes run on this machine, and nginx keys its limits on the client address: so the flood
leaves from other loopback addresses (Linux routes all of 127.0.0.0/8 to `lo`; a socket may bind
any of them as its source), 127.0.0.2 and up, while the sites dial from 127.0.0.1, nginx listening
on 127.0.0.1, which both reach. Each test floods from an address of its own, so that one test's
spent burst is not the next one's.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import time
from collections import Counter

import pytest
from deployment_kit import ROOT, SITE_DATA, Link, Processes, wait_for

from petite_fl.deploy import proxy
from petite_fl.deploy.processes import BIN
from petite_fl.errors import PetiteError


def _nginx_installed() -> bool:
    try:
        return bool(proxy.find_nginx())
    except PetiteError:
        return False


pytestmark = pytest.mark.skipif(not _nginx_installed() and not os.environ.get("CI"),
                                reason=f"nginx is not installed: {proxy.INSTALL_HINT}")

ROUTE = "/v1/fleet/pull-messages"  # a Fleet route: what nginx lets through reaches the SuperLink
LIMITED = 503  # what the proxy answers a client past its limits (Flower's SuperNode retries it)


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    """petite-server (nginx + SuperLink, TLS and site authentication) on 127.0.0.1, default limits."""
    folder = tmp_path_factory.mktemp("flood")
    env = {**os.environ, "FLWR_HOME": str(folder / "flwr"), "PETITE_FL_HOME": str(folder / "cache"),
           "FLWR_DISABLE_UPDATE_CHECK": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT)}  # this checkout's petite_fl in every process
    procs = Processes(folder, env)
    link = Link(folder, procs)
    try:
        certs = procs.run([str(BIN / "petite-server"), "certs", "--out", str(folder / "tls")], 60)
        assert certs.returncode == 0, certs.stderr
        link.server = procs.start("server", [
            str(BIN / "petite-server"), "--tls", str(folder / "tls"), "--host", "127.0.0.1", "--port", str(link.port),
            "--control-port", str(link.control_port), "--database", str(folder / "state.db")])
        wait_for(lambda: _send(link, "127.0.0.1", 1)[0][0] not in (0, 502), 90, "the coordinator",
                 procs.log("server"))
        yield link
    finally:
        procs.stop()


def _connect(link: Link, source: str) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(link.folder / "tls" / "ca.crt"))
    return http.client.HTTPSConnection("127.0.0.1", link.port, context=context, timeout=30,
                                       source_address=(source, 0))


def _send(link: Link, source: str, count: int) -> list[tuple[int, str]]:
    """`count` POSTs to a Fleet route over one kept-alive connection from `source`: (status, the
    `detail` of a 503's body) each; status 0 for a request the connection failed."""
    out, conn = [], _connect(link, source)
    try:
        for _ in range(count):
            try:
                conn.request("POST", ROUTE, body=b"\x00", headers={"content-type": "application/protobuf"})
                response = conn.getresponse()
                body = response.read()
                out.append((response.status, json.loads(body)["detail"] if response.status == LIMITED else ""))
            except (OSError, http.client.HTTPException):
                out.append((0, ""))
                conn.close()
                conn = _connect(link, source)
    finally:
        conn.close()
    return out


def flood(link: Link, source: str, requests: int = 3000, connections: int = 4) -> dict:
    """`requests` POSTs from `source` over `connections` concurrent connections, as fast as they go."""
    results: list[list[tuple[int, str]]] = [[] for _ in range(connections)]

    def one(i: int) -> None:
        results[i] = _send(link, source, requests // connections)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(connections)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - start
    flat = [r for rs in results for r in rs]
    limited = sum(status == LIMITED for status, _ in flat)
    return {"source": source, "sent": len(flat), "seconds": round(seconds, 1), "limited": limited,
            "served": len(flat) - limited, "status": dict(Counter(status for status, _ in flat)),
            "details": sorted({detail for _, detail in flat if detail})}


def _within_limits(figures: dict) -> None:
    """The flood was refused, in the proxy's one line, beyond what nginx's token bucket lets through."""
    assert figures["limited"], figures  # (on a proxy without limits: all served, Flower answering each)
    limits = proxy.Limits()
    assert figures["served"] <= 1 + limits.burst + limits.rate * (figures["seconds"] + 1), figures
    assert figures["details"] == [proxy.LIMITED], figures["details"]


def test_a_flood_from_one_address_is_refused_beyond_its_rate_and_burst(link):
    """3,000 requests from one address over 4 connections: nginx serves its burst and its rate, and
    answers the rest 503 with its one line, before they reach Flower; another address is served
    meanwhile; refused.log samples the refusals instead of writing a line each."""
    figures = flood(link, "127.0.0.2")
    print("flood:", json.dumps(figures))
    _within_limits(figures)
    status, _ = _send(link, "127.0.0.1", 1)[0]
    assert status not in (0, LIMITED), status  # Flower's own answer to the junk body
    refused = (link.cache / "server" / "proxy" / "refused.log").read_text().splitlines()
    rejected = [ln for ln in refused if "REJECTED" in ln]
    assert all(" 127.0.0.2 " in ln for ln in rejected), rejected[:5]
    assert len(rejected) < figures["limited"] / 10, (len(rejected), figures)  # sampled (1 %)


def _held(link: Link, source: str) -> ssl.SSLSocket:
    """A connection from `source` whose request is in flight: its headers sent, its body never."""
    import socket

    context = ssl.create_default_context(cafile=str(link.folder / "tls" / "ca.crt"))
    raw = socket.create_connection(("127.0.0.1", link.port), timeout=30, source_address=(source, 0))
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(f"POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/protobuf\r\n"
                 "Content-Length: 1000\r\n\r\n".encode())
    return sock


def test_requests_in_flight_from_one_address_are_bounded(link):
    """One address holds --max-connections requests in flight (headers sent, body withheld): its next
    requests are answered 503 at once, another address is still served, and once it lets go it is
    served again."""
    limits = proxy.Limits()
    held = [_held(link, "127.0.0.3") for _ in range(limits.connections)]
    try:
        time.sleep(1)  # nginx has read each one's headers: all are in flight
        over = _held(link, "127.0.0.3")
        over.settimeout(20)
        try:
            answer = over.recv(64)
        except TimeoutError:
            answer = b"no answer in 20 s: in flight, not refused"
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        over.close()
        assert _send(link, "127.0.0.3", 1) == [(LIMITED, proxy.LIMITED)]
        assert _send(link, "127.0.0.1", 1)[0][0] not in (0, LIMITED)
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: _send(link, "127.0.0.3", 1)[0][0] not in (0, LIMITED), 30,
             "the address served again")


def _start_sites(link: Link) -> None:
    """scanner4 and scanner5: keys, registered with the coordinator, SuperNodes dialing its public port."""
    procs = link.procs
    for site in ("scanner4", "scanner5"):
        keys = procs.run([str(BIN / "petite-client"), "keygen", "--site", site, "--out", str(link.folder / "keys")], 60)
        assert keys.returncode == 0, keys.stderr
        reg = procs.run([str(BIN / "petite-server"), "register", "--site", site,
                         "--key", str(link.folder / "keys" / f"{site}.key.pub")], 60)
        assert reg.returncode == 0, reg.stdout + reg.stderr
        link.clients[site] = procs.start(site, [str(BIN / "petite-client"), "--site", str(link.yaml(site)),
                                                "-o", f"paths.cache={link.cache}", *SITE_DATA])

    def online() -> bool:
        time.sleep(2)
        out = procs.run([str(BIN / "flwr"), "supernode", "list", "petite", "--format", "json"], 60)
        nodes = json.loads(out.stdout).get("nodes", []) if out.returncode == 0 else []
        return sum(node.get("status") == "online" for node in nodes) == 2

    wait_for(online, 300, "two online sites", procs.log("scanner4")[-2000:] + procs.log("scanner5")[-2000:])


def _round(link: Link, name: str, source: str | None = None) -> tuple[float, dict | None]:
    """A one-round run (both sites), with a flood from `source` started as it is submitted: the run's
    wall time from the ServerApp's start to its end (its journal), and the flood's figures."""
    run_id = link.submit("federation.rounds=1", f"federation.run_name={name}")
    figures = flood(link, source) if source else None
    if figures:
        print(f"{name}:", json.dumps(figures))
        _within_limits(figures)  # before the run ends: fails fast where nothing limits
    assert link.wait_finished(run_id, 600) == "finished:completed"
    entry = json.loads((link.cache / "server" / "runs" / f"{run_id}.json").read_text())
    summary = json.loads((link.cache / "runs" / "federated" / name / "summary.json").read_text())
    assert sorted(summary["sites"]) == ["scanner4", "scanner5"] and not summary["rejected"], summary
    return entry["ended"] - entry["started"], figures


@pytest.mark.slow  # three one-round runs through real processes (several minutes on 2 cores)
def test_registered_sites_finish_a_round_while_one_address_floods_the_port(link):
    """Two registered sites (dialing from 127.0.0.1) run one round while 127.0.0.4 sends 3,000 requests
    to the Fleet API over 4 connections: most of the flood is answered 503 by nginx, the round completes
    with both sites, and neither site ever met a limit (Flower logs each retry it makes after a 503).
    The same round without the flood, before and after, is the baseline for its time."""
    _start_sites(link)
    marks = {site: len(link.procs.log(site)) for site in link.clients}
    before, _ = _round(link, "baseline-1")
    flooded, figures = _round(link, "flood", "127.0.0.4")
    after, _ = _round(link, "baseline-2")
    print(f"one-round run: {before:.1f} s and {after:.1f} s without the flood, {flooded:.1f} s with it; "
          f"flood: {figures['sent']} sent, {figures['served']} served, {figures['limited']} refused 503")
    for site, mark in marks.items():
        assert "Connection attempt failed" not in link.procs.log(site)[mark:], site
