"""``stableserve certs dev``: the dev CA signs a localhost/127.0.0.1 server certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from typer.testing import CliRunner

from stableserve.cli import app
from stableserve.cli_certs import VALID_DAYS, write_dev_certs


def _spki(public_key) -> bytes:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return public_key.public_bytes(der, spki)


def test_server_certificate_verifies_against_the_ca(tmp_path):
    paths = write_dev_certs(tmp_path / "certs")
    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server.read_bytes())

    # A full TLS-server path validation (SAN, EKU, CA constraints, validity) for both names.
    now = dt.datetime.now(dt.UTC)
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        verifier = PolicyBuilder().store(Store([ca])).time(now).build_server_verifier(name)
        chain = verifier.verify(server, [])
        assert chain[-1] == ca
    wrong = PolicyBuilder().store(Store([ca])).time(now).build_server_verifier(x509.DNSName("example.com"))
    with pytest.raises(VerificationError):
        wrong.verify(server, [])

    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ca_bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ca_bc.critical and ca_bc.value.ca is True
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    days = (server.not_valid_after_utc - server.not_valid_before_utc).days
    assert VALID_DAYS <= days <= VALID_DAYS + 1

    # Keys: PEM, unencrypted, matching their certificates, readable by the owner only.
    for key_path, cert in ((paths.server_key, server), (paths.ca_key, ca)):
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        assert _spki(key.public_key()) == _spki(cert.public_key())
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_rewriting_keeps_keys_private(tmp_path):
    out = tmp_path / "certs"
    out.mkdir()
    (out / "server-key.pem").write_text("old")
    (out / "server-key.pem").chmod(0o644)
    paths = write_dev_certs(out)
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600
    assert paths.server_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_cli_prints_the_files_and_the_client_hint(tmp_path):
    out = tmp_path / "c"
    result = CliRunner().invoke(app, ["certs", "dev", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem"):
        assert (out / name).is_file()
        assert name in result.output
    assert f"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={(out / 'ca.pem').resolve()}" in result.output


def test_cli_unwritable_directory_is_a_clean_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(app, ["certs", "dev", "--out", str(blocker / "sub")])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output
