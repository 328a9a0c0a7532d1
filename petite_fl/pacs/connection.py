"""Where a site's PACS is and how to log in: the site YAML's `pacs:` block, or a URL on the command line.

`https://host/dicom-web` is DICOMweb, `dicom://CALLED_AE@host:port` is DIMSE. A URL names only
the address: a user name or password in it is refused (a command line is visible to every user
of the machine, in `ps` and in shell histories). Credentials come from a file (0600, like an SSH
key) or from environment variables, and are held in a `Credentials` whose repr shows no secret.
What any message names is `label`: the address without credentials.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from petite_fl.errors import ConfigError, PetiteError

PROTOCOLS = ("dicomweb", "dimse")
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_CALLING_AE = "PETITE"
#: the environment variables read when the configuration names none
DEFAULT_ENV = {"username": "PETITE_PACS_USERNAME", "password": "PETITE_PACS_PASSWORD", "token": "PETITE_PACS_TOKEN"}
FIELDS = ("protocol", "url", "host", "port", "called_ae", "calling_ae", "credentials", "ca_file", "timeout")
CREDENTIAL_FIELDS = ("file", "username_env", "password_env", "token_env")
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 characters of the default repertoire, no backslash


class PacsError(PetiteError):
    """A PACS refused, timed out or went away; the message names the PACS by its `label`, never a credential."""


@dataclass(frozen=True)
class Credentials:
    """A user name and password (HTTP basic) or a bearer token; the repr names which, never the values."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "token" if self.token else "basic" if self.username else "none"

    def __repr__(self) -> str:
        return f"Credentials({self.kind})"

    def secrets(self) -> tuple[str, ...]:
        """The values no log, sidecar or message may hold (for the checks that say so)."""
        return tuple(s for s in (self.password, self.token) if s)


@dataclass(frozen=True)
class PacsConnection:
    """One PACS: its protocol and address, the credentials (DICOMweb) and calling AE (DIMSE), TLS, timeout."""

    protocol: str
    url: str | None = None            # DICOMweb root, e.g. https://pacs.example.org/dicom-web
    host: str | None = None           # DIMSE
    port: int | None = None
    called_ae: str | None = None
    calling_ae: str = DEFAULT_CALLING_AE
    credentials: Credentials = field(default_factory=Credentials)
    ca_file: Path | None = None       # TLS: the CA that signed the PACS's certificate
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def label(self) -> str:
        """The PACS as every message names it: the address, without credentials."""
        if self.protocol == "dicomweb":
            return str(self.url)
        return f"dicom://{self.called_ae}@{self.host}:{self.port}"

    @property
    def endpoint(self) -> tuple[str, str, int | None]:
        """(scheme, host, port): the server its credentials are meant for."""
        if self.protocol == "dicomweb":
            parts = urlsplit(str(self.url))
            return parts.scheme, str(parts.hostname), parts.port or (443 if parts.scheme == "https" else 80)
        return "dicom", str(self.host), self.port

    def with_address(self, url: str, where: str = "PACS") -> PacsConnection:
        """This connection's TLS and timeout at the address of `url` (a command-line override); its
        credentials only where `url` is the same server, else the environment's (PETITE_PACS_*): a
        hospital password is never sent to a host the site's configuration does not name for it."""
        other = parse_url(url)
        same = other.endpoint == self.endpoint
        return replace(self, protocol=other.protocol, url=other.url, host=other.host, port=other.port,
                       called_ae=other.called_ae,
                       credentials=self.credentials if same else load_credentials(None, where))


LOOPBACK = ("localhost", "127.0.0.1", "::1")


def refuse_plain_http_secrets(conn: PacsConnection, where: str) -> PacsConnection:
    """Credentials travel over https (or to this machine) only: over plain http anyone on the path reads them."""
    scheme, host, _ = conn.endpoint
    if conn.protocol == "dicomweb" and scheme == "http" and conn.credentials.kind != "none" and host not in LOOPBACK:
        raise ConfigError(f"{where}: PACS {conn.label}: credentials are not sent over plain http to another host; "
                          "use the PACS's https address")
    return conn


def parse_url(url: str) -> PacsConnection:
    """`https://…/dicom-web` (DICOMweb) or `dicom://CALLED_AE@host:port` (DIMSE), with no credentials."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigError(f"PACS URL '{_no_userinfo(url)}': not a URL (https://host/dicom-web or "
                          "dicom://CALLED_AE@host:port)") from None
    if parts.scheme in ("http", "https"):
        if parts.username or parts.password:
            raise ConfigError(f"PACS URL '{_no_userinfo(url)}': a user name or password in the URL is refused "
                              "(a command line is visible to every user); give them in the site YAML's "
                              "pacs.credentials or in PETITE_PACS_USERNAME/PETITE_PACS_PASSWORD")
        if not parts.hostname:
            raise ConfigError(f"PACS URL '{url}': no host")
        return PacsConnection("dicomweb", url=url.strip().rstrip("/"))
    if parts.scheme == "dicom":
        if parts.password is not None or not parts.username or not parts.hostname or port is None:
            raise ConfigError(f"PACS URL '{_no_userinfo(url)}': a DIMSE address is dicom://CALLED_AE@host:port")
        return PacsConnection("dimse", host=parts.hostname, port=port, called_ae=_ae(parts.username, "called AE"))
    raise ConfigError(f"PACS URL '{_no_userinfo(url)}': scheme '{parts.scheme}' is not https/http (DICOMweb) "
                      "or dicom (DIMSE)")


def _no_userinfo(url: str) -> str:
    """`url` with everything between `://` and the last `@` of its authority blanked, for a refusal line."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        return "***" if "@" in url else url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        user, host = authority.rsplit("@", 1)
        keep = scheme == "dicom" and ":" not in user and "@" not in user  # dicom://CALLED_AE@…: an AE title
        authority = f"{user if keep else '***'}@{host}"
    elif ":" in authority and not authority.rsplit(":", 1)[1].isdigit():
        authority = "***"  # `user:pa/ss@host`: what follows may be a password's remainder
        path = ""
    return f"{scheme}://{authority}{slash if path else ''}{path}"


def _ae(value: Any, what: str) -> str:
    text = str(value).strip()
    if not _AE.match(text):
        raise ConfigError(f"PACS {what} '{text}': an AE title is 1 to 16 printable characters, no backslash")
    return text


def pacs_from_mapping(data: Mapping[str, Any], where: str) -> PacsConnection:
    """A site YAML's `pacs:` block, checked: one line naming the field for anything wrong."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: pacs must be a mapping with protocol: dicomweb|dimse")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: pacs: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(FIELDS)})")
    protocol = data.get("protocol") or ("dicomweb" if data.get("url") else "dimse" if data.get("host") else None)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{where}: pacs.protocol '{protocol}' is not dicomweb or dimse")
    if protocol == "dicomweb":
        if not data.get("url"):
            raise ConfigError(f"{where}: pacs.url is needed for dicomweb (https://host/dicom-web)")
        conn = parse_url(str(data["url"]))
        if conn.protocol != "dicomweb":
            raise ConfigError(f"{where}: pacs.url '{data['url']}' is not an http(s) URL")
    else:
        missing = [k for k in ("host", "port", "called_ae") if not data.get(k)]
        if missing:
            raise ConfigError(f"{where}: pacs.{', pacs.'.join(missing)} needed for dimse")
        try:
            port = int(data["port"])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: pacs.port '{data['port']}' is not a number") from None
        conn = PacsConnection("dimse", host=str(data["host"]), port=port, called_ae=_ae(data["called_ae"], "called_ae"))
    ca = data.get("ca_file")
    try:
        timeout = float(data.get("timeout") or DEFAULT_TIMEOUT_S)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: pacs.timeout '{data.get('timeout')}' is not a number of seconds") from None
    return replace(conn, calling_ae=_ae(data.get("calling_ae") or DEFAULT_CALLING_AE, "calling_ae"),
                   ca_file=Path(str(ca)).expanduser() if ca else None, timeout=timeout,
                   credentials=load_credentials(data.get("credentials"), where))


def load_credentials(spec: Mapping[str, Any] | None, where: str) -> Credentials:
    """From `file` (YAML with username/password or token; 0600) or the named environment variables.

    None: the default variables (PETITE_PACS_USERNAME/PASSWORD/TOKEN) if set, else no credentials."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(CREDENTIAL_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: pacs.credentials: unknown field(s) {', '.join(unknown)} "
                          f"(allowed: {', '.join(CREDENTIAL_FIELDS)})")
    if spec.get("file"):
        return _credentials_file(Path(str(spec["file"])).expanduser(), where)
    names = {k: spec.get(f"{k}_env") or DEFAULT_ENV[k] for k in DEFAULT_ENV}
    for key in ("username_env", "password_env", "token_env"):
        if spec.get(key) and spec[key] not in os.environ:
            raise ConfigError(f"{where}: pacs.credentials.{key}: the environment variable {spec[key]} is not set")
    values = {k: os.environ.get(name) or None for k, name in names.items()}
    if values["username"] and not values["password"]:
        raise ConfigError(f"{where}: pacs credentials: {names['username']} is set but {names['password']} is not")
    return Credentials(**values)


def _credentials_file(path: Path, where: str) -> Credentials:
    if not path.is_file():
        raise ConfigError(f"{where}: pacs.credentials.file {path} not found")
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{where}: pacs.credentials.file {path} is readable by others: chmod 600 {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ConfigError(f"{where}: pacs.credentials.file {path} is not YAML "
                          "(username: …, password: … or token: …)") from None
    if not isinstance(data, dict) or not (data.get("token") or (data.get("username") and data.get("password"))):
        raise ConfigError(f"{where}: pacs.credentials.file {path} needs username and password, or token")
    return Credentials(username=_text(data.get("username")), password=_text(data.get("password")),
                       token=_text(data.get("token")))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
