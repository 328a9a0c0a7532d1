"""`petite-client`: one scanner site.

    petite-client --site scanner1            # check the site, then join as a SuperNode
    petite-client keygen --site scanner1     # the site's key pair (register the .pub)
    petite-client approve --app DIR          # the app hash to list in approved_apps

A site is `petite_fl/configs/site/<name>.yaml` or a YAML file with: name, manifest, device, cache,
server, ca_cert, private_key, port (and optionally approved_apps). The site runs only petite-fl's
own Flower app as installed here and the apps whose hash approved_apps lists. Hydra overrides
(key=value) follow the options, as for every petite command:
`petite-client --site scanner1 paths.cache=/data/petite`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.markup import escape

from petite_fl.console import console, err_console, run_cli

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
                                     epilog=f"{PROG} keygen --help: the site's key pair; "
                                            f"{PROG} approve --help: an app's hash")
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
    from petite_fl.errors import ConfigError
    from petite_fl.federation.fields import bad_name

    why = bad_name(args.site)  # as `petite-server register --site`: it names the key files and their folder
    if why:
        raise ConfigError(f"--site: {why}")
    out = args.out or expand_path(compose(overrides=args.overrides).paths.cache) / "sites" / args.site / "keys"
    private, public = make_site_keys(out, args.site, overwrite=args.overwrite)
    console.print(f"private key (stays at the site): {escape(str(private))}")
    console.print(f"public key (send to the coordinator to register): {escape(str(public))}")
    return 0


def build_approve_parser() -> argparse.ArgumentParser:
    """`petite-client approve`: the hash a site lists in approved_apps to run an app."""
    p = argparse.ArgumentParser(prog=f"{PROG} approve",
                                description="print the app hash of a Flower app folder, as the site computes it from "
                                            "the bundle `flwr run` sends; list it in approved_apps of the site config "
                                            "to let the site run that app")
    p.add_argument("--app", type=Path, help="the reviewed app folder (default: petite-fl's own app, installed here)")
    return p


def cmd_approve(args) -> int:
    from petite_fl.deploy.site_exec import app_folder_hash

    digest = app_folder_hash(args.app)
    print(digest)  # alone on stdout, for scripts
    if args.app is None:
        err_console.print("the app hash of petite-fl's own app as installed here: every site runs it", soft_wrap=True)
    else:
        err_console.print(f"the app hash of {escape(str(args.app))}; a site runs this app once its site config "
                          "lists it: approved_apps: " + escape(f"[{digest}]"), soft_wrap=True)
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
    from petite_fl.deploy.processes import (
        flower_env,
        site_superexec_command,
        stop_process_tree,
        supernode_command,
        write_secret,
        write_toml,
    )
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
    from petite_fl.deploy.site_exec import app_folder_hash

    approved = tuple(dict.fromkeys([app_folder_hash(), *site.approved_apps]))
    console.print(f"site {escape(site.name)}: runs only approved apps: petite-fl's own ({approved[0][:12]}…)"
                  + (f" and {len(approved) - 1} from approved_apps" if len(approved) > 1 else ""))
    # The site's own data folder (its synthetic scanner, when it has no manifest): never the coordinator's.
    data_root = expand_path(compose(overrides=args.overrides).data.root)
    node_config = write_toml(site.cache / site.name / "node-config.toml",
                             {**site.node_config(), "data-root": str(data_root)})
    secret = write_secret(site.cache / site.name / "superexec.secret")  # new at every start
    cmd = supernode_command(superlink=site.server, ca_cert=site.ca_cert, private_key=site.private_key,
                            node_config=node_config, port=site.port, superexec_secret=secret, site=site.name,
                            approved=approved, limits=site.bundle_limits)
    home = site.cache / site.name  # the site's processes run in its own folder, not in the caller's
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
    superexec = None
    try:
        # Apps are installed under the site's own folder, where only approved bundles are ever written.
        superexec = subprocess.Popen(
            site_superexec_command(site=site.name, port=site.port, approved=approved, superexec_secret=secret,
                                   parent_pid=os.getpid(), limits=site.bundle_limits),
            env=flower_env({**os.environ, "FLWR_HOME": str(home / "flwr")}), start_new_session=True, cwd=home)
        while True:
            try:
                run_foreground(cmd, explain=lambda tail: _explain(tail, site.name), cwd=home)
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
        if superexec is not None:
            stop_process_tree(superexec)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["approve"]:
        args = build_approve_parser().parse_args(argv[1:])
        return run_cli(PROG, lambda: cmd_approve(args))
    keygen = argv[:1] == ["keygen"]
    args = build_keygen_parser().parse_args(argv[1:]) if keygen else build_parser().parse_args(argv)
    args.overrides = [*args.legacy_overrides, *args.overrides]
    return run_cli(PROG, lambda: (cmd_keygen if keygen else cmd_join)(args))


if __name__ == "__main__":
    sys.exit(main())
