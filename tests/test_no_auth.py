"""`petite-server --no-auth` (TLS, no site keys): anyone who reaches the port and holds ca.crt joins as
any site not yet claimed, so it serves a loopback address only unless --no-auth-public says otherwise.
Refusals come before anything is written or started."""

from __future__ import annotations

import socket

import pytest

from petite_fl.cli.server import main as server
from petite_fl.deploy import proxy
from petite_fl.deploy.certs import make_server_credentials
from petite_fl.deploy.ports import free_port

NGINX_REFUSAL = "petite-server: error: the public port needs nginx"


@pytest.fixture
def coordinator(tmp_path, monkeypatch):
    monkeypatch.setenv("PETITE_FL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nginx: a start that gets past the check stops there
    monkeypatch.setattr(proxy, "NGINX_PATHS", ())
    make_server_credentials(tmp_path / "tls")
    return tmp_path


@pytest.mark.parametrize("host", [None, "0.0.0.0", "10.0.0.5", "fl.hospital.org"])
def test_no_auth_refuses_a_public_address_in_one_line(coordinator, capsys, host):
    args = ["--tls", str(coordinator / "tls"), "--no-auth", "--port", "29992"] + (["--host", host] if host else [])
    assert server(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"petite-server: error: --no-auth on --host {host or '0.0.0.0'}: without site keys anyone who "
                   "reaches this address and holds ca.crt can join as any site not yet claimed; register site keys "
                   "instead, use --host 127.0.0.1, or add --no-auth-public to accept that")
    assert not (coordinator / "home" / "server").exists() and not (coordinator / "flwr").exists()


@pytest.mark.parametrize("args", [["--no-auth", "--host", "127.0.0.1"], ["--no-auth", "--local-only"],
                                  ["--no-auth", "--no-auth-public", "--host", "0.0.0.0"], ["--host", "0.0.0.0"]])
def test_loopback_or_an_explicit_public_no_auth_goes_on(coordinator, capsys, args):
    """Past the --no-auth check: to the proxy's nginx (absent here), or, --local-only, to the port
    check (a port this test holds), so that nothing starts."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        port = held.getsockname()[1]
        code = server(["--tls", str(coordinator / "tls"), "--port", str(port), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--no-auth" not in err, err
    assert err.startswith(NGINX_REFUSAL) or f"cannot listen on 127.0.0.1:{port}" in err, err


def test_no_auth_public_alone_is_refused(coordinator, capsys):
    assert server(["--tls", str(coordinator / "tls"), "--no-auth-public"]) == 2
    assert capsys.readouterr().err.strip() == ("petite-server: error: --no-auth-public goes with --no-auth only "
                                               "(it lets --no-auth serve a non-loopback --host)")
