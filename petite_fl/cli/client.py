"""`petite-client`: a scanner site's commands.

    petite-client keygen --site scanner1 [--out DIR]

makes the site's SuperNode key pair (ECDSA P-384, OpenSSH); the coordinator registers the
`.pub` file, the private key never leaves the site.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.markup import escape

from petite_fl.cli.common import console, run_cli

PROG = "petite-client"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("keygen", help="the site's SuperNode authentication key pair")
    p.add_argument("--site", required=True, help="site name (the key files are named after it)")
    p.add_argument("--out", type=Path, help="folder (default: $PETITE_FL_HOME/sites/<site>/keys)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing key pair")
    return parser


def cmd_keygen(args) -> int:
    from petite_fl.config import compose, expand_path
    from petite_fl.deploy.certs import make_site_keys

    out = args.out or expand_path(compose().paths.cache) / "sites" / args.site / "keys"
    private, public = make_site_keys(out, args.site, overwrite=args.overwrite)
    console.print(f"private key (stays at the site): {escape(str(private))}")
    console.print(f"public key (send to the coordinator to register): {escape(str(public))}")
    return 0


COMMANDS = {"keygen": cmd_keygen}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
