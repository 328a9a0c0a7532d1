"""`petite-client`: one scanner site.

    petite-client --site scanner1            # check the site, then join as a SuperNode
    petite-client keygen --site scanner1     # the site's key pair (register the .pub)

A site is `petite_fl/configs/site/<name>.yaml` or a YAML file with: name, manifest, device, cache,
server, ca_cert, private_key, port. Hydra overrides (key=value) follow the options, as for
every petite command: `petite-client --site scanner1 paths.cache=/data/petite`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.markup import escape

from petite_fl.cli.common import console, run_cli

PROG = "petite-client"


OVERRIDES = {"nargs": "*", "help": "Hydra overrides, e.g. paths.cache=/data/petite"}


def _legacy_overrides(parser: argparse.ArgumentParser) -> None:
    """`-o key=value`, the earlier spelling of an override, still accepted."""
    parser.add_argument("-o", "--override", action="append", default=[], dest="legacy_overrides",
                        help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """Joining as a site (the default command)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"{PROG} keygen --help: the site's key pair")
    parser.add_argument("--site", help="site name (petite_fl/configs/site/<name>.yaml) or a site YAML file")
    parser.add_argument("--insecure", action="store_true",
                        help="plain text, no authentication (only against a server started with --insecure)")
    parser.add_argument("--check", action="store_true", help="run the checks and stop (do not join)")
    _legacy_overrides(parser)
    parser.add_argument("overrides", **OVERRIDES)
    return parser


def build_keygen_parser() -> argparse.ArgumentParser:
    """`petite-client keygen`: a command of its own, so that overrides can follow its options too."""
    p = argparse.ArgumentParser(prog=f"{PROG} keygen", description="the site's SuperNode authentication key pair")
    p.add_argument("--site", required=True, help="site name (the key files are named after it)")
    p.add_argument("--out", type=Path, help="folder (default: $PETITE_FL_HOME/sites/<site>/keys)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing key pair")
    _legacy_overrides(p)
    p.add_argument("overrides", **OVERRIDES)
    return p


def cmd_keygen(args) -> int:
    from petite_fl.config import compose, expand_path
    from petite_fl.deploy.certs import make_site_keys

    out = args.out or expand_path(compose(overrides=args.overrides).paths.cache) / "sites" / args.site / "keys"
    private, public = make_site_keys(out, args.site, overwrite=args.overwrite)
    console.print(f"private key (stays at the site): {escape(str(private))}")
    console.print(f"public key (send to the coordinator to register): {escape(str(public))}")
    return 0


KEY_REFUSED = "the server refused this site's key"
REJOIN_WAIT = 90  # seconds: Flower forgets a lost SuperNode after 2 × its 30 s heartbeat


def _explain(tail: list[str], site: str = "<name>") -> str | None:
    text = "\n".join(tail).lower()
    if ("failed to activate supernode" in text or "no supernode found" in text or "not registered" in text
            or "unauthenticated" in text or "permission" in text):
        return (f"{KEY_REFUSED}: it is not registered; the coordinator runs "
                f"`petite-server register --site {site} --key {site}.key.pub` with this site's public key")
    if "certificate" in text or "ssl" in text or "handshake" in text:
        return "TLS failed: is ca_cert the coordinator's ca.crt, and is the server started with TLS?"
    return None


def cmd_join(args) -> int:
    from petite_fl.atomic import atomic_path
    from petite_fl.deploy.processes import supernode_command, write_toml
    from petite_fl.deploy.run import run_foreground
    from petite_fl.deploy.site import preflight, site_deployment
    from petite_fl.errors import ConfigError, PetiteError

    if not args.site:
        raise ConfigError("--site is required (a name in petite_fl/configs/site/ or a site YAML file)")
    site = site_deployment(args.site, insecure=args.insecure, overrides=args.overrides)
    if args.insecure:
        console.print("[bold yellow]warning:[/] --insecure: no TLS and no site authentication")
    for note in preflight(site, args.overrides):
        console.print(f"site {escape(site.name)}: {escape(note)}")
    if args.check:
        console.print(f"site {escape(site.name)}: ready to join {escape(site.server)}")
        return 0
    from petite_fl.config import compose, expand_path

    # The site's own data folder (its synthetic scanner, when it has no manifest): never the coordinator's.
    data_root = expand_path(compose(overrides=args.overrides).data.root)
    node_config = write_toml(site.cache / site.name / "node-config.toml",
                             {**site.node_config(), "data-root": str(data_root)})
    cmd = supernode_command(superlink=site.server, ca_cert=site.ca_cert, private_key=site.private_key,
                            node_config=node_config, port=site.port)
    # A marker for "joined and not left cleanly": after a crash, Flower's SuperLink still counts the
    # site as connected until two heartbeats are missed (~60 s) and refuses to activate it again
    # meanwhile, with the same error as for an unregistered key; so a crashed site retries.
    marker = site.cache / site.name / "joined"
    crashed = marker.is_file()
    marker.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(marker) as tmp:
        tmp.write_text(site.server)
    deadline = time.monotonic() + (REJOIN_WAIT if crashed else 0)
    console.print(f"site {escape(site.name)}: joining {escape(site.server)} (Ctrl-C to leave)")
    try:
        while True:
            try:
                run_foreground(cmd, explain=lambda tail: _explain(tail, site.name))
                break
            except PetiteError as exc:
                if KEY_REFUSED not in str(exc) or time.monotonic() > deadline:
                    if crashed and KEY_REFUSED in str(exc):
                        raise PetiteError(f"{exc} (or the server still counts this site as connected: it "
                                          f"stopped without leaving less than {REJOIN_WAIT} s ago)") from None
                    raise
                console.print(f"site {escape(site.name)}: the server does not let this site in yet; it stopped "
                              "without leaving, so the server may still count it as connected (up to ~60 s); "
                              "retrying in 10 s")
                time.sleep(10)
    finally:  # left cleanly, or never got in; only a crash (nothing runs) keeps the marker
        marker.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    keygen = argv[:1] == ["keygen"]
    args = build_keygen_parser().parse_args(argv[1:]) if keygen else build_parser().parse_args(argv)
    args.overrides = [*args.legacy_overrides, *args.overrides]
    return run_cli(PROG, lambda: (cmd_keygen if keygen else cmd_join)(args))


if __name__ == "__main__":
    sys.exit(main())
