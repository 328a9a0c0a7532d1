"""`petite-server`: the coordinator's commands.

    petite-server certs --out DIR [--san IP:10.0.0.5 --san DNS:fl.hospital.org]

makes the CA and the SuperLink's TLS certificate (sites get `ca.crt`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.markup import escape

from petite_fl.cli.common import console, run_cli

PROG = "petite-server"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("certs", help="a CA and the SuperLink's TLS certificate (ECDSA P-384)")
    p.add_argument("--out", type=Path, required=True, help="folder for ca.crt, ca.key, server.pem, server.key")
    p.add_argument("--san", action="append", default=None,
                   help="address the sites dial, as IP:… or DNS:… (repeatable; default IP:127.0.0.1 and "
                        "DNS:localhost)")
    p.add_argument("--days", type=int, default=365, help="validity (default 365)")
    p.add_argument("--overwrite", action="store_true", help="replace existing credentials in --out")
    return parser


def cmd_certs(args) -> int:
    from petite_fl.deploy.certs import make_server_credentials

    sans = args.san or ["IP:127.0.0.1", "DNS:localhost"]
    creds = make_server_credentials(args.out, sans, days=args.days, overwrite=args.overwrite)
    console.print(f"CA certificate (give it to every site): {escape(str(creds.ca_cert))}")
    console.print(f"server certificate {escape(str(creds.server_cert))} and key {escape(str(creds.server_key))} "
                  f"for {', '.join(sans)}; keep ca.key and server.key private")
    return 0


COMMANDS = {"certs": cmd_certs}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
