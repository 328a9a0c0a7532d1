"""`petite-server`: the coordinator.

    petite-server certs --out DIR [--san IP:10.0.0.5 --san DNS:fl.hospital.org]
    petite-server [--tls DIR] [--host 0.0.0.0] [--port 9092]     # run the coordinator (TLS + site auth)
    petite-server --resume                                         # restart after a crash, runs continue
    petite-server register --site scanner1 --key scanner1.key.pub  # admit a site's key
        [--max-train-weight N --max-eval-count N]                  # and attest how much it may weigh
    petite-server attest --site scanner1 --max-train-weight N      # change that later

Runs Flower's own SuperLink with TLS and SuperNode authentication on (plain text only with
--insecure), bound to 127.0.0.1:--control-port, where the operators' `flwr` reaches it; nginx
serves the sites on --host:--port and forwards Flower's Fleet API only (petite_fl/deploy/proxy.py).
Submit a run on this machine with `flwr run <app> petite` (the connection it writes to
$FLWR_HOME/config.toml), <app> being the Flower app installed with petite-fl (the folder it
prints) or a checkout's root.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.markup import escape

from petite_fl.console import console, run_cli

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
    parser.add_argument("--rate-limit", metavar="R/s", help="requests per second one client address may make "
                        "on the public port, sustained (default 20/s; beyond it nginx answers 503)")
    parser.add_argument("--burst", metavar="B", help="requests above that rate one address may make at once, "
                                                     "e.g. a backbone's chunks (default 600)")
    parser.add_argument("--max-connections", metavar="N", help="requests one address may have in flight on the "
                                                               "public port (default 32)")
    parser.add_argument("--database", type=Path, help="SuperLink state (default: $PETITE_FL_HOME/server/state.db)")
    parser.add_argument("--insecure", action="store_true", help="plain text and no site authentication (testing only)")
    parser.add_argument("--no-auth", action="store_true",
                        help="TLS without site keys: anyone who reaches the port and holds ca.crt joins as any "
                             "site not yet claimed; loopback --host only, unless --no-auth-public")
    parser.add_argument("--no-auth-public", action="store_true",
                        help="with --no-auth: serve a non-loopback --host anyway, accepting the above")
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
    _attest_options(p)
    p = sub.add_parser("attest", help="set how much a registered site may weigh (its own counts are claims)")
    p.add_argument("--site", required=True, help="a registered site's name")
    _attest_options(p)
    return parser


def _attest_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-train-weight", type=int, metavar="N",
                   help="the most training scans this site is known to hold: its FedAvg weight is at most N "
                        "(default: unattested, it weighs federation.unattested_weight, uniform = 1)")
    p.add_argument("--max-eval-count", type=int, metavar="N",
                   help="the most validation/test subjects it is known to hold: its weight in the run's reported "
                        "means is at most N (default: unattested)")


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
    from petite_fl.deploy.processes import flower_executable
    from petite_fl.errors import ConfigError, PetiteError
    from petite_fl.federation.fields import bad_name

    if not args.key.is_file():
        raise PetiteError(f"public key {args.key} not found")
    why = bad_name(args.site)
    if why:
        raise ConfigError(f"--site: {why}")
    registry.attestation(args.max_train_weight, args.max_eval_count)  # a bad figure before Flower registers
    out = subprocess.run([flower_executable("flwr"), "supernode", "register", str(args.key), NAME, "--name", args.site,
                          "--format", "json"], capture_output=True, text=True, timeout=120)
    try:
        node_id = int(json.loads(out.stdout)["node-id"]) if out.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        node_id = None
    if node_id is None:
        lines = [ln.strip(" │╭╮╰╯─") for ln in (out.stdout + out.stderr).splitlines()]
        raise PetiteError(f"registering {args.key} failed: " + " ".join(ln for ln in lines if ln)[:400])
    # The site's name is bound to this node: its hello is accepted under no other name.
    admit(args, node_id, hashlib.sha256(args.key.read_bytes()).hexdigest())
    console.print(f"site {escape(args.site)} registered as node {node_id} ({escape(str(args.key))})")
    return 0


def admit(args, node_id: int, key_sha256: str) -> None:
    """The site table's entry of a site Flower registered as `node_id`, with the operator's attestation."""
    from petite_fl.deploy import registry

    registry.record(registry.registry_path(_cache() / "server"), args.site, node_id, key_sha256,
                    args.max_train_weight, args.max_eval_count)
    _say_attested(args)


def cmd_attest(args) -> int:
    from petite_fl.deploy import registry
    from petite_fl.errors import ConfigError

    path = registry.registry_path(_cache() / "server")
    entry = registry.read_table(path).get(args.site)
    if entry is None:
        raise ConfigError(f"site {args.site} is not registered (petite-server register --site NAME --key KEY.pub)")
    registry.record(path, args.site, entry["node_id"], entry["key_sha256"],
                    args.max_train_weight, args.max_eval_count)
    _say_attested(args)
    return 0


def _say_attested(args) -> None:
    figures = [f"{what} ≤ {n}" for what, n in (("training weight", args.max_train_weight),
                                                ("evaluation subjects", args.max_eval_count)) if n is not None]
    console.print(f"site {escape(args.site)}: " + (", ".join(figures) + " (attested)" if figures else
                  "unattested: it weighs federation.unattested_weight (uniform = 1) in training and in the means"))


def cmd_serve(args) -> int:
    from petite_fl.deploy.coordinator import CoordinatorPlan, serve
    from petite_fl.deploy.proxy import Limits

    flags = (args.rate_limit, args.burst, args.max_connections)
    serve(CoordinatorPlan(cache=_cache(), tls=args.tls, host=args.host, port=args.port,
                          control_port=args.control_port, local_only=args.local_only, database=args.database,
                          insecure=args.insecure, no_auth=args.no_auth,
                          no_auth_public=args.no_auth_public, resume=args.resume, app=args.app,
                          limits=Limits.parse(*flags) if any(f is not None for f in flags) else None))
    return 0


COMMANDS = {"certs": cmd_certs, "register": cmd_register, "attest": cmd_attest, None: cmd_serve}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
