"""petite-server's refusals about its public port, before any process starts (the proxy itself, with
real nginx and Flower processes, is tested in test_deployment.py)."""

from __future__ import annotations

import pytest

from petite_fl.cli.server import main as server
from petite_fl.deploy import proxy
from petite_fl.deploy.certs import make_server_credentials


@pytest.fixture
def coordinator(tmp_path, monkeypatch):
    monkeypatch.setenv("PETITE_FL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    make_server_credentials(tmp_path / "tls")
    return tmp_path


def test_without_nginx_the_public_port_is_refused_in_one_line(coordinator, monkeypatch, capsys):
    """No nginx on this machine: petite-server does not expose the SuperLink itself; it says in one line
    how to install nginx or to serve this machine only, and writes no `flwr` connection."""
    monkeypatch.setenv("PATH", str(coordinator / "empty"))
    monkeypatch.setattr(proxy, "NGINX_PATHS", ())
    assert server(["--tls", str(coordinator / "tls"), "--port", "29992"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert err.startswith("petite-server: error: the public port needs nginx") and "apt-get install nginx-light" in err
    assert "--local-only" in err
    assert not (coordinator / "flwr" / "config.toml").exists()


def test_local_only_refuses_a_public_address(coordinator, capsys):
    """--local-only serves 127.0.0.1 only: asking it for another address is refused in one line."""
    assert server(["--tls", str(coordinator / "tls"), "--local-only", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("petite-server: error: --local-only serves this machine only, not --host 0.0.0.0: drop "
                   "--local-only to serve sites elsewhere (through the proxy), or use --host 127.0.0.1")
