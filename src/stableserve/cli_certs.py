"""``stableserve certs dev``: a local CA and a TLS server certificate for the gRPC port.

``stability-sdk`` sends its API key only over TLS, to hosts whose address ends in ``443``
(CONTRACT.md §4.3). For local use this writes, into ``--out DIR``:

- ``ca.pem`` / ``ca-key.pem`` (0600): a self-signed certificate authority, EC P-256;
- ``server.pem`` / ``server-key.pem`` (0600): a server certificate for DNS ``localhost`` and IP
  ``127.0.0.1`` signed by that CA (serverAuth, valid 825 days).

Clients trust the CA through ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=DIR/ca.pem`` (gRPC C-core).
``write_dev_certs`` does the work and is importable (tests use it).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

certs_app = typer.Typer(help="TLS certificates for the gRPC API.", no_args_is_help=True)

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

#: Validity of both certificates (825 days: the longest Apple platforms accept for servers).
VALID_DAYS = 825


@dataclass(frozen=True)
class DevCerts:
    """Paths written by :func:`write_dev_certs`."""

    ca: Path
    ca_key: Path
    server: Path
    server_key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (0600, also when it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def write_dev_certs(out_dir: Path, *, now: dt.datetime | None = None) -> DevCerts:
    """Create a local CA and a ``localhost``/``127.0.0.1`` server certificate in ``out_dir``.

    Existing files of the same names are replaced. Raises ``OSError`` when ``out_dir`` cannot
    be created or written.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(minutes=5)
    not_after = now + dt.timedelta(days=VALID_DAYS)
    out_dir.mkdir(parents=True, exist_ok=True)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stableserve development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "stableserve local development CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stableserve development"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    paths = DevCerts(
        ca=out_dir / "ca.pem",
        ca_key=out_dir / "ca-key.pem",
        server=out_dir / "server.pem",
        server_key=out_dir / "server-key.pem",
    )
    _write_private(paths.ca_key, key_pem(ca_key))
    _write_private(paths.server_key, key_pem(server_key))
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return paths


@certs_app.command("dev")
def certs_dev(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory to write ca.pem, server.pem and their keys into.")
    ] = Path("certs"),
) -> None:
    """Write a local CA and a server certificate for localhost and 127.0.0.1 (development only)."""
    try:
        paths = write_dev_certs(out_dir)
    except OSError as exc:
        err.print(f"[bold red]error:[/] cannot write certificates to {out_dir}: {exc}", highlight=False)
        raise typer.Exit(2) from None
    out.print(
        f"wrote {paths.ca} (local CA, valid {VALID_DAYS} days; its key {paths.ca_key}, mode 0600)\n"
        f"wrote {paths.server} (server certificate for localhost and 127.0.0.1, signed by the CA)\n"
        f"wrote {paths.server_key} (server key, mode 0600)",
        highlight=False,
    )
    out.print(
        "Serve:  stableserve serve --grpc-port 8443 "
        f"--grpc-tls-cert {paths.server} --grpc-tls-key {paths.server_key}\n"
        f"Client: export GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={paths.ca.resolve()}   "
        "# then use host localhost:8443 (stability-sdk sends its key only to ports ending in 443)",
        highlight=False,
    )
