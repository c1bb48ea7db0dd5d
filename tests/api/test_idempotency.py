"""Idempotency-Key through the real app on every HTTP protocol (REST v1, v2beta sync and async,
OpenAI): a retry replays the stored response and is charged once; another body is 422; a
duplicate of a running request is 409; a cancelled first attempt, an expired key and another
API key's use of the same key all run again (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from tests.api.conftest import png_bytes
from tests.api.test_resilience import _running_job
from tests.api.v2 import assert_v2_error, balance, poll, post

ENGINE = "stable-diffusion-xl-beta-v2-2-2"
T2I = {"text_prompts": [{"text": "a lighthouse"}], "width": 128, "height": 128, "steps": 10, "seed": 42}
LONG = {**T2I, "steps": 150}
GEN = {"prompt": "a lighthouse", "model": "stable-diffusion-v1-5", "size": "64x64", "steps": 2, "seed": 9}


def _jobs(settings, org_id: str) -> int:
    from stableserve.db.models import Job
    from stableserve.db.session import session_factory

    with session_factory(settings)() as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.org_id == org_id))


def _keyed(account, key: str, **extra) -> dict:
    return {**account.headers, "Idempotency-Key": key, **extra}


def _assert_replay(first, again) -> None:
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert len(again.headers["x-request-id"]) == 32
    assert again.headers["x-request-id"] != first.headers["x-request-id"]


def _assert_v1_error(resp, status: int, name: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"id", "name", "message"} and body["name"] == name and body["message"]
    assert resp.headers["x-request-id"] == body["id"]


def test_v1_retry_replays_and_is_charged_once(v2, account, api_settings):
    url = f"/v1/generation/{ENGINE}/text-to-image"
    first = v2.post(url, json=T2I, headers=_keyed(account, "v1-retry", Accept="image/png"))
    charged = balance(v2, account)
    assert charged < 100
    again = v2.post(url, json=T2I, headers=_keyed(account, "v1-retry", Accept="image/png"))
    _assert_replay(first, again)
    assert again.headers["seed"] == "42" and again.headers["finish-reason"] == "SUCCESS"
    assert "x-ratelimit-remaining" in again.headers  # the replay was authenticated and counted
    # The same JSON with its keys in another order and other spacing is the same request.
    reordered = (
        b'{"seed": 42, "steps": 10, "height": 128, "width": 128, "text_prompts": [{"text": "a lighthouse"}]}'
    )
    same = v2.post(
        url,
        content=reordered,
        headers=_keyed(account, "v1-retry", Accept="image/png", **{"Content-Type": "application/json"}),
    )
    _assert_replay(first, same)
    assert balance(v2, account) == charged and _jobs(api_settings, account.org_id) == 1

    other_body = v2.post(
        url, json={**T2I, "seed": 43}, headers=_keyed(account, "v1-retry", Accept="image/png")
    )
    _assert_v1_error(other_body, 422, "idempotency_key_mismatch")
    other_accept = v2.post(url, json=T2I, headers=_keyed(account, "v1-retry"))  # JSON instead of PNG
    _assert_v1_error(other_accept, 422, "idempotency_key_mismatch")
    assert balance(v2, account) == charged and _jobs(api_settings, account.org_id) == 1


def test_v2beta_multipart_retry_with_a_new_boundary_replays(v2, account, api_settings):
    data = {"prompt": "a lighthouse", "seed": "42"}
    first = post(v2, "generate/core", account, data, **{"Idempotency-Key": "core-1"})
    again = post(v2, "generate/core", account, data, **{"Idempotency-Key": "core-1"})
    assert first.request.headers["content-type"] != again.request.headers["content-type"]  # new boundary
    _assert_replay(first, again)
    assert again.headers["seed"] == "42" and again.headers["finish-reason"] == "SUCCESS"
    assert balance(v2, account) == pytest.approx(100 - 3) and _jobs(api_settings, account.org_id) == 1

    changed = post(v2, "generate/core", account, {**data, "seed": "43"}, **{"Idempotency-Key": "core-1"})
    assert_v2_error(changed, 422, "idempotency_key_mismatch")
    image = {"image": ("in.png", png_bytes(64, 64), "image/png")}
    changed_file = post(v2, "generate/core", account, data, files=image, **{"Idempotency-Key": "core-1"})
    assert_v2_error(changed_file, 422, "idempotency_key_mismatch")
    assert balance(v2, account) == pytest.approx(100 - 3)


def test_v2beta_async_retry_returns_the_same_id(v2, account, api_settings):
    files = {"image": ("in.png", png_bytes(64, 64), "image/png")}
    data = {"prompt": "a castle", "seed": "9"}
    first = post(v2, "upscale/creative", account, data, files=files, **{"Idempotency-Key": "creative-1"})
    again = post(v2, "upscale/creative", account, data, files=files, **{"Idempotency-Key": "creative-1"})
    _assert_replay(first, again)
    job_id = first.json()["id"]
    assert again.json() == {"id": job_id}
    assert poll(v2, account, job_id).status_code == 200
    late = post(v2, "upscale/creative", account, data, files=files, **{"Idempotency-Key": "creative-1"})
    assert late.json() == {"id": job_id} and late.headers["idempotent-replayed"] == "true"
    assert balance(v2, account) == pytest.approx(100 - 60) and _jobs(api_settings, account.org_id) == 1


def test_openai_retry_replays_and_is_charged_once(v2, account, api_settings):
    body = {**GEN, "response_format": "b64_json"}
    first = v2.post("/v1/images/generations", json=body, headers=_keyed(account, "oa-1"))
    again = v2.post("/v1/images/generations", json=body, headers=_keyed(account, "oa-1"))
    _assert_replay(first, again)
    assert balance(v2, account) == pytest.approx(100 - 0.2) and _jobs(api_settings, account.org_id) == 1
    changed = v2.post("/v1/images/generations", json={**body, "seed": 10}, headers=_keyed(account, "oa-1"))
    assert changed.status_code == 422
    err = changed.json()["error"]
    assert err["code"] == "idempotency_key_mismatch" and err["type"] == "invalid_request_error"


def test_bad_keys_are_400_in_each_protocol(v2, account):
    for bad in ("", "k" * 256, "caf\u00e9".encode("latin-1"), b"a\tb"):
        headers = {**account.headers, "Idempotency-Key": bad}
        r = v2.post(f"/v1/generation/{ENGINE}/text-to-image", json=T2I, headers=headers)
        _assert_v1_error(r, 400, "bad_request")
        assert "Idempotency-Key" in r.json()["message"]
        assert_v2_error(
            post(v2, "generate/core", account, {"prompt": "a"}, **{"Idempotency-Key": bad}),
            400,
            "bad_request",
            "Idempotency-Key",
        )
        r = v2.post("/v1/images/generations", json=GEN, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["param"] == "Idempotency-Key"
    twice = [("Authorization", f"Bearer {account.key}"), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    _assert_v1_error(
        v2.post(f"/v1/generation/{ENGINE}/text-to-image", json=T2I, headers=twice), 400, "bad_request"
    )
    assert balance(v2, account) == 100


def test_a_key_is_scoped_to_its_api_key(v2, account, make_account, api_settings):
    other = make_account(100)
    url = f"/v1/generation/{ENGINE}/text-to-image"
    mine = v2.post(url, json=T2I, headers=_keyed(account, "shared"))
    theirs = v2.post(url, json={**T2I, "seed": 7}, headers=_keyed(other, "shared"))
    assert mine.status_code == theirs.status_code == 200
    assert "idempotent-replayed" not in theirs.headers
    assert balance(v2, other) < 100 and _jobs(api_settings, other.org_id) == 1
    # A wrong key with someone's idempotency key gets nothing of theirs.
    stranger = v2.post(
        url, json=T2I, headers={"Authorization": "Bearer sk-nope123456", "Idempotency-Key": "shared"}
    )
    _assert_v1_error(stranger, 401, "unauthorized")


def test_an_expired_key_runs_again(v2, account, api_settings):
    from stableserve.db.base import utcnow
    from stableserve.db.models import IdempotencyKey
    from stableserve.db.session import session_factory

    url = f"/v1/generation/{ENGINE}/text-to-image"
    first = v2.post(url, json=T2I, headers=_keyed(account, "expiring"))
    charged = 100 - balance(v2, account)
    with session_factory(api_settings).begin() as s:  # 24 h later
        s.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.idempotency_key == "expiring")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    again = v2.post(url, json=T2I, headers=_keyed(account, "expiring"))
    assert first.status_code == again.status_code == 200
    assert "idempotent-replayed" not in again.headers
    assert (
        balance(v2, account) == pytest.approx(100 - 2 * charged) and _jobs(api_settings, account.org_id) == 2
    )


def test_duplicate_while_running_is_409_and_a_cancelled_first_attempt_is_not_stored(v2, account):
    url = f"/v1/generation/{ENGINE}/text-to-image"
    jobs = v2.app.state.stableserve.jobs
    result = {}

    def first():
        result["resp"] = v2.post(url, json=LONG, headers=_keyed(account, "slow"))

    thread = threading.Thread(target=first)
    thread.start()
    job_id = _running_job(v2, account.org_id)
    _assert_v1_error(v2.post(url, json=LONG, headers=_keyed(account, "slow")), 409, "idempotency_key_in_use")
    _assert_v1_error(v2.post(url, json=T2I, headers=_keyed(account, "slow")), 422, "idempotency_key_mismatch")
    jobs.cancel(job_id)
    thread.join(timeout=120)
    _assert_v1_error(result["resp"], 400, "cancelled")
    before = balance(v2, account)
    # The cancelled attempt charged nothing and left the key free: a new request may use it.
    retry = v2.post(url, json=T2I, headers=_keyed(account, "slow"))
    assert retry.status_code == 200 and "idempotent-replayed" not in retry.headers
    assert balance(v2, account) < before
