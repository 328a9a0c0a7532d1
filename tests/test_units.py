"""The shipped service units and the site container start as written.

Each unit's `ExecStart` runs with the environment systemd gives it (its `Environment=` lines on
systemd's own PATH, which holds no venv), the container's `ENTRYPOINT` with its `ENV`; only the
install locations are swapped for this test's (the venv → this interpreter's, /var/lib and /etc →
temporary folders) and the ports for free ones. PYTHONPATH passes through where the test runner
sets it, so that the venv's console scripts import the checkout under test, as an install from
it would. Docker is not run here: the container's command line and environment are.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_site
from deployment_kit import ROOT, Processes, site_yaml, wait_for

from petite_fl.deploy.ports import free_port
from petite_fl.deploy.proxy import INSTALL_HINT, find_nginx
from petite_fl.errors import PetiteError

#: The PATH systemd gives a system service (systemd.exec(5)); no venv is on it.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The PATH a Debian-based image (python:3.11-slim, nvidia/cuda) starts with, before the Dockerfile's ENV.
IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT_VENV = "/opt/petite-fl/.venv"
IMAGE_VENV = "/opt/venv"


def read_unit(path: Path) -> tuple[list[str], dict[str, str]]:
    """The `[Service]` section's ExecStart (argv) and Environment= assignments, as systemd reads
    these simple forms: one ExecStart, no prefixes (`-`, `@`, `+`), shell-like quoting."""
    section, argv, env = "", None, {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section != "[Service]":
            continue
        if key == "ExecStart":
            assert argv is None and value[:1] not in "-@+!:", f"{path}: one plain ExecStart expected"
            argv = shlex.split(value)
        elif key == "Environment":
            env.update(assignment.split("=", 1) for assignment in shlex.split(value))
    assert argv, f"{path} has no ExecStart"
    return argv, env


def read_dockerfile(path: Path) -> tuple[list[str], dict[str, str], str]:
    """The image's ENTRYPOINT (JSON form), its ENV (`${PATH}` expanded from the base image's) and
    the folder of the venv its RUN creates (`python3 -m venv DIR`)."""
    text = re.sub(r"\\\n", " ", path.read_text())  # continuation lines
    entry, env, venv = None, {"PATH": IMAGE_PATH}, None
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENTRYPOINT":
            entry = json.loads(rest)
        elif word == "ENV":
            for assignment in shlex.split(rest):
                key, _, value = assignment.partition("=")
                env[key] = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), value)
        elif word == "RUN" and (found := re.search(r"-m venv (\S+)", rest)):
            venv = found.group(1)
    assert entry and venv, f"{path}: no ENTRYPOINT or no venv"
    return entry, env, venv


def swap(value: str, places: dict[str, str]) -> str:
    for old, new in places.items():
        value = value.replace(old, new)
    return value


def unit_command(path: Path, places: dict[str, str], ports: dict[str, int] | None = None,
                 home: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """A unit's ExecStart and the exact environment systemd gives it, with `places` swapped in
    and each `--flag` of `ports` given its free port."""
    argv, env = read_unit(path)
    argv = [swap(a, places) for a in argv]
    for flag, port in (ports or {}).items():
        argv[argv.index(flag) + 1] = str(port)
    env = {"PATH": SYSTEMD_PATH, **{k: swap(v, places) for k, v in env.items()}}
    if home is not None:  # User= gives HOME (the service user's home folder)
        env["HOME"] = str(home)
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return argv, env


def test_units_need_no_path_of_their_own():
    """The units name the venv's console scripts and leave PATH to systemd: nothing else in them
    makes Flower's executables findable, so the start test below proves petite-fl finds them."""
    for unit in (ROOT / "server" / "petite-server.service", ROOT / "client" / "petite-client.service"):
        argv, env = read_unit(unit)
        assert argv[0].startswith(UNIT_VENV + "/bin/") and "PATH" not in env, unit
        assert "KillMode=mixed" in unit.read_text() and "Restart=on-failure" in unit.read_text(), unit


def test_the_containers_entrypoint_resolves_and_runs():
    """The site image's ENTRYPOINT, found on the image's PATH with its venv at this interpreter's
    prefix (a fresh venv's layout: bin/petite-client), runs its CMD with exactly the image's ENV."""
    entry, env, venv = read_dockerfile(ROOT / "client" / "Dockerfile")
    places = {venv: sys.prefix}
    env = {k: swap(v, places) for k, v in env.items()}
    assert env["PATH"].split(os.pathsep)[0] == f"{sys.prefix}/bin"
    program = shutil.which(swap(entry[0], places), path=env["PATH"])
    assert program == str(Path(sys.prefix) / "bin" / "petite-client"), (entry, program)
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    text = (ROOT / "client" / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))
    out = subprocess.run([program, *cmd], env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0 and "usage: petite-client" in out.stdout, out.stdout + out.stderr


def test_flowers_helpers_started_by_name_are_found_on_systemds_path(tmp_path):
    """What Flower's SuperLink does (start `flower-superexec` by name) works under systemd's PATH:
    petite-server's and petite-client's processes have this installation's scripts folder first."""
    from petite_fl.deploy.processes import BIN
    from petite_fl.deploy.run import run_foreground

    found = tmp_path / "found"
    run_foreground(["/bin/sh", "-c", f"command -v flower-superexec > {found}"], env={"PATH": SYSTEMD_PATH})
    assert found.read_text().strip() == str(BIN / "flower-superexec")


def test_a_python_without_flower_is_named_in_one_line(tmp_path, monkeypatch):
    from petite_fl.deploy import processes
    from petite_fl.errors import ConfigError

    monkeypatch.setattr(processes, "BIN", tmp_path)
    with pytest.raises(ConfigError, match=f"flower-superlink not found in {tmp_path} ") as refused:
        processes.superlink_command(tls=None, auth=False, host="127.0.0.1", port=1, database=tmp_path / "db")
    assert "\n" not in str(refused.value)


def _nginx_installed() -> bool:
    try:
        return bool(find_nginx())
    except PetiteError:
        return False


def _online(procs: Processes, flwr: str) -> int:
    out = procs.run([flwr, "supernode", "list", "petite", "--format", "json"], 60)
    nodes = json.loads(out.stdout).get("nodes", []) if out.returncode == 0 else []
    return sum(node.get("status") == "online" for node in nodes)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _nginx_installed() and not os.environ.get("CI"), reason=f"nginx: {INSTALL_HINT}")
def test_the_units_start_the_coordinator_and_a_site_joins(tmp_path):
    """petite-server.service's ExecStart, run with its unit environment, serves (the public port
    answers, `flwr supernode list` works); a site started by petite-client.service's ExecStart,
    and one started the site image's way, both with a registered key, come online at its SuperLink."""
    bin_ = Path(sys.prefix) / "bin"
    server_home, port = tmp_path / "server", free_port()
    argv, env = unit_command(ROOT / "server" / "petite-server.service",
                             {UNIT_VENV: sys.prefix, "/var/lib/petite-fl": str(server_home)},
                             {"--port": port, "--control-port": free_port()}, home=server_home)
    server = Processes(tmp_path, env)
    sites = Processes(tmp_path, {})
    try:
        certs = server.run([str(bin_ / "petite-server"), "certs"], 120)  # into $PETITE_FL_HOME/tls, as installed
        assert certs.returncode == 0, certs.stdout + certs.stderr
        keys = server.run([str(bin_ / "petite-client"), "keygen", "--site", "scanner4", "--out",
                           str(tmp_path / "keys")], 120)
        keys5 = server.run([str(bin_ / "petite-client"), "keygen", "--site", "scanner5", "--out",
                            str(tmp_path / "keys")], 120)
        assert keys.returncode == keys5.returncode == 0, keys.stderr + keys5.stderr
        coordinator = server.start("server", argv)
        flwr = str(bin_ / "flwr")

        def serving() -> bool:
            assert coordinator.poll() is None, server.log("server")[-3000:]
            return _answers(port) and server.run([flwr, "supernode", "list", "petite"], 60).returncode == 0

        wait_for(serving, 180, "the coordinator to serve", server.log("server")[-3000:])
        for site in ("scanner4", "scanner5"):
            reg = server.run([str(bin_ / "petite-server"), "register", "--site", site,
                              "--key", str(tmp_path / "keys" / f"{site}.key.pub")], 120)
            assert reg.returncode == 0, reg.stdout + reg.stderr

        ca = server_home / "tls" / "ca.crt"
        yaml4 = site_yaml(tmp_path, "scanner4", port, tmp_path / "keys" / "scanner4.key", ca, free_port(),
                          manifest=write_site(tmp_path / "data4"))
        site_argv, site_env = unit_command(ROOT / "client" / "petite-client.service",
                                           {UNIT_VENV: sys.prefix, "/var/lib/petite-fl": str(tmp_path / "site4"),
                                            "/etc/petite-fl/site.yaml": str(yaml4)}, home=tmp_path / "site4")
        sites.start("scanner4", site_argv, **site_env)

        entry, image_env, venv = read_dockerfile(ROOT / "client" / "Dockerfile")
        places = {venv: sys.prefix, "/var/lib/petite-fl": str(tmp_path / "site5")}
        image_env = {k: swap(v, places) for k, v in image_env.items()}
        image_env.update(HOME=str(tmp_path / "site5"), **({"PYTHONPATH": os.environ["PYTHONPATH"]}
                                                         if os.environ.get("PYTHONPATH") else {}))
        yaml5 = site_yaml(tmp_path, "scanner5", port, tmp_path / "keys" / "scanner5.key", ca, free_port(),
                          manifest=write_site(tmp_path / "data5"))
        sites.start("scanner5", [swap(entry[0], places), "--site", str(yaml5)], **image_env)  # client/README's run

        def joined() -> bool:
            time.sleep(2)
            return _online(server, flwr) == 2

        wait_for(joined, 240, "both sites online", sites.log("scanner4")[-2000:] + sites.log("scanner5")[-2000:])
    finally:
        sites.stop()
        server.stop()
