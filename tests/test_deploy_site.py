"""A site's preflight: every refusal is one line naming the site and what is wrong."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from pathlib import Path

import pytest

from petite_fl.cli.client import main as client
from petite_fl.deploy.certs import make_server_credentials, make_site_keys
from petite_fl.deploy.site import available_sites, site_deployment


@pytest.fixture
def listening(tmp_path):
    """A TLS server with the coordinator's credentials (the 'server' for the preflight's TLS handshake)."""
    creds = make_server_credentials(tmp_path / "tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(creds.server_cert, creds.server_key)
    stop = threading.Event()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        s.settimeout(0.2)

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = s.accept()
                except OSError:
                    continue
                try:
                    with context.wrap_socket(conn, server_side=True):
                        pass
                except (ssl.SSLError, OSError):
                    pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        yield s.getsockname()[1]
        stop.set()
        thread.join(timeout=5)


def write_site(tmp_path: Path, port: int, **changes) -> Path:
    ca = tmp_path / "tls" / "ca.crt"
    if not ca.is_file():
        make_server_credentials(tmp_path / "tls")
    key = tmp_path / "keys" / "hospital.key"
    if not key.is_file():
        make_site_keys(tmp_path / "keys", "hospital")
    fields = {"name": "hospital", "manifest": str(tmp_path / "data" / "manifest.json"), "device": "cpu",
              "cache": str(tmp_path / "sites"), "server": f"127.0.0.1:{port}", "ca_cert": str(ca),
              "private_key": str(key), "port": 9199, **changes}
    path = tmp_path / "hospital.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v) if v is not None else 'null'}" for k, v in fields.items()))
    return path


def test_a_wrong_ca_or_insecure_on_one_side_is_named_before_joining(tmp_path, listening, small_site, capsys):
    other = make_server_credentials(tmp_path / "other-ca")
    yaml = write_site(tmp_path, listening, manifest=str(small_site), ca_cert=str(other.ca_cert))
    assert client(["--site", str(yaml), "--check"]) == 2
    assert "is not accepted with" in capsys.readouterr().err
    yaml = write_site(tmp_path, listening, manifest=str(small_site))
    assert client(["--site", str(yaml), "--check", "--insecure"]) == 2
    assert "uses TLS; drop --insecure" in capsys.readouterr().err


def test_the_five_example_sites_are_shipped():
    assert available_sites() == [f"scanner{i}" for i in range(1, 6)]
    site = site_deployment("scanner3")
    assert site.name == "scanner3" and site.manifest is None and site.node_config()["site"] == "scanner3"


def test_a_valid_site_passes_its_checks(tmp_path, listening, small_site, capsys):
    yaml = write_site(tmp_path, listening, manifest=str(small_site))
    assert client(["--site", str(yaml), "--check"]) == 0
    assert "ready to join" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    ({"name": None}, "unknown site"),
    ({"ca_cert": "/nonexistent/ca.crt"}, "CA certificate /nonexistent/ca.crt not found"),
    ({"private_key": "/nonexistent/site.key"}, "petite-client keygen"),
    ({"device": "cuda"}, "CUDA"),
    ({"server": "127.0.0.1:1"}, "cannot reach the server at 127.0.0.1:1"),
    ({"server": "nohostport"}, "must be host:port"),
    ({"policy": {"min_samples_per_update": 0}}, "site hospital: policy.min_samples_per_update must be a whole number"),
    ({"policy": {"eval_splits": ["train"]}}, "site hospital: policy.eval_splits: 'train' is never allowed"),
])
def test_each_bad_setting_is_refused_in_one_line(tmp_path, listening, small_site, capsys, change, message):
    if change.get("device") == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is present here")
    if change == {"name": None}:
        argv = ["--site", "no-such-site", "--check"]
    else:
        argv = ["--site", str(write_site(tmp_path, listening, manifest=str(small_site), **change)), "--check"]
    assert client(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_site_with_bad_data_does_not_join_and_names_the_file(tmp_path, listening, small_site, capsys):
    (small_site.parent / "sub-002_target.nii.gz").write_bytes(b"not a nifti")
    assert client(["--site", str(write_site(tmp_path, listening, manifest=str(small_site))), "--check"]) == 2
    err = capsys.readouterr().err
    assert "not joining" in err and "sub-002_target.nii.gz" in err


def test_the_deployment_kit_has_a_site_config_per_scanner_and_a_buildable_recipe():
    from petite_fl.deploy.site import load_site_config

    root = Path(__file__).resolve().parent.parent
    for i in range(1, 6):
        data = load_site_config(str(root / "client" / "sites" / f"scanner{i}.yaml"))
        assert data["name"] == f"scanner{i}" and data["private_key"].endswith(f"scanner{i}.key")
    recipe = (root / "client" / "Dockerfile").read_text()
    assert "ARG BASE=" in recipe and "FROM ${BASE}" in recipe and 'ENTRYPOINT ["/opt/venv/bin/petite-client"]' in recipe
    copied = [src for line in recipe.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]]
    assert copied and all((root / src).exists() for src in copied), copied
