"""TLS certificates and SuperNode keys, made with `cryptography`.

Flower's SuperLink serves TLS with a server certificate whose SANs cover the address the
sites dial (e.g. `IP:127.0.0.1`, `DNS:localhost`); sites trust the CA certificate. A site
authenticates with an ECDSA P-384 key pair in OpenSSH format, its public key registered
with the SuperLink (`flwr supernode register`). Private keys are written 0600, every
file atomically.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from petite_fl.atomic import atomic_path, private_dir
from petite_fl.errors import ConfigError, PetiteError


@dataclass(frozen=True)
class ServerCredentials:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def parse_san(text: str) -> x509.GeneralName:
    """'IP:127.0.0.1' or 'DNS:fl.hospital.org' (a bare IP or host name is accepted too)."""
    kind, _, value = text.partition(":") if text.upper().startswith(("IP:", "DNS:")) else ("", "", text)
    kind = kind.upper() or ("IP" if _is_ip(value) else "DNS")
    if kind == "IP":
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            raise ConfigError(f"--san {text}: '{value}' is not an IP address") from None
    if not value or " " in value:
        raise ConfigError(f"--san {text}: not a host name")
    return x509.DNSName(value)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _write(path: Path, data: bytes, private: bool) -> Path:
    with atomic_path(path, mode=0o600 if private else None) as tmp:
        tmp.write_bytes(data)
    return path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "petite-fl"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_server_credentials(folder: str | Path, sans: Sequence[str] = ("IP:127.0.0.1", "DNS:localhost"),
                            days: int = 365, overwrite: bool = False) -> ServerCredentials:
    """A CA and a server certificate signed by it (ECDSA P-384), for the SuperLink."""
    folder = Path(folder).expanduser()
    out = ServerCredentials(folder / "ca.crt", folder / "ca.key", folder / "server.pem", folder / "server.key")
    existing = [p for p in (out.ca_cert, out.ca_key, out.server_cert, out.server_key) if p.exists()]
    if existing and not overwrite:
        raise PetiteError(f"{existing[0]} exists; pass --overwrite to replace the credentials in {folder}")
    if days < 1:
        raise ConfigError(f"--days must be ≥ 1, got {days}")
    names = [parse_san(s) for s in sans]
    if not names:
        raise ConfigError("at least one --san is needed (the address the sites connect to)")
    private_dir(folder)  # private keys: the folder 0700, its files 0600
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(_name("petite-fl CA")).issuer_name(_name("petite-fl CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    first = names[0].value
    server = (x509.CertificateBuilder().subject_name(_name(str(first))).issuer_name(ca.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
              .add_extension(x509.SubjectAlternativeName(names), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    no_pw = serialization.NoEncryption()
    _write(out.ca_key, ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_pw), private=True)
    _write(out.ca_cert, ca.public_bytes(pem), private=False)
    _write(out.server_key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_pw), private=True)
    _write(out.server_cert, server.public_bytes(pem), private=False)
    return out


def make_site_keys(folder: str | Path, site: str, overwrite: bool = False) -> tuple[Path, Path]:
    """A site's SuperNode key pair: ECDSA P-384, OpenSSH format (`<site>.key`, `<site>.key.pub`)."""
    folder = Path(folder).expanduser()
    private, public = folder / f"{site}.key", folder / f"{site}.key.pub"
    if (private.exists() or public.exists()) and not overwrite:
        raise PetiteError(f"{private} exists; a site keeps its key (pass --overwrite to replace it, then "
                          "register the new public key with the server)")
    private_dir(folder)  # private keys: the folder 0700, its files 0600
    key = ec.generate_private_key(ec.SECP384R1())
    _write(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption()), private=True)
    _write(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH) + f" {site}\n".encode(),
           private=False)
    return private, public


def make_loopback_credentials(folder: str | Path) -> ServerCredentials:
    """The SuperLink's own certificate for 127.0.0.1, behind the coordinator's public proxy.

    Flower refuses SuperNode authentication without TLS, and the coordinator's certificate
    names the public address, not necessarily 127.0.0.1; so the loopback SuperLink gets a CA
    and certificate of its own, made afresh at every start. Its CA key is deleted at once:
    nothing is ever signed with it again.
    """
    creds = make_server_credentials(folder, ("IP:127.0.0.1", "DNS:localhost"), days=3650, overwrite=True)
    creds.ca_key.unlink()
    return creds
