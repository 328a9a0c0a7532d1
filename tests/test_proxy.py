"""petite-server's refusals about its public port, before any process starts (the proxy itself, with
real nginx and Flower processes, is tested in test_deployment.py)."""

from __future__ import annotations

import pytest

from petite_fl.cli.server import main as server
from petite_fl.deploy import proxy
from petite_fl.deploy.certs import make_server_credentials
from petite_fl.errors import PetiteError


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


@pytest.mark.parametrize(("flags", "refusal"), [
    (["--rate-limit", "0/s"], "--rate-limit '0/s': the requests per second one client address may make, as R/s "
                              "with R a whole number ≥ 1 (default 20/s)"),
    (["--rate-limit", "5/m"], "--rate-limit '5/m': the requests per second"),
    (["--burst", "-1"], "--burst '-1': the requests above that rate served at once, a whole number ≥ 0 (default 600)"),
    (["--max-connections", "many"], "--max-connections 'many': the requests one client address may have in flight, "
                                    "a whole number ≥ 1 (default 32)"),
    (["--local-only", "--burst", "5"], "--rate-limit, --burst and --max-connections are the public proxy's limits; "
                                       "--local-only has no proxy"),
])
def test_a_bad_limit_is_refused_in_one_line(coordinator, capsys, flags, refusal):
    """The public port's per-address limits: a figure that is not a whole number in range, or limits without
    the proxy, refused in one line before anything starts."""
    assert server(["--tls", str(coordinator / "tls"), "--port", "29992", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith(f"petite-server: error: {refusal}"), err
    assert not (coordinator / "flwr" / "config.toml").exists()


def test_the_limits_reach_nginx_as_given(tmp_path):
    """The flags become nginx's per-address zones (keyed on $binary_remote_addr), and nginx accepts them."""
    if not _has_nginx():
        pytest.skip(f"nginx is not installed: {proxy.INSTALL_HINT}")
    from petite_fl.cli.server import build_parser

    args = build_parser().parse_args(["--rate-limit", "7/s", "--burst", "40", "--max-connections", "3"])
    limits = proxy.Limits.parse(args.rate_limit, args.burst, args.max_connections)
    plan = proxy.ProxyPlan("127.0.0.1", 29993, 29994, None, None, None, limits)
    proxy.write_proxy(plan, tmp_path)  # `nginx -t` passes
    conf = (tmp_path / "nginx.conf").read_text()
    assert "limit_req_zone $binary_remote_addr zone=per_address:10m rate=7r/s;" in conf
    assert "limit_req zone=per_address burst=40 nodelay;" in conf and "limit_conn in_flight 3;" in conf


def _has_nginx() -> bool:
    try:
        return bool(proxy.find_nginx())
    except PetiteError:
        return False
