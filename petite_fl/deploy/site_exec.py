"""A site's own SuperExec and ClientApp runner: only apps the site approved run at the site.

`petite-client` starts its SuperNode with `--isolation process`, so the SuperNode launches
nothing itself, and starts `superexec` below beside it: Flower's SuperExec loop, authenticated
to the SuperNode's Runtime API with a secret only petite-client holds, with an executor that
takes ClientApp tasks only and runs each in `clientapp`: Flower's own `flwr-clientapp` code
with two steps changed. Before Flower installs the app bundle it pulled for the task, the
bundle's app hash must be one the site approved (`petite_fl.deploy.approval`), and the ClientApp
is then loaded from the folder those bytes were installed in (one per full bundle hash). A refused bundle is never
installed, so none of its code is imported; Flower's error path sends the coordinator an error
reply carrying the site's one-line refusal.

Why hand-written: Flower 1.42 checks an app only by Ed25519 signatures that a SuperLink attaches
under a Flower Hub licence (`--trusted-entities`); a bundle from `flwr run` carries none, and
neither the SuperNode nor the SuperExec has a hook for a check of one's own. The seams used
are module attributes of Flower's (`run_superexec.get_executor`; `run_clientapp.install_from_fab` and
`get_load_client_app_fn`); `replace_seam` refuses to start if one is missing, so a Flower upgrade that
moves them fails closed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

from petite_fl.deploy.approval import AppNotApproved, app_hash, check_app
from petite_fl.deploy.bundle import BundleLimits
from petite_fl.errors import ConfigError

SUPEREXEC, CLIENTAPP = "superexec", "clientapp"
MODULE = "petite_fl.deploy.site_exec"  # not __name__: that is "__main__" when run with -m


def app_folder_hash(folder: Path | None = None) -> str:
    """The app hash of an app folder (default: petite-fl's own app as installed here), from the
    bundle `flwr run` would build of it (Flower's own builder: same files, same order)."""
    from flwr.cli.build import build_fab_from_disk

    from petite_fl.runconfig import app_dir

    folder = app_dir() if folder is None else Path(folder).expanduser()
    if not (folder / "pyproject.toml").is_file():
        raise ConfigError(f"{folder} is not a Flower app folder: it has no pyproject.toml")
    try:
        return app_hash(build_fab_from_disk(folder))
    except ValueError as exc:  # Flower's builder: an invalid pyproject, a path too deep, a bundle too large
        raise ConfigError(f"cannot bundle the app in {folder}: {str(exc).splitlines()[0]}") from None


def replace_seam(module: ModuleType, name: str, value: object) -> None:
    if not callable(getattr(module, name, None)):
        raise RuntimeError(f"{module.__name__}.{name} is gone (a newer Flower?): petite-fl cannot check apps, "
                           "so this site runs none")
    setattr(module, name, value)


def clientapp_command(spec: ExecutionSpec, site: str, approved: Sequence[str],
                      limits: BundleLimits | None = None) -> list[str]:
    """This module's `clientapp` for one task, with the arguments Flower gives `flwr-clientapp` but
    the task's token, which goes on its stdin (a command line is readable by every user with `ps`).
    `-P`: the working directory is not put on sys.path (a planted `flwr.py` is never imported)."""
    cmd = [sys.executable, "-P", "-m", MODULE, CLIENTAPP, "--site", site,
           *[a for h in approved for a in ("--approve", h)], "--bundle-limits", (limits or BundleLimits()).to_json(),
           "--token-stdin", "--runtime-api-address", spec.runtime_api_address]
    if spec.insecure:
        cmd.append("--insecure")
    elif spec.root_certificates_path is not None:
        cmd += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        cmd += ["--parent-pid", str(spec.parent_pid)]
    return cmd


class ApprovedAppExecutor(SubprocessExecutor):
    """Flower's subprocess executor, for ClientApp tasks only, each run behind the approval check.

    The SuperNode may also create AgentApp tasks (when a run's bundle declares one); this
    executor never asks for them, so no such task of a coordinator's is ever started here.
    """

    def __init__(self, site: str, approved: Sequence[str], limits: BundleLimits | None = None) -> None:
        self.site, self.approved, self.limits = site, tuple(approved), limits or BundleLimits()

    def get_eligible_capacity(self, supported_task_types: set[TaskType], **_: object) -> tuple[set[TaskType], set[str]]:
        return set(supported_task_types) & {TaskType.CLIENT_APP}, set()

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"site {self.site} runs ClientApp tasks only, not {spec.task_type}")
        proc = subprocess.Popen(clientapp_command(spec, self.site, self.approved, self.limits), stdin=subprocess.PIPE)
        with contextlib.suppress(BrokenPipeError):  # a process that died at once says why in the site's log
            proc.stdin.write(f"{spec.token}\n".encode("ascii"))
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        return LaunchResult.accepted()


def _site_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="the site's name (for its log lines)")
    parser.add_argument("--approve", action="append", required=True, metavar="HASH",
                        help="an approved app hash (repeat for each)")
    parser.add_argument("--bundle-limits", default=BundleLimits().to_json(), help="the site's bundle bounds (JSON)")


def superexec(argv: Sequence[str]) -> None:
    """Flower's SuperExec loop (`run_superexec`) with `ApprovedAppExecutor` as its executor."""
    from flwr.supercore.auth import load_superexec_auth_secret
    from flwr.supercore.superexec import run_superexec as flower

    parser = argparse.ArgumentParser(prog=f"python -m {MODULE} {SUPEREXEC}", allow_abbrev=False)
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (host:port)")
    parser.add_argument("--superexec-auth-secret-file", required=True, help="the secret the SuperNode was given")
    parser.add_argument("--parent-pid", type=int, help="exit when this process does")
    _site_args(parser)
    args = parser.parse_args(argv)
    executor = ApprovedAppExecutor(args.site, args.approve, BundleLimits.from_json(args.bundle_limits))
    replace_seam(flower, "get_executor", lambda *_, **__: executor)
    flower.run_superexec(runtime_api_address=args.runtime_api_address, insecure=True,  # 127.0.0.1, as Flower's own
                         superexec_auth_secret=load_superexec_auth_secret(args.superexec_auth_secret_file),
                         parent_pid=args.parent_pid, runtime_dependency_install=False)


class _QuietRefusal(logging.Filter):
    """Drops what Flower adds to a refusal (its traceback, then its multi-line exit notice for a
    failed task): the site's log keeps the refusal's one line."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = False

    def filter(self, record: logging.LogRecord) -> bool:
        from flwr.supercore.exit import ExitCode

        if record.exc_info and isinstance(record.exc_info[1], AppNotApproved):
            self.refused = True
            return False
        return not (self.refused and str(record.msg).startswith(f"Exit Code: {ExitCode.TASK_PROC_EXCEPTION}\n"))


class ApprovedApp:
    """The two steps of Flower's `run_clientapp` that touch the bundle, behind the approval check.

    `install` checks the very bytes Flower then installs, into a folder named by their full
    sha256: Flower's own folder is named by 8 hex digits of it and reused without copying, so a
    coordinator grinding 32 bits could have an approved bundle run a revoked app's files that
    an earlier run left under that name. `loader` points Flower's ClientApp
    loader at the folder those bytes were installed in, rather than at a folder named by the
    run's fab_id, version and hash, which the coordinator sends; Flower's own check then
    requires the run's fab_id and version to be the installed app's.
    """

    def __init__(self, site: str, approved: Sequence[str], install: Callable[..., Path],
                 get_loader: Callable[..., Callable[[str, str, str], Any]], limits: BundleLimits | None = None) -> None:
        self.site, self.approved, self.limits = site, tuple(approved), limits or BundleLimits()
        self._install, self._get_loader = install, get_loader
        self.installed: Path | None = None

    def install(self, fab_file: bytes | Path, *_: Any, **__: Any) -> Path:
        from flwr.supercore import log
        from flwr.supercore.utils import get_flwr_home

        try:
            if not isinstance(fab_file, bytes):
                raise AppNotApproved(f"site {self.site}: refused an app given as {type(fab_file).__name__}, not as "
                                     "the bundle's bytes; nothing of it was installed or run")
            check_app(fab_file, self.approved, self.site, self.limits)
        except AppNotApproved as exc:
            log(logging.ERROR, "%s", exc)
            raise
        folder = get_flwr_home() / "approved-apps" / hashlib.sha256(fab_file).hexdigest()
        self.installed = self._install(fab_file, folder, skip_prompt=True)
        return self.installed

    def loader(self, *_: Any, **__: Any) -> Callable[[str, str, str], Any]:
        if self.installed is None:
            raise RuntimeError(f"site {self.site}: no approved app was installed for this task")
        return self._get_loader(default_app_ref="", app_path=str(self.installed), multi_app=True)


def clientapp(argv: Sequence[str]) -> None:
    """Flower's `flwr-clientapp` for one task, whose bundle is installed and run only if approved."""
    from flwr.supercore.logger import FLOWER_LOGGER
    from flwr.supernode.cli import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp as flower

    parser = argparse.ArgumentParser(prog=f"python -m {MODULE} {CLIENTAPP}", allow_abbrev=False, add_help=False)
    _site_args(parser)
    parser.add_argument("--token-stdin", action="store_true", help="read the task's token from stdin")
    ours, rest = parser.parse_known_args(argv)
    if ours.token_stdin:  # Flower's own bounded reader; the token reaches Flower's parser, not the command line
        from flwr.common.args import try_obtain_flwr_app_token

        rest = ["--token", try_obtain_flwr_app_token(argparse.Namespace(token_stdin=True)), *rest]
    app = ApprovedApp(ours.site, ours.approve, flower.install_from_fab, flower.get_load_client_app_fn,
                      BundleLimits.from_json(ours.bundle_limits))
    replace_seam(flower, "install_from_fab", app.install)
    replace_seam(flower, "get_load_client_app_fn", app.loader)
    FLOWER_LOGGER.addFilter(_QuietRefusal())
    sys.argv = ["flwr-clientapp", *rest]  # Flower's parser reads sys.argv
    flwr_clientapp()


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {SUPEREXEC: superexec, CLIENTAPP: clientapp}
    if not argv or argv[0] not in commands:
        sys.exit(f"usage: python -m {MODULE} {{{SUPEREXEC},{CLIENTAPP}}} ...")
    commands[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
