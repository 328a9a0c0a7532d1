"""`petite-server`: the coordinator.

    petite-server certs --out DIR [--san IP:10.0.0.5 --san DNS:fl.hospital.org]
    petite-server [--tls DIR] [--host 0.0.0.0] [--port 9092]     # run the coordinator (TLS + site auth)
    petite-server --resume                                         # restart after a crash, runs continue
    petite-server register --site scanner1 --key scanner1.key.pub  # admit a site's key

Runs Flower's own SuperLink with TLS and SuperNode authentication on (plain text only with
--insecure), bound to 127.0.0.1:--control-port, where the operators' `flwr` reaches it; nginx
serves the sites on --host:--port and forwards Flower's Fleet API only (petite_fl/deploy/proxy.py).
Submit a run on this machine with `flwr run <app> petite` (the connection it writes to
$FLWR_HOME/config.toml), <app> being the Flower app installed with petite-fl (the folder it
prints) or a checkout's root.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from rich.markup import escape

from petite_fl.console import console, err_console, run_cli

PROG = "petite-server"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tls", type=Path, help="folder with ca.crt, server.pem, server.key "
                                                 "(default: $PETITE_FL_HOME/tls)")
    parser.add_argument("--host", help="address the sites dial (default 0.0.0.0; 127.0.0.1 with --local-only)")
    parser.add_argument("--port", type=int, default=9092, help="port for the sites (default 9092)")
    parser.add_argument("--control-port", type=int, default=9093,
                        help="port of the SuperLink on 127.0.0.1, for `flwr` on this machine (default 9093)")
    parser.add_argument("--local-only", action="store_true",
                        help="no proxy: the SuperLink itself on 127.0.0.1:--port, for sites on this machine only")
    parser.add_argument("--database", type=Path, help="SuperLink state (default: $PETITE_FL_HOME/server/state.db)")
    parser.add_argument("--insecure", action="store_true", help="plain text and no site authentication (testing only)")
    parser.add_argument("--no-auth", action="store_true", help="TLS without site authentication")
    parser.add_argument("--resume", action="store_true",
                        help="after a crash: submit again every run that was in progress when the server stopped; "
                             "each continues from its last completed round")
    parser.add_argument("--app", type=Path, help="the Flower app folder --resume submits "
                                                 "(default: the one installed with petite-fl)")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("certs", help="a CA and the SuperLink's TLS certificate (ECDSA P-384)")
    p.add_argument("--out", type=Path, help="folder for ca.crt, ca.key, server.pem, server.key "
                                            "(default: $PETITE_FL_HOME/tls)")
    p.add_argument("--san", action="append", default=None,
                   help="address the sites dial, as IP:… or DNS:… (repeatable; default IP:127.0.0.1 and "
                        "DNS:localhost)")
    p.add_argument("--days", type=int, default=365, help="validity (default 365)")
    p.add_argument("--overwrite", action="store_true", help="replace existing credentials in --out")
    p = sub.add_parser("register", help="admit a site: register its public key with the running SuperLink")
    p.add_argument("--site", required=True, help="site name (shown in `flwr supernode list`)")
    p.add_argument("--key", type=Path, required=True, help="the site's .key.pub (from petite-client keygen)")
    return parser


def _cache() -> Path:
    from petite_fl.config import compose, expand_path

    return expand_path(compose().paths.cache)


def cmd_certs(args) -> int:
    from petite_fl.deploy.certs import make_server_credentials

    sans = args.san or ["IP:127.0.0.1", "DNS:localhost"]
    creds = make_server_credentials(args.out or _cache() / "tls", sans, days=args.days, overwrite=args.overwrite)
    console.print(f"CA certificate (give it to every site): {escape(str(creds.ca_cert))}")
    console.print(f"server certificate {escape(str(creds.server_cert))} and key {escape(str(creds.server_key))} "
                  f"for {', '.join(sans)}; keep ca.key and server.key private")
    return 0


def cmd_register(args) -> int:
    import hashlib
    import json
    import subprocess

    from petite_fl.deploy import registry
    from petite_fl.deploy.connection import NAME
    from petite_fl.deploy.processes import BIN
    from petite_fl.errors import ConfigError, PetiteError
    from petite_fl.federation.fields import bad_name

    if not args.key.is_file():
        raise PetiteError(f"public key {args.key} not found")
    why = bad_name(args.site)
    if why:
        raise ConfigError(f"--site: {why}")
    out = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(args.key), NAME, "--name", args.site,
                          "--format", "json"], capture_output=True, text=True, timeout=120)
    try:
        node_id = int(json.loads(out.stdout)["node-id"]) if out.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        node_id = None
    if node_id is None:
        lines = [ln.strip(" │╭╮╰╯─") for ln in (out.stdout + out.stderr).splitlines()]
        raise PetiteError(f"registering {args.key} failed: " + " ".join(ln for ln in lines if ln)[:400])
    # The site's name is bound to this node: its hello is accepted under no other name.
    registry.record(registry.registry_path(_cache() / "server"), args.site, node_id,
                    hashlib.sha256(args.key.read_bytes()).hexdigest())
    console.print(f"site {escape(args.site)} registered as node {node_id} ({escape(str(args.key))})")
    return 0


def cmd_serve(args) -> int:
    from petite_fl.atomic import private_dir
    from petite_fl.deploy import journal
    from petite_fl.deploy.connection import write_connection
    from petite_fl.deploy.processes import ServerTLS, superlink_command
    from petite_fl.deploy.run import run_foreground
    from petite_fl.runconfig import app_dir

    cache = _cache()
    state = cache / "server"
    private_dir(state)  # the SuperLink's database, the run journal, the site table: 0700, files 0600
    tls = None if args.insecure else ServerTLS.from_folder(args.tls or cache / "tls")
    if args.insecure:
        err_console.print("[bold yellow]warning:[/] --insecure: updates travel in plain text and any node may join")
    host = args.host or ("127.0.0.1" if args.local_only else "0.0.0.0")
    proxy, link_tls, link_port = None, tls, args.port
    if args.local_only:
        _loopback_only(host)
    else:
        proxy, link_tls = _public_proxy(args, host, tls, state)
        link_port = args.control_port
    _port_free(host, args.port)
    if proxy is not None:
        _port_free("127.0.0.1", link_port)
    database = args.database or state / "state.db"
    database.parent.mkdir(parents=True, exist_ok=True)
    cmd = superlink_command(tls=link_tls, auth=not (args.insecure or args.no_auth), host="127.0.0.1",
                            port=link_port, database=database)
    address = f"127.0.0.1:{link_port}"
    conn = write_connection(address, link_tls.ca_cert if link_tls else None)
    runs = state / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    pending = journal.interrupted(runs)
    if pending and not args.resume:
        err_console.print(f"[bold yellow]note:[/] {len(pending)} run(s) were in progress when the server stopped "
                          f"(ids {', '.join(str(e['run_id']) for e in pending)}); restart with --resume to continue "
                          "them, or submit them again yourself")
    via = "nginx forwards Flower's Fleet API only" if proxy else "--local-only: this machine only"
    console.print(f"coordinator: sites on {escape(host)}:{args.port} ({'TLS' if tls else 'PLAIN TEXT'}, "
                  f"site authentication {'on' if '--enable-supernode-auth' in cmd else 'off'}; {via}); "
                  f"operators on {address}: `flwr run {escape(str(app_dir()))} petite` submits a run (connection "
                  f"in {escape(str(conn))}). Ctrl-C stops it.")
    if args.resume:
        app = (args.app or app_dir()).resolve()
        threading.Thread(target=_resume, args=(runs, pending, app, address), daemon=True).start()
    # Flower opens its legacy gRPC Control and Fleet APIs (on 0.0.0.0) when these are set: never here.
    env = {k: v for k, v in os.environ.items() if k not in ("FLWR_INTERNAL_GRPC_CONTROL_API",
                                                           "FLWR_INTERNAL_GRPC_FLEET_API")}
    from petite_fl.deploy import registry

    env = {**env, journal.ENV: str(runs)}
    if "--enable-supernode-auth" in cmd:  # nodes are known by their keys: each is bound to its site's name
        env[registry.ENV] = str(registry.registry_path(state))
    run_foreground(cmd, env=env, companions=[proxy] if proxy else [])
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _loopback_only(host: str) -> None:
    from petite_fl.errors import ConfigError

    if host not in LOOPBACK:
        raise ConfigError(f"--local-only serves this machine only, not --host {host}: drop --local-only to serve "
                          "sites elsewhere (through the proxy), or use --host 127.0.0.1")


def _public_proxy(args, host: str, tls, state: Path):
    """The proxy that serves the sites (a `Companion`), and the loopback SuperLink's TLS behind it."""
    from petite_fl.deploy.certs import make_loopback_credentials
    from petite_fl.deploy.processes import ServerTLS
    from petite_fl.deploy.proxy import ProxyPlan, explain_exit, find_nginx, write_proxy
    from petite_fl.deploy.run import Companion
    from petite_fl.errors import ConfigError

    find_nginx()  # refused in one line before anything is written
    if args.control_port == args.port:
        raise ConfigError(f"--control-port {args.control_port} is --port: the SuperLink needs a port of its own")
    link_tls = None
    if tls is not None:
        creds = make_loopback_credentials(state / "loopback-tls")
        link_tls = ServerTLS(creds.ca_cert, creds.server_cert, creds.server_key)
    plan = ProxyPlan(host=host, port=args.port, upstream_port=args.control_port,
                     cert=tls.server_cert if tls else None, key=tls.server_key if tls else None,
                     upstream_ca=link_tls.ca_cert if link_tls else None)
    folder = state / "proxy"
    return Companion("nginx (the public proxy)", write_proxy(plan, folder), lambda: explain_exit(folder)), link_tls


def _port_free(host: str, port: int) -> None:
    import socket

    from petite_fl.errors import PetiteError

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the SuperLink binds: only a listener blocks
        try:
            s.bind((host, port))
        except OSError as exc:
            raise PetiteError(f"cannot listen on {host}:{port} ({exc.strerror}): another petite-server or a "
                              "`flwr run` SuperLink holds the port; stop it or pass --port") from None


def _resume(runs: Path, pending: list[dict], app: Path, address: str) -> None:
    """Once the SuperLink answers, submit the interrupted runs again (in a thread beside it)."""
    import socket
    import time

    from petite_fl.deploy import journal
    from petite_fl.deploy.connection import NAME
    from petite_fl.errors import PetiteError

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
            new_id = journal.resubmit(runs, entry, app, NAME)
            console.print(f"--resume: run {entry['run_id']} submitted again as run {new_id}; "
                          "it continues from its last completed round")
        except (PetiteError, OSError, ValueError) as exc:
            err_console.print(f"[bold red]--resume:[/] {escape(str(exc))}")


COMMANDS = {"certs": cmd_certs, "register": cmd_register, None: cmd_serve}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
