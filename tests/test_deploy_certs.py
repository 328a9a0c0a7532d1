"""Certificates and site keys made with `cryptography`, checked the way TLS and Flower read them."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from petite_fl.deploy.certs import make_server_credentials, make_site_keys
from petite_fl.errors import ConfigError, PetiteError


def test_server_certificate_is_signed_by_the_ca_and_covers_the_sans(tmp_path):
    creds = make_server_credentials(tmp_path, ["IP:127.0.0.1", "DNS:localhost", "fl.example.org"])
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "fl.example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (creds.ca_key, creds.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        serialization.load_pem_private_key(key.read_bytes(), password=None)


def test_existing_credentials_are_not_overwritten_by_accident(tmp_path):
    make_server_credentials(tmp_path)
    with pytest.raises(PetiteError, match="--overwrite"):
        make_server_credentials(tmp_path)
    make_server_credentials(tmp_path, overwrite=True)
    with pytest.raises(ConfigError, match="not an IP address"):
        make_server_credentials(tmp_path / "x", ["IP:localhost"])


def test_site_keys_are_ecdsa_p384_in_openssh_format(tmp_path):
    private, public = make_site_keys(tmp_path, "scanner1")
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    pub = serialization.load_ssh_public_key(public.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ") and public.read_text().strip().endswith("scanner1")
    assert pub.public_numbers() == key.public_key().public_numbers()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(PetiteError, match="keeps its key"):
        make_site_keys(tmp_path, "scanner1")


def test_the_cli_commands_make_credentials_and_refuse_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    from petite_fl.cli.client import main as client
    from petite_fl.cli.server import main as server

    assert server(["certs", "--out", str(tmp_path / "tls"), "--san", "IP:127.0.0.1"]) == 0
    assert (tmp_path / "tls" / "server.pem").is_file()
    assert server(["certs", "--out", str(tmp_path / "tls")]) == 2
    assert server(["certs", "--out", str(tmp_path / "x"), "--san", "IP:nohost"]) == 2
    monkeypatch.setenv("PETITE_FL_HOME", str(tmp_path / "home"))
    assert client(["keygen", "--site", "scanner2"]) == 0
    assert (tmp_path / "home" / "sites" / "scanner2" / "keys" / "scanner2.key.pub").is_file()
    err = capsys.readouterr().err
    assert "--overwrite" in err and "not an IP address" in err and "Traceback" not in err


def test_client_overrides_follow_the_options_like_every_cli_and_the_old_o_flag_still_works(tmp_path):
    from petite_fl.cli.client import main as client

    assert client(["keygen", "--site", "scanner1", f"paths.cache={tmp_path / 'a'}"]) == 0
    assert client(["keygen", "--site", "scanner1", "-o", f"paths.cache={tmp_path / 'b'}"]) == 0
    for folder in ("a", "b"):
        assert (tmp_path / folder / "sites" / "scanner1" / "keys" / "scanner1.key.pub").is_file()


@pytest.mark.parametrize("site", ["../x", "a/../../x", "..", "{tmp}/abs", "x/y", ""])
def test_keygen_refuses_a_site_that_is_not_a_name_like_register(tmp_path, capsys, monkeypatch, site):
    """`keygen --site` names the key files and their folder: a path there would write outside the keys
    folder, so it is checked as `petite-server register --site` checks it, in one line, before any write."""
    from petite_fl.cli.client import main as client
    from petite_fl.cli.server import main as server

    site = site.format(tmp=tmp_path)  # an absolute path, kept inside this test's folder
    monkeypatch.setenv("PETITE_FL_HOME", str(tmp_path / "home" / "cache"))  # ../x lands in home/: still seen
    assert client(["keygen", "--site", site]) == 2
    assert client(["keygen", "--site", site, "--out", str(tmp_path / "keys" / "in")]) == 2
    (tmp_path / "key.pub").write_text("not used: refused before")
    assert server(["register", "--site", site, "--key", str(tmp_path / "key.pub")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("petite-client: error: --site: ") and lines[1] == lines[0]
    assert lines[2].replace("petite-server", "petite-client") == lines[0]
    assert [p.name for p in tmp_path.rglob("*")] == ["key.pub"]
