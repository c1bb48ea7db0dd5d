"""stableserve's v1 extensions through the real app (``api.rest_v1.jobs``): ``Prefer:
respond-async``, polling with state and progress, cancel, and the price quote; credits are
charged only for a job that succeeds. SQLite and PostgreSQL, real worker processes."""

from __future__ import annotations

import base64
import io
import time

import pytest
from PIL import Image

from tests.api.test_rest_v1 import ENGINE, T2I, assert_v1_error, balance

ASYNC = {"Prefer": "respond-async"}
SLOW = {**T2I, "width": 512, "height": 512, "steps": 50}  # seconds on a CPU: time to cancel it


def submit(client, account, body: dict, flavor: str = "v1") -> dict:
    resp = client.post(
        f"/{flavor}/generation/{ENGINE}/text-to-image", json=body, headers={**account.headers, **ASYNC}
    )
    assert resp.status_code == 202, resp.text
    assert resp.headers["preference-applied"] == "respond-async"
    accepted = resp.json()
    assert set(accepted) == {"id", "status", "credits"} and accepted["status"] == "in-progress"
    assert resp.headers["location"] == f"/{flavor}/generation/results/{accepted['id']}"
    return accepted


def poll(client, account, job_id: str, headers: dict | None = None, timeout: float = 120) -> tuple:
    """Poll until the job is done: ``(final response, [202 bodies seen])``."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = client.get(f"/v1/generation/results/{job_id}", headers={**account.headers, **(headers or {})})
        if resp.status_code != 202:
            return resp, seen
        seen.append(resp.json())
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def test_async_text_to_image_is_polled_to_the_synchronous_answer(client, account):
    before = balance(client, account)
    accepted = submit(client, account, T2I)
    resp, seen = poll(client, account, accepted["id"])
    assert resp.status_code == 200, resp.text
    (artifact,) = resp.json()["artifacts"]
    assert artifact["finishReason"] == "SUCCESS" and artifact["seed"] == 42
    assert Image.open(io.BytesIO(base64.b64decode(artifact["base64"]))).size == (128, 128)
    assert balance(client, account) == pytest.approx(before - accepted["credits"])
    for body in seen:
        assert set(body) == {"id", "status", "state", "progress"}
        assert body["status"] == "in-progress" and body["state"] in ("queued", "running")
        assert body["progress"] is None or 0 <= body["progress"] <= 1
    progress = [b["progress"] for b in seen if b["progress"] is not None]
    assert progress == sorted(progress)
    again = client.get(
        f"/v1/generation/results/{accepted['id']}", headers={**account.headers, "Accept": "image/png"}
    )
    assert again.status_code == 200 and again.headers["content-type"] == "image/png"
    assert again.content.startswith(b"\x89PNG")
    assert balance(client, account) == pytest.approx(before - accepted["credits"])  # polls are free


def test_the_synchronous_charge_equals_the_quote(client, account):
    quote = client.post(f"/v1beta/generation/{ENGINE}/price", json=T2I, headers=account.headers)
    assert quote.status_code == 200 and set(quote.json()) == {"credits"}
    before = balance(client, account)
    assert balance(client, account) == before  # a quote charges nothing
    resp = client.post(f"/v1/generation/{ENGINE}/text-to-image", json=T2I, headers=account.headers)
    assert resp.status_code == 200
    assert balance(client, account) == pytest.approx(before - quote.json()["credits"])
    bigger = client.post(
        f"/v1/generation/{ENGINE}/price", json={**T2I, "samples": 3}, headers=account.headers
    )
    assert bigger.json()["credits"] == pytest.approx(3 * quote.json()["credits"])
    assert_v1_error(
        client.post("/v1/generation/no-such-engine/price", json=T2I, headers=account.headers),
        404,
        "not_found",
    )
    assert_v1_error(
        client.post(f"/v1/generation/{ENGINE}/price", json={**T2I, "width": 100}, headers=account.headers),
        400,
        "invalid_height_or_width",  # 100 is not a multiple of 64
    )
    assert client.post(f"/v1/generation/{ENGINE}/price", json=T2I).status_code == 401


def test_cancel_stops_the_job_and_charges_nothing(client, account):
    before = balance(client, account)
    accepted = submit(client, account, SLOW, flavor="v1beta")
    job_id = accepted["id"]
    deadline = time.monotonic() + 60
    while (
        client.get(f"/v1/generation/results/{job_id}", headers=account.headers).json().get("state")
        != "running"
    ):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    resp = client.delete(f"/v1/generation/results/{job_id}", headers=account.headers)
    assert resp.status_code == 202 and resp.json() == {"id": job_id, "status": "cancelling"}
    final, _ = poll(client, account, job_id)
    assert_v1_error(final, 400, "cancelled")
    assert balance(client, account) == pytest.approx(before)
    assert_v1_error(
        client.delete(f"/v1/generation/results/{job_id}", headers=account.headers), 409, "job_finished"
    )


def test_another_organization_sees_nothing(client, account, make_account):
    accepted = submit(client, account, T2I)
    other = make_account(10)
    path = f"/v1/generation/results/{accepted['id']}"
    assert_v1_error(client.get(path, headers=other.headers), 404, "not_found")
    assert_v1_error(client.delete(path, headers=other.headers), 404, "not_found")
    assert_v1_error(
        client.get("/v1/generation/results/not-a-job", headers=account.headers), 400, "bad_request"
    )
    assert_v1_error(
        client.get("/v1/generation/results/" + "0" * 64, headers=account.headers), 404, "not_found"
    )
    assert client.get(path).status_code == 401
    resp, _ = poll(client, account, accepted["id"])
    assert resp.status_code == 200


def test_an_async_failure_is_free_and_answers_its_error(client, make_account):
    poor = make_account(0.0001)
    resp = client.post(f"/v1/generation/{ENGINE}/text-to-image", json=T2I, headers={**poor.headers, **ASYNC})
    assert_v1_error(resp, 402, "insufficient_credits")  # refused before any job exists


def test_v1alpha_ignores_the_preference(client, account):
    resp = client.post(
        f"/v1alpha/generation/{ENGINE}/text-to-image", json=T2I, headers={**account.headers, **ASYNC}
    )
    assert resp.status_code == 200 and isinstance(resp.json(), list)
