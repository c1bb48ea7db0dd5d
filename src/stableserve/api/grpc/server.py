"""The ``grpc.aio`` server beside the HTTP app: same process, same event loop, same
``AppState`` (registry, ledger, job client), started and stopped by the app's lifespan.

Ports (``settings.grpc``, CONTRACT.md §4.3): a TLS port (stability-sdk sends its key only to
addresses ending in ``443``, over TLS) and, optionally, an insecure local-only port that
acts for one configured organization. Messages received are capped at 10 MiB like every HTTP
body (gRPC answers RESOURCE_EXHAUSTED before the servicer runs); answers may be 20 MiB, what
stability-sdk's api.py accepts.
"""

from __future__ import annotations

import grpc

from stableserve.api.deps import AppState
from stableserve.api.grpc.generated import dashboard_pb2_grpc, engines_pb2_grpc, generation_pb2_grpc
from stableserve.api.grpc.service import Auth, DashboardServicer, EnginesServicer, GenerationServicer
from stableserve.settings import GrpcSettings

MAX_MESSAGE_BYTES = 20 * 1024 * 1024
"""Largest message sent (stability-sdk's api.py accepts 20 MiB, client.py 10 MiB)."""
MAX_RECEIVE_BYTES = 10 * 1024 * 1024
"""Largest request message received: the 10 MiB body cap of every protocol (``api.limits``)."""

OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
]


def _add_services(server: grpc.aio.Server, state: AppState, auth: Auth) -> None:
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(GenerationServicer(state, auth), server)
    engines_pb2_grpc.add_EnginesServiceServicer_to_server(EnginesServicer(state, auth), server)
    dashboard_pb2_grpc.add_DashboardServiceServicer_to_server(DashboardServicer(state, auth), server)


def check_grpc_settings(config: GrpcSettings) -> None:
    """Raise ``ValueError`` for a TLS port without both PEM files (or unreadable ones) and an
    insecure port without an organization."""
    if config.port is not None:
        if config.tls_cert is None or config.tls_key is None:
            raise ValueError("grpc.port needs grpc.tls_cert and grpc.tls_key (PEM files)")
        for path in (config.tls_cert, config.tls_key):
            if not path.is_file():
                raise ValueError(f"grpc TLS file {path} does not exist")
    if config.insecure_port is not None and not config.insecure_org:
        raise ValueError("grpc.insecure_port needs grpc.insecure_org (the organization it acts for)")


def build_grpc_servers(state: AppState, config: GrpcSettings) -> list[grpc.aio.Server]:
    """The servers ``config`` asks for (none when both ports are off); not started. Call it
    with the event loop that will run them (``grpc.aio`` binds to it).

    The TLS server reads ``tls_cert``/``tls_key`` (PEM); the insecure server acts for
    ``insecure_org``. Raises what ``check_grpc_settings`` raises; ``OSError`` when a file
    cannot be read. Two servers rather than two ports on one, because the insecure port
    authenticates differently.
    """
    check_grpc_settings(config)
    servers = []
    if config.port is not None:
        creds = grpc.ssl_server_credentials([(config.tls_key.read_bytes(), config.tls_cert.read_bytes())])
        server = grpc.aio.server(options=OPTIONS)
        _add_services(server, state, Auth(state))
        server.add_secure_port(f"{config.host}:{config.port}", creds)
        servers.append(server)
    if config.insecure_port is not None:
        server = grpc.aio.server(options=OPTIONS)
        _add_services(server, state, Auth(state, insecure_org=config.insecure_org))
        server.add_insecure_port(f"{config.host}:{config.insecure_port}")
        servers.append(server)
    return servers
