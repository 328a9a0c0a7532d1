"""A deployed site: its configuration (`petite_fl/configs/site/<name>.yaml` or a file) and the checks
made before it joins, so that a bad data set, a missing certificate or an unreachable
server is a one-line message and not a SuperNode that fails later.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from petite_fl.config import compose, config_dirs, expand_path
from petite_fl.deploy.approval import approved_apps
from petite_fl.deploy.bundle import BundleLimits
from petite_fl.errors import ConfigError, DataError
from petite_fl.federation.site.policy import NODE_KEY, SitePolicy
from petite_fl.pacs.connection import (
    PacsConnection,
    load_credentials,
    pacs_from_mapping,
    parse_url,
    refuse_plain_http_secrets,
)
from petite_fl.runconfig import NODE_TRACKING, SITE_TRACKING
from petite_fl.tracking import tracker_name

FIELDS = ("name", "manifest", "device", "cache", "server", "ca_cert", "private_key", "port")
#: fields a site config may leave out, with their default
OPTIONAL_FIELDS = {"approved_apps": None,   # app hashes this site runs besides petite-fl's own (deploy.approval)
                   "bundle_limits": None,   # bounds on an app bundle before it is read; None: the defaults
                   "pacs": None,            # its PACS (petite_fl.pacs.connection); None: a URL on the command line
                   "policy": None,          # the site's own policy; None: its safe defaults (federation.site.policy)
                   "tracking": None}        # where its own curves go; None: TensorBoard at the site


@dataclass(frozen=True)
class SiteDeployment:
    name: str
    manifest: Path | None      # None: the synthetic scanner of this name
    device: str
    cache: Path
    server: str
    ca_cert: Path | None       # None: --insecure
    private_key: Path | None   # None: no SuperNode authentication
    port: int
    approved_apps: tuple[str, ...] = ()  # besides petite-fl's own app as installed here
    bundle_limits: BundleLimits = field(default_factory=BundleLimits)  # deploy.bundle
    policy: SitePolicy = field(default_factory=SitePolicy)
    tracking: dict[str, Any] = field(default_factory=lambda: dict(SITE_TRACKING))

    def node_config(self) -> dict[str, Any]:
        # The policy travels in the node config: set by the site, out of the coordinator's reach.
        out: dict[str, Any] = {"site": self.name, "site-root": str(self.cache), "device": self.device,
                               NODE_KEY: self.policy.to_json(), NODE_TRACKING: json.dumps(self.tracking)}
        if self.manifest is not None:
            out["manifest"] = str(self.manifest)
        return out


def available_sites() -> list[str]:
    return sorted({p.stem for d in config_dirs() for p in (d / "site").glob("*.yaml")})


def load_site_config(ref: str, overrides: list[str] = ()) -> dict[str, Any]:
    """petite_fl/configs/site/<ref>.yaml (or a YAML file), resolved against the root config."""
    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        root = OmegaConf.to_container(compose(overrides=list(overrides)), resolve=True)
        merged = OmegaConf.merge(OmegaConf.create(root), {"site": OmegaConf.load(path)})
        data = OmegaConf.to_container(merged.site, resolve=True)
    elif ref in available_sites():
        data = OmegaConf.to_container(compose(overrides=[f"+site={ref}", *overrides]).site, resolve=True)
    else:
        raise ConfigError(f"unknown site '{ref}': not a YAML file and not one of {', '.join(available_sites())} "
                          "(petite_fl/configs/site/, or PETITE_FL_CONFIG_PATH/site/)")
    missing = [f for f in FIELDS if f not in data]
    if missing:
        raise ConfigError(f"site config '{ref}' lacks {', '.join(missing)}")
    unknown = sorted(set(data) - set(FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ConfigError(f"site config '{ref}': unknown field(s) {', '.join(unknown)} "
                          f"(allowed: {', '.join([*FIELDS, *OPTIONAL_FIELDS])})")
    return {**OPTIONAL_FIELDS, **data}


def site_deployment(ref: str, insecure: bool = False, overrides: list[str] = ()) -> SiteDeployment:
    d = load_site_config(ref, overrides)
    if ":" not in str(d["server"]):
        raise ConfigError(f"site {d['name']}: server '{d['server']}' must be host:port")
    return SiteDeployment(
        name=str(d["name"]), manifest=expand_path(d["manifest"]) if d["manifest"] else None,
        device=str(d["device"]), cache=expand_path(d["cache"]), server=str(d["server"]),
        ca_cert=None if insecure else expand_path(d["ca_cert"]),
        private_key=None if insecure or not d["private_key"] else expand_path(d["private_key"]),
        port=int(d["port"]), approved_apps=approved_apps(d["approved_apps"], f"site config '{ref}'"),
        bundle_limits=BundleLimits.from_mapping(d["bundle_limits"], f"site config '{ref}'"),
        policy=SitePolicy.from_mapping(d["policy"], f"site {d['name']}: policy"),
        tracking=site_tracking(d["tracking"], f"site config '{ref}'"))


def site_pacs(url: str | None, site: str | None = None, where: str = "PACS") -> PacsConnection:
    """The PACS a command names: `url` (https://…/dicom-web or dicom://AE@host:port) or a site config's name,
    with the site config's `pacs:` block supplying credentials, CA file and timeout (and the address
    when no URL is given). Without a block, credentials come from PETITE_PACS_USERNAME/PASSWORD/TOKEN."""
    if url and "://" not in url:  # a site config's name (or YAML file), not an address
        site, url = url, None
    block = None
    if site and (site in available_sites() or Path(site).suffix in (".yaml", ".yml")):
        block = load_site_config(site)["pacs"]
    if block is not None:
        conn = pacs_from_mapping(block, f"site config '{site}'")
        return refuse_plain_http_secrets(conn.with_address(url, where) if url else conn, where)
    if not url:
        raise ConfigError(f"{where}: no PACS address: give a URL (https://host/dicom-web or dicom://AE@host:port) "
                          f"or a pacs: block in the site config{f' of {site}' if site else ''}")
    return refuse_plain_http_secrets(replace(parse_url(url), credentials=load_credentials(None, where)), where)


def site_tracking(data: Any, where: str) -> dict[str, Any]:
    """The site YAML's `tracking:` (its own; the coordinator's never applies), checked: a name the
    installation knows, as `tracking=` takes it (a mapping with `name`, or just the name)."""
    if data is None:
        return dict(SITE_TRACKING)
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict) or not data.get("name"):
        raise ConfigError(f"{where}: tracking must be a mapping with a 'name' (tensorboard, mlflow, none)")
    try:
        name = tracker_name(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: tracking.name: {exc}") from None
    if name == "mlflow" and importlib.util.find_spec("mlflow") is None:  # found at the check, not at a hello
        raise ConfigError(f"{where}: tracking.name is mlflow, which is not installed here: "
                          "pip install 'petite-fl[mlflow]'")
    return dict(data)


def preflight(site: SiteDeployment, cfg_overrides: list[str] = (), connect_timeout: float = 5.0) -> list[str]:
    """Everything checkable before joining; raises with the first problem, returns notes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from petite_fl.data.check import check_site
    from petite_fl.data.sites import resolve_site
    from petite_fl.training.device import resolve_device

    notes = [f"policy: {site.policy.describe()}"]
    resolve_device(site.device)  # "CUDA requested but absent" is a ConfigError here
    if site.manifest is not None:
        report = check_site(site.manifest)
        if not report.ok:
            raise DataError(f"site {site.name}: {site.manifest} has {len(report.problems)} problem(s), not joining:\n"
                            + "\n".join(report.problems))
        notes.append(f"data: {site.manifest} ({', '.join(f'{k} {v}' for k, v in report.counts.items())})")
    else:
        manifest = resolve_site(compose(overrides=list(cfg_overrides)), site.name)
        notes.append(f"data: synthetic {site.name} ({manifest})")
    if site.ca_cert is not None:
        if not site.ca_cert.is_file():
            raise ConfigError(f"site {site.name}: CA certificate {site.ca_cert} not found (ca_cert; the "
                              "coordinator's ca.crt from `petite-server certs`)")
        try:
            x509.load_pem_x509_certificate(site.ca_cert.read_bytes())
        except ValueError:
            raise ConfigError(f"site {site.name}: {site.ca_cert} is not a PEM certificate (ca_cert)") from None
    if site.private_key is not None:
        if not site.private_key.is_file():
            raise ConfigError(f"site {site.name}: private key {site.private_key} not found; make it with "
                              f"`petite-client keygen --site {site.name}` and have the coordinator register the .pub")
        try:
            serialization.load_ssh_private_key(site.private_key.read_bytes(), password=None)
        except ValueError:
            raise ConfigError(f"site {site.name}: {site.private_key} is not an OpenSSH private key") from None
        if not Path(str(site.private_key) + ".pub").is_file():
            raise ConfigError(f"site {site.name}: public key {site.private_key}.pub not found beside the private key")
    host, _, port = site.server.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=connect_timeout):
            pass
    except (OSError, ValueError) as exc:
        raise ConfigError(f"site {site.name}: cannot reach the server at {site.server} ({exc.__class__.__name__}: "
                          f"{exc}); is petite-server running and the address right?") from None
    _tls_probe(site, host, int(port), connect_timeout)
    return notes


def _tls_probe(site: SiteDeployment, host: str, port: int, timeout: float) -> None:
    """One TLS handshake before joining: a wrong CA certificate or a TLS/plain-text mismatch is
    named here, instead of a SuperNode retrying a connection that can never succeed."""
    if site.ca_cert is not None:
        context = ssl.create_default_context(cafile=str(site.ca_cert))
        try:
            with socket.create_connection((host, port), timeout=timeout) as raw, \
                    context.wrap_socket(raw, server_hostname=host):
                return
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(f"site {site.name}: the server's certificate at {site.server} is not accepted with "
                              f"{site.ca_cert} ({exc.verify_message}); ca_cert must be the coordinator's ca.crt, "
                              "and the server's certificate must name this address (petite-server certs --san)"
                              ) from None
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            raise ConfigError(f"site {site.name}: no TLS at {site.server} ({exc.__class__.__name__}); the server was "
                              "started with --insecure: run both sides with TLS (or both with --insecure, for a "
                              "test)") from None
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only asks: does it speak TLS?
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            pass
    except (ssl.SSLError, ConnectionError, TimeoutError):
        return  # plain text, as --insecure expects
    raise ConfigError(f"site {site.name}: the server at {site.server} uses TLS; drop --insecure and set ca_cert to "
                      "the coordinator's ca.crt")
