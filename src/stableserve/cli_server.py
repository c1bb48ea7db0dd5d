"""``stableserve serve`` and ``stableserve dev-setup``: run the HTTP server; prepare a dev account.

``serve`` also starts the gRPC API of ``stability-sdk`` (CONTRACT.md §4) beside the HTTP one
when asked: ``--grpc-port`` (TLS, with ``--grpc-tls-cert``/``--grpc-tls-key``) and/or
``--grpc-insecure-port`` (plaintext, localhost only, acting for ``--grpc-insecure-org``). The
options override ``STABLESERVE_GRPC__*`` settings; the result is checked before anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from stableserve.errors import StableServeError

if TYPE_CHECKING:
    from stableserve.settings import GrpcSettings, Settings

err = Console(stderr=True, soft_wrap=True)


def _settings(engines: str | None):
    from stableserve.settings import get_settings

    settings = get_settings()
    return settings.model_copy(update={"engines": engines}) if engines else settings


def _fail(message: str) -> typer.Exit:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # "stableserve[ray]" stays
    return typer.Exit(2)


def _with_grpc(settings: Settings, **options: object) -> Settings:
    """``settings`` with the ``--grpc-*`` options that were given (not None) in ``settings.grpc``."""
    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        return settings
    return settings.model_copy(update={"grpc": settings.grpc.model_copy(update=given)})


def _with_executor(settings: Settings, executor: str | None, ray_address: str | None) -> Settings:
    """``settings`` with ``--executor`` / ``--ray-address`` applied (clean errors for bad values)."""
    if executor is not None and executor not in ("local", "ray"):
        raise _fail(f"--executor must be local or ray, not {executor!r}")
    jobs = settings.jobs.model_copy(update={"executor": executor}) if executor else settings.jobs
    if ray_address is not None and jobs.executor != "ray":
        raise _fail("--ray-address is only used with --executor ray")
    ray = settings.ray.model_copy(update={"address": ray_address}) if ray_address else settings.ray
    return settings.model_copy(update={"jobs": jobs, "ray": ray})


def _check_tls_files(cert: Path | None, key: Path | None) -> None:
    """Both PEM files exist, parse, and the key belongs to the (first) certificate."""
    if cert is None or key is None:
        raise _fail(
            "--grpc-port serves TLS and needs --grpc-tls-cert FILE and --grpc-tls-key FILE "
            "(PEM; `stableserve certs dev --out certs` makes a local pair)"
        )
    for option, path in (("--grpc-tls-cert", cert), ("--grpc-tls-key", key)):
        if not path.is_file():
            raise _fail(f"{option}: {path} does not exist or is not a file")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certs = x509.load_pem_x509_certificates(cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise _fail(f"--grpc-tls-cert: {cert} is not a PEM certificate ({exc})") from None
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise _fail(f"--grpc-tls-key: {key} is not an unencrypted PEM private key ({exc})") from None
    def spki(public_key) -> bytes:
        return public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    if spki(private.public_key()) != spki(certs[0].public_key()):
        raise _fail(f"--grpc-tls-key: {key} is not the key of the certificate {cert}")


def _check_grpc(grpc: GrpcSettings, http_port: int) -> None:
    """Refuse an inconsistent gRPC configuration with a clean ``error:`` (exit 2)."""
    if grpc.port is None and (grpc.tls_cert is not None or grpc.tls_key is not None):
        raise _fail("--grpc-tls-cert/--grpc-tls-key are only used with --grpc-port PORT")
    if grpc.port is not None:
        _check_tls_files(grpc.tls_cert, grpc.tls_key)
        if not str(grpc.port).endswith("443"):
            err.print(
                f"note: gRPC port {grpc.port} does not end in 443: stability-sdk clients will use "
                "plaintext there and send no API key (use e.g. 8443)",
                highlight=False,
            )
    if grpc.insecure_port is not None and not (grpc.insecure_org or "").strip():
        raise _fail(
            "--grpc-insecure-port needs --grpc-insecure-org NAME: calls there carry no API key "
            "and act for that organization"
        )
    if grpc.insecure_port is None and grpc.insecure_org is not None:
        raise _fail("--grpc-insecure-org is only used with --grpc-insecure-port PORT")
    ports = [("--port", http_port), ("--grpc-port", grpc.port), ("--grpc-insecure-port", grpc.insecure_port)]
    used: dict[int, str] = {}
    for option, p in ports:
        if p is None:
            continue
        if p in used:
            raise _fail(f"{option} {p} is the same port as {used[p]}")
        used[p] = option


def _check_ports_free(grpc: GrpcSettings) -> None:
    """The gRPC ports can be bound now (a clean error instead of a failed app startup)."""
    import socket

    for option, port in (("--grpc-port", grpc.port), ("--grpc-insecure-port", grpc.insecure_port)):
        if port is None:
            continue
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                grpc.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(address)
        except OSError as exc:
            raise _fail(f"{option}: cannot listen on {grpc.host}:{port}: {exc.strerror or exc}") from None


def _check_insecure_org(settings: Settings) -> None:
    """The insecure port's organization exists (after migrations)."""
    from stableserve.accounts.orgs import get_org
    from stableserve.db.session import session_factory

    org_name = settings.grpc.insecure_org
    if settings.grpc.insecure_port is None or org_name is None:
        return
    with session_factory(settings).begin() as session:
        try:
            get_org(session, org_name)
        except StableServeError:
            raise _fail(
                f"--grpc-insecure-org: organization {org_name} not found "
                f"(create it: stableserve orgs create {org_name} --credits N)"
            ) from None


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    engines: Annotated[str | None, typer.Option(help="Registry: demo, public or a YAML file.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    grpc_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Serve the gRPC API (stability-sdk) with TLS on this port; use one ending in 443 "
            "(e.g. 8443): the SDK sends its key only there. Needs --grpc-tls-cert and --grpc-tls-key.",
        ),
    ] = None,
    grpc_tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain) of the gRPC TLS port.")
    ] = None,
    grpc_tls_key: Annotated[Path | None, typer.Option(help="PEM private key of the gRPC TLS port.")] = None,
    grpc_insecure_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Also serve gRPC in plaintext on this port (local use only: no API key is sent "
            "there, every call acts for --grpc-insecure-org).",
        ),
    ] = None,
    grpc_insecure_org: Annotated[
        str | None, typer.Option(help="Organization (name or id) that insecure-port calls act for.")
    ] = None,
    grpc_host: Annotated[
        str | None, typer.Option(help="Interface the gRPC ports bind (default 127.0.0.1).")
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(
            help="Where jobs run: local (worker processes on this machine, the default) or ray "
            "(Ray Serve deployments; pip install 'stableserve\\[ray]')."
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster for --executor ray: auto (the one `ray start --head` runs here) or "
            "HOST:6379 (the head's GCS port); default: a private local Ray."
        ),
    ] = None,
) -> None:
    """Run the API server (REST v1 / v1beta / v1alpha / v2beta) with uvicorn, and the gRPC API
    when a gRPC port is given; migrates the database first."""
    import uvicorn

    from stableserve.api.app import build_app
    from stableserve.db.migrate import upgrade
    from stableserve.inference.loading import quiet_libraries
    from stableserve.observability.logs import configure_logging

    quiet_libraries()
    settings = _with_grpc(
        _settings(engines),
        host=grpc_host,
        port=grpc_port,
        tls_cert=grpc_tls_cert,
        tls_key=grpc_tls_key,
        insecure_port=grpc_insecure_port,
        insecure_org=grpc_insecure_org,
    )
    settings = _with_executor(settings, executor, ray_address)
    configure_logging(log_level, settings.logs.format)  # STABLESERVE_LOGS__FORMAT=json|text
    _check_grpc(settings.grpc, port)
    _check_ports_free(settings.grpc)
    try:
        upgrade(settings)
        _check_insecure_org(settings)
        app = build_app(settings)
    except StableServeError as exc:
        raise _fail(exc.message) from None
    err.print(
        f"stableserve on http://{host}:{port} (engines: {settings.engines}, data: {settings.home})",
        highlight=False,
    )
    if settings.jobs.executor == "ray":
        err.print(
            f"jobs run on Ray Serve ({settings.ray.address or 'a private local Ray'}; one "
            f"application per model family, named {settings.ray.app_prefix}-<family>)",
            highlight=False,
        )
    grpc = settings.grpc
    if grpc.port is not None:
        err.print(
            f"stableserve gRPC (stability-sdk) on {grpc.host}:{grpc.port} (TLS, API keys as "
            f"'authorization: Bearer'; certificate {grpc.tls_cert})",
            highlight=False,
        )
    if grpc.insecure_port is not None:
        err.print(
            f"stableserve gRPC (stability-sdk) on {grpc.host}:{grpc.insecure_port} (plaintext, local "
            f"use only: no API key, every call acts for organization {grpc.insecure_org})",
            highlight=False,
        )
    # log_config=None: uvicorn's records go through our handler (JSON, request ids) too.
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False, log_config=None)


def dev_setup(
    port: Annotated[int, typer.Option(help="Port used in the printed curl command.")] = 8000,
) -> None:
    """Migrate, make sure the development org 'dev' and an API key exist, print a curl command."""
    from stableserve.accounts.orgs import ensure_dev_account
    from stableserve.db.migrate import upgrade

    settings = _settings(None)
    upgrade(settings)
    _org, key = ensure_dev_account(settings)
    if key:
        err.print(
            "Created the development organization 'dev' and its API key (shown only this once):",
            highlight=False,
        )
        print(f"export STABILITY_API_KEY={key}")
    else:
        err.print(
            "Development organization 'dev' exists; use the key printed when it was created, "
            "or make a new one: export STABILITY_API_KEY=$(.venv/bin/stableserve keys create --org dev)",
            highlight=False,
        )
    err.print(
        "Try it:\n"
        f"  curl -sS -X POST http://127.0.0.1:{port}/v1/generation/stable-diffusion-v1-5/text-to-image "
        '-H "Authorization: Bearer $STABILITY_API_KEY" -H "Content-Type: application/json" '
        '-H "Accept: image/png" -d \'{"text_prompts": [{"text": '
        '"a large red circle on the left on a blue background"}], "steps": 30}\' -o shapes.png',
        highlight=False,
    )
