"""Object-level authorization across organizations: with organization A's key, try each of
organization B's resources (its async job result, balance, account, keys, credits, usage, plan,
and its gRPC organization) and get nothing. Signed OpenAI image links (which carry no key) are
covered in test_openai_images.py: an altered link is refused."""

from __future__ import annotations

import re
import socket

import grpc
import pytest
from fastapi.testclient import TestClient

from stableserve.api.grpc.generated import dashboard_pb2 as dpb
from stableserve.api.grpc.generated import dashboard_pb2_grpc
from tests.api.conftest import account_factory, png_bytes
from tests.api.v2 import balance, poll, post


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(api_settings, tmp_path_factory):
    """The app (small v2 registry, a TLS gRPC port), organizations A and B with keys, and B's
    finished asynchronous job."""
    from stableserve.api.app import build_app
    from stableserve.cli_certs import write_dev_certs
    from stableserve.settings import GrpcSettings
    from tests.api.v2 import small_v2_registry

    certs = write_dev_certs(tmp_path_factory.mktemp("authz-certs"))
    config = GrpcSettings(port=_port(), tls_cert=certs.server, tls_key=certs.server_key)
    app = build_app(api_settings.model_copy(update={"grpc": config}), registry=small_v2_registry())
    make = account_factory(api_settings)
    a, b = make(100), make(100)
    with TestClient(app, raise_server_exceptions=False) as client:
        files = {"image": ("in.png", png_bytes(64, 64), "image/png")}
        r = post(client, "upscale/creative", b, {"prompt": "a castle", "seed": "3"}, files=files)
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        assert poll(client, b, job_id).status_code == 200
        yield client, config, certs, a, b, job_id


def v1_error(r, status: int, name: str) -> None:
    assert r.status_code == status, r.text
    assert set(r.json()) == {"id", "name", "message"} and r.json()["name"] == name, r.json()


def test_another_organizations_result_is_not_found(world):
    client, _config, _certs, a, b, job_id = world
    for path in ("/v2beta/results/", "/v2beta/stable-image/upscale/creative/result/"):
        r = poll(client, a, job_id, path=path)
        assert r.status_code == 404 and r.json()["name"] == "generation_not_found", r.text
        assert poll(client, b, job_id, path=path).status_code == 200  # its owner still can
    # Naming B in the Organization header does not help either.
    r = client.get(
        f"/v2beta/results/{job_id}", headers={"authorization": f"Bearer {a.key}", "organization": b.org_id}
    )
    assert r.status_code == 403 and r.json()["name"] == "permission_denied"


def test_another_organizations_balance_and_account_are_refused(world):
    client, _config, _certs, a, b, _job = world
    for flavor in ("v1", "v1beta", "v1alpha"):
        r = client.get(f"/{flavor}/user/balance", headers={**a.headers, "Organization": b.org_id})
        v1_error(r, 403, "permission_denied")
    account = client.get("/v1/user/account", headers={**a.headers, "Organization": b.org_id}).json()
    assert [o["id"] for o in account["organizations"]] == [a.org_id]
    # Work charged to B with A's key is refused before anything is reserved.
    before = balance(client, b)
    r = client.post(
        "/v1/generation/stable-diffusion-v1-5/text-to-image",
        headers={**a.headers, "Organization": b.org_id},
        json={"text_prompts": [{"text": "x"}], "height": 64, "width": 64, "steps": 1},
    )
    v1_error(r, 403, "permission_denied")
    r = post(client, "generate/core", a, {"prompt": "x"}, organization=b.org_id)
    assert r.status_code == 403 and r.json()["name"] == "permission_denied"
    assert balance(client, b) == before


def _admin_operations(client) -> list[tuple[str, str]]:
    doc = client.get("/openapi.json").json()
    return [
        (method, path)
        for path, item in doc["paths"].items()
        if path.startswith("/admin/v1/")
        for method in item
        if method in ("get", "post", "patch", "put", "delete")
    ]


def test_no_admin_operation_is_open_to_an_ordinary_key(world, api_settings):
    from stableserve.accounts import keys, orgs
    from stableserve.db.session import session_factory

    client, _config, _certs, a, b, _job = world
    with session_factory(api_settings).begin() as s:
        org = orgs.get_org(s, b.org_id)
        b_key = keys.list_keys(s, org)[0].id
        b_owner = keys.org_owner(s, org).id
    values = {"org_id": b.org_id, "user_id": b_owner, "key_id": b_key, "plan_id": "free"}
    operations = _admin_operations(client)
    assert len(operations) >= 20
    bodies = {"post": {"amount": 1000, "is_admin": True}, "patch": {"plan_id": "enterprise"}}
    for method, path in operations:
        url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        kwargs = {"json": bodies[method]} if method in bodies else {}
        v1_error(client.request(method.upper(), url, headers=a.headers, **kwargs), 403, "permission_denied")
        v1_error(client.request(method.upper(), url, **kwargs), 401, "unauthorized")
    # Nothing of B's changed: its key works, its balance and plan are as they were.
    assert balance(client, b) == pytest.approx(100 - 60)
    with session_factory(api_settings).begin() as s:
        assert orgs.get_org(s, b.org_id).plan_id is None
        assert [k.revoked_at for k in keys.list_keys(s, orgs.get_org(s, b.org_id))] == [None]


def test_grpc_dashboard_shows_only_the_keys_organizations(world):
    _client, config, certs, a, b, _job = world
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes()),
        grpc.access_token_call_credentials(a.key),
    )
    with grpc.secure_channel(f"localhost:{config.port}", creds) as ch:
        dash = dashboard_pb2_grpc.DashboardServiceStub(ch)
        with pytest.raises(grpc.RpcError) as exc:
            dash.GetOrganization(dpb.GetOrganizationRequest(id=b.org_id))
        me = dash.GetMe(dpb.EmptyRequest())
        own = dash.GetOrganization(dpb.GetOrganizationRequest(id=a.org_id))
    assert exc.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)
    assert [m.organization.id for m in me.organizations] == [a.org_id]
    assert own.id == a.org_id and own.payment_info.balance == pytest.approx(100)
