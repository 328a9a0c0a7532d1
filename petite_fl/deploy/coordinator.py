"""The coordinator as `petite-server` runs it: Flower's SuperLink on 127.0.0.1 with TLS and site
authentication, nginx in front of it serving the sites (Fleet API only), the run journal and
the site table handed to the ServerApps, and `--resume` of interrupted runs.

The deployed coordinator's counterpart of `deploy.site` (a site's SuperNode); `cli/server.py`
only parses the command line into a `CoordinatorPlan`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from petite_fl.atomic import private_dir
from petite_fl.console import console, err_console
from petite_fl.deploy import registry
from petite_fl.deploy.certs import make_loopback_credentials
from petite_fl.deploy.connection import NAME, write_connection
from petite_fl.deploy.processes import ServerTLS, superlink_command
from petite_fl.deploy.proxy import Limits, ProxyPlan, explain_exit, find_nginx, write_proxy
from petite_fl.deploy.resubmit import resubmit
from petite_fl.deploy.run import Companion, run_foreground
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.flower import journal
from petite_fl.runconfig import app_dir


@dataclass(frozen=True)
class CoordinatorPlan:
    """What `petite-server` was asked for (its options, see `petite-server --help`)."""

    cache: Path                 # $PETITE_FL_HOME: tls/, server/ (state.db, runs/, sites.json, proxy/)
    tls: Path | None = None
    host: str | None = None
    port: int = 9092
    control_port: int = 9093
    local_only: bool = False
    database: Path | None = None
    insecure: bool = False
    no_auth: bool = False
    no_auth_public: bool = False  # --no-auth on a non-loopback --host, asked for explicitly
    resume: bool = False
    app: Path | None = None
    limits: Limits | None = None  # the proxy's per-address limits (None: its defaults)


def serve(plan: CoordinatorPlan) -> None:
    """Run the coordinator in the foreground until Ctrl-C (or one of its processes ends)."""
    if plan.local_only and plan.limits is not None:
        raise ConfigError("--rate-limit, --burst and --max-connections are the public proxy's limits; "
                          "--local-only has no proxy: drop them or drop --local-only")
    state = plan.cache / "server"
    host = plan.host or ("127.0.0.1" if plan.local_only else "0.0.0.0")
    _no_auth_reach(plan, host)
    private_dir(state)  # the SuperLink's database, the run journal, the site table: 0700, files 0600
    tls = None if plan.insecure else ServerTLS.from_folder(plan.tls or plan.cache / "tls")
    if plan.insecure:
        err_console.print("[bold yellow]warning:[/] --insecure: updates travel in plain text and any node may join")
    proxy, link_tls, link_port = None, tls, plan.port
    if plan.local_only:
        _loopback_only(host)
    else:
        proxy, link_tls = _public_proxy(plan, host, tls, state)
        link_port = plan.control_port
    _port_free(host, plan.port)
    if proxy is not None:
        _port_free("127.0.0.1", link_port)
    database = private_database(plan.database or state / "state.db")
    cmd = superlink_command(tls=link_tls, auth=not (plan.insecure or plan.no_auth), host="127.0.0.1",
                            port=link_port, database=database)
    address = f"127.0.0.1:{link_port}"
    conn = write_connection(address, link_tls.ca_cert if link_tls else None)
    runs = state / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    pending = journal.interrupted(runs)
    if pending and not plan.resume:
        err_console.print(f"[bold yellow]note:[/] {len(pending)} run(s) were in progress when the server stopped "
                          f"(ids {', '.join(str(e['run_id']) for e in pending)}); restart with --resume to continue "
                          "them, or submit them again yourself")
    via = "nginx forwards Flower's Fleet API only" if proxy else "--local-only: this machine only"
    console.print(f"coordinator: sites on {escape(host)}:{plan.port} ({'TLS' if tls else 'PLAIN TEXT'}, "
                  f"site authentication {'on' if '--enable-supernode-auth' in cmd else 'off'}; {via}); "
                  f"operators on {address}: `flwr run {escape(str(app_dir()))} petite` submits a run (connection "
                  f"in {escape(str(conn))}). Ctrl-C stops it.")
    if plan.resume:
        app = (plan.app or app_dir()).resolve()
        threading.Thread(target=_resume, args=(runs, pending, app, address), daemon=True).start()
    # Flower opens its legacy gRPC Control and Fleet APIs (on 0.0.0.0) when these are set: never here.
    env = {k: v for k, v in os.environ.items() if k not in ("FLWR_INTERNAL_GRPC_CONTROL_API",
                                                           "FLWR_INTERNAL_GRPC_FLEET_API")}
    env = {**env, journal.ENV: str(runs)}
    if "--enable-supernode-auth" in cmd:  # nodes are known by their keys: each is bound to its site's name
        env[registry.ENV] = str(registry.registry_path(state))
    run_foreground(cmd, env=env, companions=[proxy] if proxy else [])


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def private_database(database: Path) -> Path:
    """The SuperLink's database file, 0600 wherever it is (`--database` may name a shared folder):
    created empty by this user before the SuperLink opens it, so SQLite, which gives its -wal and
    -shm files the database file's mode, creates them 0600 as well; existing ones are made 0600."""
    if database.name.startswith(":"):  # Flower's in-memory names (":flwr-in-memory:"): no file
        return database
    database.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(database, os.O_CREAT | os.O_WRONLY, 0o600))
    for path in (database, *(database.with_name(database.name + s) for s in ("-wal", "-shm", "-journal"))):
        if path.exists():
            os.chmod(path, 0o600)
    return database


def _no_auth_reach(plan: CoordinatorPlan, host: str) -> None:
    """--no-auth lets any holder of ca.crt join under any name not yet claimed: on this machine
    only, unless the operator says --no-auth-public as well."""
    if plan.no_auth_public and not plan.no_auth:
        raise ConfigError("--no-auth-public goes with --no-auth only (it lets --no-auth serve a non-loopback --host)")
    if plan.no_auth and host not in LOOPBACK and not plan.no_auth_public:
        raise ConfigError(f"--no-auth on --host {host}: without site keys anyone who reaches this address and holds "
                          "ca.crt can join as any site not yet claimed; register site keys instead, use "
                          "--host 127.0.0.1, or add --no-auth-public to accept that")


def _loopback_only(host: str) -> None:
    if host not in LOOPBACK:
        raise ConfigError(f"--local-only serves this machine only, not --host {host}: drop --local-only to serve "
                          "sites elsewhere (through the proxy), or use --host 127.0.0.1")


def _public_proxy(plan: CoordinatorPlan, host: str, tls: ServerTLS | None,
                  state: Path) -> tuple[Companion, ServerTLS | None]:
    """The proxy that serves the sites (a `Companion`), and the loopback SuperLink's TLS behind it."""
    find_nginx()  # refused in one line before anything is written
    if plan.control_port == plan.port:
        raise ConfigError(f"--control-port {plan.control_port} is --port: the SuperLink needs a port of its own")
    link_tls = None
    if tls is not None:
        creds = make_loopback_credentials(state / "loopback-tls")
        link_tls = ServerTLS(creds.ca_cert, creds.server_cert, creds.server_key)
    plan = ProxyPlan(host=host, port=plan.port, upstream_port=plan.control_port,
                     cert=tls.server_cert if tls else None, key=tls.server_key if tls else None,
                     upstream_ca=link_tls.ca_cert if link_tls else None, limits=plan.limits or Limits())
    folder = state / "proxy"
    return Companion("nginx (the public proxy)", write_proxy(plan, folder), lambda: explain_exit(folder)), link_tls


def _port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the SuperLink binds: only a listener blocks
        try:
            s.bind((host, port))
        except OSError as exc:
            raise PetiteError(f"cannot listen on {host}:{port} ({exc.strerror}): another petite-server or a "
                              "`flwr run` SuperLink holds the port; stop it or pass --port") from None


def _resume(runs: Path, pending: list[dict], app: Path, address: str) -> None:
    """Once the SuperLink answers, submit the interrupted runs again (in a thread beside it)."""
    if not pending:
        console.print("--resume: no interrupted run to continue")
        return
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            break
        except OSError:
            time.sleep(1)
    time.sleep(2)  # the port opens a moment before the control API serves
    for entry in pending:
        try:
            new_id = resubmit(runs, entry, app, NAME)
            console.print(f"--resume: run {entry['run_id']} submitted again as run {new_id}; "
                          "it continues from its last completed round")
        except (PetiteError, OSError, ValueError) as exc:
            err_console.print(f"[bold red]--resume:[/] {escape(str(exc))}")
