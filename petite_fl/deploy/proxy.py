"""The coordinator's public port: nginx in front of the SuperLink, forwarding only the Fleet API.

In flwr 1.42 one SuperLink port serves the Fleet API (what a SuperNode calls), the Control
API (submit and stop runs, read logs, register site keys) and the Runtime API (the ServerApp's
side), and the open-source build authenticates no Control caller. So petite-server binds the
SuperLink to 127.0.0.1, where the coordinator's operators reach it (on the host, or through
SSH), and nginx — a maintained reverse proxy, configured here and not written here — listens
on the public address with the coordinator's TLS certificate and forwards exactly the Fleet
routes that Flower declares, as POST, under their canonical paths. Any other request is
answered 403 by nginx and never reaches Flower. SuperNode authentication is untouched: it
is a signature in request headers (`flwr-public-key`, `flwr-signature`, `flwr-timestamp`)
that nginx passes through and the SuperLink verifies.

nginx also bounds what one client address may ask of the SuperLink (`Limits`): a request rate with a
burst, and requests in flight. A refusal is a 503, which Flower's SuperNode retries with backoff
(flwr 1.42 retries 502/503/504 and gives up on any other status, 429 included), so a site that ever
met a limit would slow down, not fail; the defaults are far above what a site asks (see `Limits`).
"""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from petite_fl.atomic import atomic_path
from petite_fl.errors import ConfigError, PetiteError

#: Where Debian's nginx packages put the binary (not on a non-root user's PATH).
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
INSTALL_HINT = "apt-get install nginx-light (Debian/Ubuntu; any nginx ≥ 1.19.5 works)"
#: A request body bound: Flower sends arrays in 5 MiB chunks, each object in its own request.
MAX_BODY = "64m"
#: What nginx answers on every path but the Fleet routes; Flower's CLI prints `detail`.
REFUSAL = ("petite-fl: this port serves SuperNodes only (the Fleet API); the Control API "
           "(flwr run, ls, log, stop, supernode register) is served on the coordinator host only")


#: Refused by a limit: Flower's SuperNode retries 503 with exponential backoff, 429 it does not.
LIMITED_STATUS = 503
LIMITED = ("petite-fl: too many requests from this address (the coordinator limits request rate and connections "
           "per client address); retry later")  # no quote in it either
#: One refusal by a limit in this many is written to refused.log (a flood must not fill the disk).
LIMITED_LOG_SAMPLE = "1%"


@dataclass(frozen=True)
class Limits:
    """What nginx allows one client address (`$binary_remote_addr`) on the public port.

    What sites ask (flwr 1.42's SuperNode): a pull every 3 s and a heartbeat every ~24 s when idle,
    and one request per object in a transfer (each tensor, each 5 MiB chunk: a backbone is ~200
    tensors, at most ~430 objects for the shipped models), two at a time. Measured through this
    proxy (nginx's log, tests/test_flood.py's slow test, 3 one-round runs): two sites dialing from
    one address made 4,340 requests in 1,118 s (3.9/s), at most 59 in a second and 431 in 10 s;
    at 20/s they needed a burst of 385. So one site per address stays far below these defaults;
    sites behind one NAT address share them (raise --burst for several).
    """

    rate: int = 20            # requests per second, sustained
    burst: int = 600          # requests above the rate served at once, then refilled at `rate`
    connections: int = 32     # requests in flight at once

    def __post_init__(self) -> None:
        for flag, value, least in (("--rate-limit", self.rate, 1), ("--burst", self.burst, 0),
                                   ("--max-connections", self.connections, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{flag} {value!r}: give a whole number ≥ {least}")

    @staticmethod
    def parse(rate: str | None = None, burst: str | None = None, connections: str | None = None) -> Limits:
        """From petite-server's flags as typed (None: the default); the rate as `R/s` (or `R`)."""
        d = Limits()
        given = {"--rate-limit": (rate, r"(\d+)\s*(?:r?/s)?", f"{d.rate}/s", 1,
                                  "the requests per second one client address may make, as R/s with R"),
                 "--burst": (burst, r"(\d+)", d.burst, 0, "the requests above that rate served at once,"),
                 "--max-connections": (connections, r"(\d+)", d.connections, 1,
                                       "the requests one client address may have in flight,")}
        values = []
        for field, (flag, (text, pattern, default, least, what)) in zip(("rate", "burst", "connections"),
                                                                        given.items(), strict=True):
            match = re.fullmatch(pattern, text.strip()) if text is not None else None
            if text is not None and (match is None or int(match[1]) < least):
                raise ConfigError(f"{flag} {text!r}: {what} a whole number ≥ {least} (default {default})")
            values.append(int(match[1]) if match else getattr(d, field))
        return Limits(*values)


@dataclass(frozen=True)
class ProxyPlan:
    """What the proxy listens on and forwards to; `cert`/`key` None means plain text (--insecure)."""

    host: str
    port: int
    upstream_port: int
    cert: Path | None
    key: Path | None
    upstream_ca: Path | None  # the SuperLink's loopback CA (None: the SuperLink is plain text)
    limits: Limits = Limits()


def find_nginx() -> Path:
    """The nginx binary, or a one-line refusal saying how to install it."""
    found = shutil.which("nginx") or next((p for p in NGINX_PATHS if os.access(p, os.X_OK)), None)
    if found is None:
        raise PetiteError(f"the public port needs nginx (the reverse proxy that keeps Flower's Control API off "
                          f"it) and none is installed: {INSTALL_HINT}; or start with --local-only to serve "
                          "this machine only")
    return Path(found)


def fleet_routes() -> list[str]:
    """The Fleet API's paths as the installed Flower declares them (all POST)."""
    from flwr.superlink.routers.fleet.router import router

    paths = [route.path for route in router.routes]
    if not paths or not all(p.startswith("/v1/fleet/") for p in paths):  # pragma: no cover - a Flower change
        raise ConfigError(f"unexpected Fleet routes in this Flower version: {paths}")
    return paths


def _worker_user() -> str:
    """Started as root, nginx hands its connections to workers of this unprivileged user."""
    try:
        grp.getgrnam("nogroup")
        return "nobody nogroup"
    except KeyError:
        return "nobody"


def _limits(lim: Limits) -> str:
    """The http-level part of the per-address limits, and refused.log (whose limit refusals are sampled)."""
    return f"""    # Per client address: a rate with a burst, and requests in flight (Limits); refused with 503.
    limit_req_zone $binary_remote_addr zone=per_address:10m rate={lim.rate}r/s;
    limit_conn_zone $binary_remote_addr zone=in_flight:10m;
    limit_req_status {LIMITED_STATUS};
    limit_conn_status {LIMITED_STATUS};
    limit_req_log_level info;  # below error_log's level: no error.log line per refused request
    limit_conn_log_level info;
    # refused.log: every refusal, but those of the limits sampled (a flood must not fill the disk).
    split_clients "$msec $connection $connection_requests" $sampled {{
        {LIMITED_LOG_SAMPLE} 1;
        * 0;
    }}
    map "$limit_req_status $limit_conn_status :$sampled:$status" $refused {{
        ~REJECTED.*:1: 1;
        ~REJECTED 0;
        ~:[45][0-9][0-9]$ 1;
        default 0;
    }}
    log_format refused '$time_iso8601 $remote_addr "$request_method $request_uri" $status '
                       'limit=$limit_req_status/$limit_conn_status';"""


def nginx_config(plan: ProxyPlan, folder: Path, routes: list[str]) -> str:
    """nginx.conf for the plan; every path nginx writes is under `folder`."""
    names = "|".join(p.removeprefix("/v1/fleet/") for p in routes)
    tls = plan.cert is not None
    upstream = "https" if plan.upstream_ca is not None else "http"
    refusal = json.dumps({"code": 403, "detail": REFUSAL})  # inside '…' in nginx.conf: no quote in it
    limited = json.dumps({"code": LIMITED_STATUS, "detail": LIMITED})
    temp = "\n".join(f"    {kind}_temp_path {folder / 'tmp' / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    upstream_tls = (f"""
        proxy_ssl_trusted_certificate {plan.upstream_ca};
        proxy_ssl_verify on;
        proxy_ssl_name localhost;
        proxy_ssl_session_reuse on;""" if plan.upstream_ca is not None else "")
    server_tls = (f"""
        ssl_certificate {plan.cert};
        ssl_certificate_key {plan.key};
        ssl_protocols TLSv1.2 TLSv1.3;""" if tls else "")
    host = f"[{plan.host}]" if ":" in plan.host else plan.host
    user = f"user {_worker_user()};\n" if os.geteuid() == 0 else ""
    return f"""# Written by petite-server at every start (petite_fl/deploy/proxy.py); edits are lost.
daemon off;
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
{user}events {{
    worker_connections 1024;
}}
http {{
    server_tokens off;
{temp}
{_limits(plan.limits)}
    access_log {folder / "refused.log"} refused if=$refused;
    upstream superlink {{
        server 127.0.0.1:{plan.upstream_port};
        keepalive 16;
    }}
    server {{
        listen {host}:{plan.port}{" ssl" if tls else ""};{server_tls}
        client_max_body_size {MAX_BODY};
        limit_req zone=per_address burst={plan.limits.burst} nodelay;
        limit_conn in_flight {plan.limits.connections};
        error_page 403 @refusal;
        error_page {LIMITED_STATUS} @limited;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;{upstream_tls}
        # The Fleet API only, POST only, forwarded under its canonical path.
        location ~ ^/v1/fleet/({names})$ {{
            limit_except POST {{ deny all; }}
            proxy_pass {upstream}://superlink/v1/fleet/$1;
        }}
        location = /health {{
            limit_except GET {{ deny all; }}
            proxy_pass {upstream}://superlink/health;
        }}
        # Denied in the access phase, after the limits (a `return` here would come before them).
        location / {{
            error_log {folder / "error.log"} crit;  # refused.log has it: no "access forbidden" line each
            deny all;
        }}
        location @refusal {{
            default_type application/json;
            return 403 '{refusal}';
        }}
        location @limited {{
            default_type application/json;
            return {LIMITED_STATUS} '{limited}';
        }}
    }}
}}
"""


def write_proxy(plan: ProxyPlan, folder: Path) -> list[str]:
    """Write the configuration, check it with `nginx -t`, and return the command that serves it."""
    nginx = find_nginx()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / "tmp" / kind).mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    with atomic_path(conf, mode=0o600) as tmp:
        tmp.write_text(nginx_config(plan, folder, fleet_routes()))
    cmd = [str(nginx), "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf)]
    check = subprocess.run([*cmd, "-t", "-q"], capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        lines = [ln for ln in (check.stderr + check.stdout).splitlines() if "[emerg]" in ln] or [check.stderr]
        raise PetiteError(f"nginx refuses the proxy configuration {conf}: {lines[0].split('] ', 1)[-1].strip()}")
    return cmd


def explain_exit(folder: Path) -> str:
    """The last error nginx logged (e.g. the public port taken), for a one-line refusal."""
    log = folder / "error.log"
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "[emerg]" in ln or "[alert]" in ln] \
        if log.is_file() else []
    return lines[-1].split("] ", 1)[-1] if lines else f"see {log}"
