"""Rate limits on every protocol: the same per-key counter, each protocol's 429 body, the
``X-RateLimit-*`` headers and ``Retry-After``; a refused request costs nothing."""

from __future__ import annotations

import socket

import grpc
import pytest
from fastapi.testclient import TestClient

from stableserve.settings import RateLimitSettings


@pytest.fixture(scope="module")
def limited(api_settings, tmp_path_factory):
    """The app with 3 requests per 10 s per key, a TLS gRPC port, dev certs."""
    from stableserve.api.app import build_app
    from stableserve.cli_certs import write_dev_certs
    from stableserve.settings import GrpcSettings

    certs = write_dev_certs(tmp_path_factory.mktemp("rl-certs"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    grpc_config = GrpcSettings(port=port, tls_cert=certs.server, tls_key=certs.server_key)
    settings = api_settings.model_copy(
        update={"rate_limit": RateLimitSettings(requests=3, window_s=10, timeout_s=60), "grpc": grpc_config}
    )
    with TestClient(build_app(settings), raise_server_exceptions=False) as client:
        yield client, port, certs


def exhaust(client, account) -> None:
    for remaining in (2, 1, 0):
        r = client.get("/v1/user/balance", headers={"Authorization": f"Bearer {account.key}"})
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == "3" and r.headers["X-RateLimit-Remaining"] == str(remaining)
        assert int(r.headers["X-RateLimit-Reset"]) > 0


def test_each_protocol_answers_429_in_its_own_body(limited, make_account):
    client, port, certs = limited
    account = make_account(100)
    exhaust(client, account)
    auth = {"Authorization": f"Bearer {account.key}"}
    v1 = client.get("/v1/engines/list", headers=auth)
    assert v1.status_code == 429 and v1.json()["name"] == "rate_limit_exceeded"
    assert v1.headers["Retry-After"] == "60"
    v2 = client.post(
        "/v2beta/stable-image/generate/core", headers=auth, data={"prompt": "x"}, files={"none": ""}
    )
    assert v2.status_code == 429 and v2.json()["name"] == "rate_limit_exceeded"
    assert v2.json()["errors"] == [
        "You have exceeded the rate limit of 3 requests within a 10 second period, "
        "and have been timed out for 60 seconds."
    ]
    oa = client.post("/v1/images/generations", headers=auth, json={"prompt": "x"})
    assert oa.status_code == 429 and oa.json()["error"]["code"] == "rate_limit_exceeded"
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes()),
        grpc.access_token_call_credentials(account.key),
    )
    from stableserve.api.grpc.generated import engines_pb2, engines_pb2_grpc

    with grpc.secure_channel(f"localhost:{port}", creds) as ch, pytest.raises(grpc.RpcError) as exc:
        engines_pb2_grpc.EnginesServiceStub(ch).ListEngines(engines_pb2.ListEnginesRequest())
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_keys_are_counted_separately(limited, make_account):
    client, _port, _certs = limited
    first, second = make_account(100), make_account(100)
    exhaust(client, first)
    r = client.get("/v1/user/balance", headers={"Authorization": f"Bearer {second.key}"})
    assert r.status_code == 200 and r.json()["credits"] == 100
