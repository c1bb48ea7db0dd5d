"""The admin API (``/admin/v1``) on SQLite and PostgreSQL: admin keys only, each resource,
plans with their monthly grants (once per organization and month) and per-plan rate limits,
usage reports in JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import secrets
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from stableserve.db.session import session_factory
from tests.api.conftest import Account

A = "/admin/v1"


def make_admin(settings) -> Account:
    """A fresh organization with an admin key."""
    from stableserve.accounts import keys, orgs

    name = f"admin-{secrets.token_hex(4)}"
    with session_factory(settings).begin() as s:
        org = orgs.create_org(s, name)
        _row, key = keys.create_key(s, org, keys.server_secret(settings), is_admin=True)
    return Account(org_id=org.id, org_name=name, key=key)


@pytest.fixture
def admin(api_settings) -> Account:
    return make_admin(api_settings)


def v1_error(r, status: int, name: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"id", "name", "message"} and body["name"] == name, body
    return body


def test_admin_routes_need_an_admin_key(client, admin, account):
    v1_error(client.get(f"{A}/organizations"), 401, "unauthorized")
    v1_error(
        client.get(f"{A}/organizations", headers={"Authorization": "Bearer sk-nope"}), 401, "unauthorized"
    )
    body = v1_error(client.get(f"{A}/organizations", headers=account.headers), 403, "permission_denied")
    assert "admin" in body["message"]
    v1_error(client.post(f"{A}/plans", headers=account.headers, json={}), 403, "permission_denied")
    ok = client.get(f"{A}/organizations", headers=admin.headers)
    assert ok.status_code == 200 and {o["id"] for o in ok.json()} >= {admin.org_id, account.org_id}
    assert ok.headers["X-RateLimit-Limit"] == "150"  # admin requests count like any other
    # An admin key is still an ordinary key of its own organization elsewhere.
    assert client.get("/v1/user/balance", headers=admin.headers).status_code == 200


def test_organizations(client, admin):
    name = f"acme-{secrets.token_hex(3)}"
    email = f"{name}@example.com"
    body = {"name": name, "owner_email": email, "credits": 12.5, "plan_id": "free", "description": "d"}
    r = client.post(f"{A}/organizations", headers=admin.headers, json=body)
    assert r.status_code == 201, r.text
    org = r.json()
    assert org["name"] == name and org["plan_id"] == "free" and org["balance"] == 12.5
    assert [(m["email"], m["role"]) for m in org["members"]] == [(email, "OWNER")]
    v1_error(client.post(f"{A}/organizations", headers=admin.headers, json=body), 400, "bad_request")

    got = client.get(f"{A}/organizations/{org['id']}", headers=admin.headers).json()
    assert got == org
    assert client.get(f"{A}/organizations/{name}", headers=admin.headers).json()["id"] == org["id"]
    listed = client.get(f"{A}/organizations", headers=admin.headers).json()
    assert {"id": org["id"], "name": name, "plan_id": "free"}.items() <= next(
        o for o in listed if o["id"] == org["id"]
    ).items()

    r = client.patch(f"{A}/organizations/{org['id']}", headers=admin.headers, json={"plan_id": "pro"})
    assert r.status_code == 200 and r.json()["plan_id"] == "pro" and r.json()["description"] == "d"
    r = client.patch(f"{A}/organizations/{org['id']}", headers=admin.headers, json={"description": "new"})
    assert r.json()["plan_id"] == "pro" and r.json()["description"] == "new"
    r = client.patch(f"{A}/organizations/{org['id']}", headers=admin.headers, json={"plan_id": None})
    assert r.status_code == 200 and r.json()["plan_id"] is None

    for bad in (
        {"plan_id": "no-such-plan"},
        {"plan_id": "Bad Id"},
        {"unknown": 1},
        {"description": "a\x00b"},
    ):
        r = client.patch(f"{A}/organizations/{org['id']}", headers=admin.headers, json=bad)
        assert r.status_code in (400, 404), (bad, r.text)
    v1_error(
        client.get(f"{A}/organizations/org-000000000000000000000000", headers=admin.headers), 404, "not_found"
    )
    v1_error(client.patch(f"{A}/organizations/nope", headers=admin.headers, json={}), 404, "not_found")
    for bad in ({"name": ""}, {"name": "x" * 101}, {"name": "a\nb"}, {"name": "n", "credits": -1}, {}):
        v1_error(client.post(f"{A}/organizations", headers=admin.headers, json=bad), 400, "bad_request")
    r = client.post(f"{A}/organizations", headers=admin.headers, json={"name": name + "x", "plan_id": "nope"})
    v1_error(r, 404, "not_found")
    assert (
        client.get(f"{A}/organizations/{name}x", headers=admin.headers).status_code == 404
    )  # nothing written


def test_users_and_members(client, admin, make_account):
    org = make_account(0)
    email = f"u-{secrets.token_hex(4)}@example.com"
    r = client.post(f"{A}/users", headers=admin.headers, json={"email": email})
    assert r.status_code == 201, r.text
    user = r.json()
    assert user["email"] == email and user["id"].startswith("user-")
    v1_error(client.post(f"{A}/users", headers=admin.headers, json={"email": email}), 400, "bad_request")
    v1_error(
        client.post(f"{A}/users", headers=admin.headers, json={"email": "not-an-email"}), 400, "bad_request"
    )
    assert any(u["id"] == user["id"] for u in client.get(f"{A}/users", headers=admin.headers).json())

    members = f"{A}/organizations/{org.org_id}/members"
    r = client.post(members, headers=admin.headers, json={"user_id": email, "role": "MEMBER"})
    assert r.status_code == 201 and r.json() == {
        "user_id": user["id"],
        "email": email,
        "role": "MEMBER",
        "is_default": True,
    }
    r = client.post(members, headers=admin.headers, json={"user_id": user["id"], "role": "ACCOUNTANT"})
    assert r.json()["role"] == "ACCOUNTANT"
    v1_error(
        client.post(members, headers=admin.headers, json={"user_id": email, "role": "GOD"}),
        400,
        "bad_request",
    )
    v1_error(client.post(members, headers=admin.headers, json={"user_id": "user-nope"}), 404, "not_found")
    roles = {m["email"]: m["role"] for m in client.get(members, headers=admin.headers).json()}
    assert roles[email] == "ACCOUNTANT" and list(roles.values()).count("OWNER") == 1
    detail = client.get(f"{A}/users/{email}", headers=admin.headers).json()
    assert detail["organizations"] == [
        {"org_id": org.org_id, "org_name": org.org_name, "role": "ACCOUNTANT", "is_default": True}
    ]

    # A member's key of the organization is revoked when the member is removed.
    r = client.post(f"{A}/organizations/{org.org_id}/keys", headers=admin.headers, json={"user_id": email})
    assert r.status_code == 201 and r.json()["user_id"] == user["id"]
    member_key = {"Authorization": f"Bearer {r.json()['key']}"}
    assert client.get("/v1/user/balance", headers=member_key).status_code == 200
    assert client.delete(f"{members}/{user['id']}", headers=admin.headers).status_code == 204
    v1_error(client.get("/v1/user/balance", headers=member_key), 401, "unauthorized")
    v1_error(client.delete(f"{members}/{user['id']}", headers=admin.headers), 404, "not_found")
    owner = next(m for m in client.get(members, headers=admin.headers).json() if m["role"] == "OWNER")
    v1_error(client.delete(f"{members}/{owner['user_id']}", headers=admin.headers), 400, "bad_request")
    v1_error(client.get(f"{A}/users/user-nope", headers=admin.headers), 404, "not_found")


def test_api_keys(client, admin, make_account):
    org = make_account(5)
    keys = f"{A}/organizations/{org.org_id}/keys"
    r = client.post(keys, headers=admin.headers)  # no body: a key for the owner
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["key"].startswith("sk-") and made["prefix"] == made["key"][:10] + "..."
    assert made["is_admin"] is False and made["revoked_at"] is None
    new_key = {"Authorization": f"Bearer {made['key']}"}
    assert client.get("/v1/user/balance", headers=new_key).json() == {"credits": 5}

    listed = client.get(keys, headers=admin.headers).json()
    assert len(listed) == 2 and listed[1]["id"] == made["id"]
    assert all("key" not in k and "secret_hash" not in k for k in listed)
    assert made["key"] not in json.dumps(listed) and listed[1]["last_used_at"] is not None

    r = client.post(keys, headers=admin.headers, json={"is_admin": True})
    assert r.status_code == 201 and r.json()["is_admin"] is True
    second_admin = {"Authorization": f"Bearer {r.json()['key']}"}
    assert client.get(f"{A}/plans", headers=second_admin).status_code == 200

    stranger = client.post(
        f"{A}/users", headers=admin.headers, json={"email": f"s-{secrets.token_hex(3)}@x.io"}
    )
    r = client.post(keys, headers=admin.headers, json={"user_id": stranger.json()["id"]})
    v1_error(r, 400, "bad_request")  # not a member of the organization
    v1_error(client.post(keys, headers=admin.headers, json={"secret": "x"}), 400, "bad_request")

    revoked = client.delete(f"{A}/keys/{made['id']}", headers=admin.headers)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    v1_error(client.get("/v1/user/balance", headers=new_key), 401, "unauthorized")
    again = client.delete(f"{A}/keys/{made['id']}", headers=admin.headers).json()
    assert again["revoked_at"] == revoked.json()["revoked_at"]  # idempotent
    v1_error(client.delete(f"{A}/keys/key-0000000000000000", headers=admin.headers), 404, "not_found")

    # a new secret is never kept for an Idempotency-Key replay: a retry makes another key
    retry = {**admin.headers, "Idempotency-Key": "make-key-1"}
    first, second = client.post(keys, headers=retry), client.post(keys, headers=retry)
    assert first.status_code == second.status_code == 201
    assert first.json()["key"] != second.json()["key"] and "idempotent-replayed" not in second.headers


def test_an_admin_key_cannot_lock_itself_out(client, admin):
    own = client.get(f"{A}/organizations/{admin.org_id}/keys", headers=admin.headers).json()
    assert len(own) == 1 and own[0]["is_admin"] is True
    v1_error(client.delete(f"{A}/keys/{own[0]['id']}", headers=admin.headers), 400, "bad_request")
    members = client.get(f"{A}/organizations/{admin.org_id}/members", headers=admin.headers).json()
    second = client.post(
        f"{A}/users", headers=admin.headers, json={"email": f"o-{secrets.token_hex(3)}@x.io"}
    )
    client.post(
        f"{A}/organizations/{admin.org_id}/members",
        headers=admin.headers,
        json={"user_id": second.json()["id"], "role": "OWNER"},
    )  # so the last-owner rule is not what refuses the next call
    url = f"{A}/organizations/{admin.org_id}/members/{members[0]['user_id']}"
    v1_error(client.delete(url, headers=admin.headers), 400, "bad_request")
    assert client.get(f"{A}/plans", headers=admin.headers).status_code == 200  # still works
    v1_error(client.get(f"{A}/organizations/nope/keys", headers=admin.headers), 404, "not_found")


def test_credit_grants_and_balance(client, admin, make_account):
    org = make_account(1)
    url = f"{A}/organizations/{org.org_id}/credits"
    r = client.post(url, headers=admin.headers, json={"amount": 2.25, "note": "welcome"})
    assert r.status_code == 201, r.text
    assert r.json()["amount"] == 2.25 and r.json()["balance"] == 3.25 and r.json()["note"] == "welcome"
    for bad in ({"amount": 0}, {"amount": -1}, {}, {"amount": "abc"}, {"amount": 1e12}, {"amount": 1e-9}):
        v1_error(client.post(url, headers=admin.headers, json=bad), 400, "bad_request")
    v1_error(
        client.post(f"{A}/organizations/nope/credits", headers=admin.headers, json={"amount": 1}),
        404,
        "not_found",
    )
    bal = client.get(f"{A}/organizations/{org.org_id}/balance", headers=admin.headers).json()
    assert bal == {
        "org_id": org.org_id,
        "balance": 3.25,
        "granted": 3.25,
        "reserved": 0,
        "captured": 0,
        "released": 0,
    }
    assert client.get("/v1/user/balance", headers=org.headers).json() == {"credits": 3.25}


def test_plans(client, admin):
    listed = client.get(f"{A}/plans", headers=admin.headers).json()
    seeded = {p["id"]: p for p in listed}
    assert {"free", "creator", "pro", "enterprise"} <= set(seeded)
    assert seeded["free"]["monthly_credits"] == 25
    assert (
        seeded["free"]["monthly_credits"]
        < seeded["creator"]["monthly_credits"]
        < seeded["pro"]["monthly_credits"]
    )
    assert seeded["pro"]["monthly_credits"] < seeded["enterprise"]["monthly_credits"]

    pid = f"team-{secrets.token_hex(3)}"
    body = {
        "id": pid,
        "name": "Team",
        "monthly_credits": 300,
        "rate_limit_requests": 20,
        "rate_limit_window_s": 5,
    }
    r = client.post(f"{A}/plans", headers=admin.headers, json=body)
    assert r.status_code == 201, r.text
    assert {k: r.json()[k] for k in body} == body and r.json()["description"] == ""
    assert r.json()["weight"] == 1  # plain round robin unless set
    v1_error(client.post(f"{A}/plans", headers=admin.headers, json=body), 400, "bad_request")
    for change in (
        {"id": "Bad Id"},
        {"rate_limit_requests": 0},
        {"rate_limit_window_s": 10**9},
        {"monthly_credits": -1},
        {"weight": 0},
        {"weight": 101},
    ):
        v1_error(
            client.post(f"{A}/plans", headers=admin.headers, json={**body, **change}), 400, "bad_request"
        )

    r = client.patch(
        f"{A}/plans/{pid}", headers=admin.headers, json={"monthly_credits": 400.5, "name": "Team+"}
    )
    assert r.status_code == 200 and r.json()["monthly_credits"] == 400.5 and r.json()["name"] == "Team+"
    assert r.json()["rate_limit_requests"] == 20
    assert client.get(f"{A}/plans/{pid}", headers=admin.headers).json() == r.json()
    r = client.patch(f"{A}/plans/{pid}", headers=admin.headers, json={"weight": 3})
    assert r.status_code == 200 and r.json()["weight"] == 3 and r.json()["name"] == "Team+"
    v1_error(
        client.patch(f"{A}/plans/{pid}", headers=admin.headers, json={"rate_limit_requests": 0}),
        400,
        "bad_request",
    )
    v1_error(client.patch(f"{A}/plans/{pid}", headers=admin.headers, json={"id": "x"}), 400, "bad_request")
    v1_error(client.get(f"{A}/plans/nope", headers=admin.headers), 404, "not_found")
    v1_error(client.patch(f"{A}/plans/nope", headers=admin.headers, json={}), 404, "not_found")


def _plan(settings, monthly, requests=100, window_s=10) -> str:
    from stableserve.accounts import plans

    pid = f"p-{secrets.token_hex(4)}"
    with session_factory(settings).begin() as s:
        plans.create_plan(
            s,
            pid,
            name=pid,
            monthly_credits=monthly,
            rate_limit_requests=requests,
            rate_limit_window_s=window_s,
        )
    return pid


def _balance(settings, org_id) -> Decimal:
    from stableserve.accounts import ledger

    with session_factory(settings).begin() as s:
        return ledger.balance(s, org_id)


def test_monthly_grants_are_applied_once_per_month(client, admin, make_account, api_settings):
    from stableserve.accounts import plans
    from stableserve.db.models import PlanGrant

    org = make_account(0)
    pid = _plan(api_settings, 40)
    r = client.patch(f"{A}/organizations/{org.org_id}", headers=admin.headers, json={"plan_id": pid})
    assert r.status_code == 200

    def apply(now: datetime) -> int:
        with session_factory(api_settings).begin() as s:
            return plans.apply_monthly_grants(s, now)

    assert apply(datetime(2031, 3, 1, 0, 0, tzinfo=UTC)) >= 1
    assert _balance(api_settings, org.org_id) == 40
    assert apply(datetime(2031, 3, 31, 23, 59, tzinfo=UTC)) == 0
    assert _balance(api_settings, org.org_id) == 40  # twice in March: one grant
    apply(datetime(2031, 4, 1, 0, 0, tzinfo=UTC))
    assert _balance(api_settings, org.org_id) == 80  # April: another
    with session_factory(api_settings).begin() as s:
        rows = s.query(PlanGrant).filter_by(org_id=org.org_id).order_by(PlanGrant.period).all()
        assert [(g.period, g.plan_id, g.amount) for g in rows] == [("2031-03", pid, 40), ("2031-04", pid, 40)]

    # The endpoint applies the current month, once.
    r = client.post(f"{A}/plans/apply-grants", headers=admin.headers)
    assert r.status_code == 200 and r.json()["period"] == datetime.now(UTC).strftime("%Y-%m")
    assert _balance(api_settings, org.org_id) == 120
    client.post(f"{A}/plans/apply-grants", headers=admin.headers)
    assert _balance(api_settings, org.org_id) == 120
    # Organizations without a plan, or on a plan with no monthly credits, get nothing.
    plain, zero = make_account(0), make_account(0)
    client.patch(
        f"{A}/organizations/{zero.org_id}", headers=admin.headers, json={"plan_id": _plan(api_settings, 0)}
    )
    client.post(f"{A}/plans/apply-grants", headers=admin.headers)
    assert _balance(api_settings, plain.org_id) == 0 and _balance(api_settings, zero.org_id) == 0


class _IdleJobs:
    """A job client that runs nothing (the app's lifespan only starts and stops it)."""

    async def start(self) -> int:
        return 0

    async def stop(self) -> None:
        return None


def test_the_server_applies_grants_on_schedule_and_stops_cleanly(api_settings, make_account):
    from stableserve.accounts import plans
    from stableserve.api.app import build_app
    from stableserve.settings import PlanSettings

    org = make_account(0)
    with session_factory(api_settings).begin() as s:
        plans.set_org_plan(s, org.org_id, _plan(api_settings, 7))
    settings = api_settings.model_copy(update={"plans": PlanSettings(grant_interval_s=0.2)})

    def grant_threads() -> int:
        return sum(t.name == "stableserve-plan-grants" for t in threading.enumerate())

    before = grant_threads()  # other apps of this module run their own
    with TestClient(build_app(settings, job_client=_IdleJobs())):
        assert grant_threads() == before + 1
        deadline = time.time() + 20
        while _balance(api_settings, org.org_id) == 0 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a few more runs: still one grant
        assert _balance(api_settings, org.org_id) == 7
    assert grant_threads() == before  # stopped with the app


def test_a_plans_rate_limit_applies_to_its_organizations_keys(client, admin, make_account, api_settings):
    limited, other = make_account(1), make_account(1)
    pid = _plan(api_settings, 0, requests=3, window_s=10)
    client.patch(f"{A}/organizations/{limited.org_id}", headers=admin.headers, json={"plan_id": pid})
    for remaining in (2, 1, 0):
        r = client.get("/v1/user/balance", headers=limited.headers)
        assert r.status_code == 200 and r.headers["X-RateLimit-Limit"] == "3"
        assert r.headers["X-RateLimit-Remaining"] == str(remaining)
    body = v1_error(client.get("/v1/user/balance", headers=limited.headers), 429, "rate_limit_exceeded")
    assert "rate limit of 3 requests within a 10 second period" in body["message"]
    r = client.get("/v1/user/balance", headers=other.headers)
    assert r.status_code == 200 and r.headers["X-RateLimit-Limit"] == "150"  # no plan: the default


def _job(session, org_id, engine, state, created, price, images=0):
    from stableserve.accounts import ledger
    from stableserve.db.models import Job

    job = Job(
        org_id=org_id,
        engine_id=engine,
        task="text-to-image",
        state=state,
        request_json="{}",
        price=price,
        created_at=created,
        result_json=json.dumps([{"index": i} for i in range(images)]) if state == "succeeded" else None,
    )
    session.add(job)
    session.flush()
    ledger.reserve(session, org_id, price, job.id)
    if state == "succeeded":
        ledger.capture(session, job.id)
    elif state in ("failed", "cancelled"):
        ledger.release(session, job.id)


def test_usage_report_json_and_csv(client, admin, make_account, api_settings):
    org, other = make_account(100), make_account(100)
    d1, d2 = datetime(2031, 5, 6, 23, 59, tzinfo=UTC), datetime(2031, 5, 7, 0, 1, tzinfo=UTC)
    with session_factory(api_settings).begin() as s:
        _job(s, org.org_id, "sd-a", "succeeded", d1, Decimal("1.5"), images=2)
        _job(s, org.org_id, "sd-a", "succeeded", d1, Decimal("2.25"), images=1)
        _job(s, org.org_id, "sd-a", "failed", d1, Decimal("4"))
        _job(s, org.org_id, "sd-b", "succeeded", d2, Decimal("0.5"), images=4)
        _job(s, org.org_id, "sd-b", "running", d2, Decimal("1"))
        _job(s, other.org_id, "sd-a", "succeeded", d1, Decimal("9"), images=1)

    r = client.get(f"{A}/usage", headers=admin.headers, params={"org_id": org.org_id})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["org_id"] == org.org_id and report["from"] is None and report["to"] is None
    assert report["rows"] == [
        {
            "org_id": org.org_id,
            "engine_id": "sd-a",
            "day": "2031-05-06",
            "jobs": 3,
            "succeeded": 2,
            "failed": 1,
            "cancelled": 0,
            "images": 3,
            "credits": 3.75,
        },
        {
            "org_id": org.org_id,
            "engine_id": "sd-b",
            "day": "2031-05-07",
            "jobs": 2,
            "succeeded": 1,
            "failed": 0,
            "cancelled": 0,
            "images": 4,
            "credits": 0.5,
        },
    ]
    day2 = {"org_id": org.org_id, "from": "2031-05-07", "to": "2031-05-07"}
    assert [
        row["engine_id"]
        for row in client.get(f"{A}/usage", headers=admin.headers, params=day2).json()["rows"]
    ] == ["sd-b"]
    everyone = client.get(
        f"{A}/usage", headers=admin.headers, params={"from": "2031-05-06", "to": "2031-05-06"}
    )
    assert {org.org_id, other.org_id} <= {row["org_id"] for row in everyone.json()["rows"]}

    r = client.get(f"{A}/usage", headers=admin.headers, params={"org_id": org.org_name, "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(r.text)))
    assert lines[0] == [
        "org_id",
        "engine_id",
        "day",
        "jobs",
        "succeeded",
        "failed",
        "cancelled",
        "images",
        "credits",
    ]
    assert lines[1] == [org.org_id, "sd-a", "2031-05-06", "3", "2", "1", "0", "3", "3.750000"]
    assert lines[2][:3] == [org.org_id, "sd-b", "2031-05-07"] and len(lines) == 3

    empty = client.get(
        f"{A}/usage",
        headers=admin.headers,
        params={"org_id": org.org_id, "from": "2030-01-01", "to": "2030-01-31"},
    )
    assert empty.json()["rows"] == []
    for bad in (
        {"from": "2031-05-08", "to": "2031-05-07"},
        {"from": "yesterday"},
        {"format": "xml"},
        {"org_id": "a\x01"},
    ):
        v1_error(client.get(f"{A}/usage", headers=admin.headers, params=bad), 400, "bad_request")
    v1_error(client.get(f"{A}/usage", headers=admin.headers, params={"org_id": "nope"}), 404, "not_found")
    big = client.get(f"{A}/usage", headers=admin.headers, params={"from": "0001-01-01", "to": "9999-12-31"})
    assert big.status_code == 200


def test_openapi_describes_the_admin_api(client):
    doc = client.get("/openapi.json").json()
    ops = {(path, method) for path, item in doc["paths"].items() if path.startswith(A) for method in item}
    assert len(ops) >= 20
    assert ("/admin/v1/usage", "get") in ops and ("/admin/v1/keys/{key_id}", "delete") in ops
    key_schema = doc["components"]["schemas"]["ApiKey"]["properties"]
    assert "secret_hash" not in key_schema and "key" not in key_schema
    for path, method in ops:
        responses = doc["paths"][path][method]["responses"]
        assert {"401", "403", "404"} <= set(responses), (path, method)
