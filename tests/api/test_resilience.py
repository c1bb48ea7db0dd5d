"""A worker crash fails the job with its credits released and the server keeps serving; a client
that goes away cancels its job and gets its credits back."""

from __future__ import annotations

import os
import signal
import threading
import time

from sqlalchemy import select

ENGINE = "stable-diffusion-xl-beta-v2-2-2"
LONG = {"text_prompts": [{"text": "a long job"}], "width": 128, "height": 128, "steps": 150, "seed": 1}
SHORT = {**LONG, "steps": 10}


def _running_job(client, org_id: str, timeout: float = 60) -> str:
    from stableserve.db.models import Job

    state = client.app.state.stableserve
    deadline = time.time() + timeout
    while time.time() < deadline:
        with state.sessions() as s:
            job_id = s.scalar(select(Job.id).where(Job.org_id == org_id, Job.state == "running"))
        if job_id and state.jobs.executor.pid_of(job_id):
            return job_id
        time.sleep(0.05)
    raise AssertionError("no running job")


def _long_request_in_background(client, account, act) -> tuple[float, object]:
    """Start a long text-to-image in a thread, call ``act(job_id)`` once it runs; returns
    (balance before, response)."""
    before = client.get("/v1/user/balance", headers=account.headers).json()["credits"]
    result = {}

    def call():
        result["resp"] = client.post(
            f"/v1/generation/{ENGINE}/text-to-image", json=LONG, headers=account.headers
        )

    t = threading.Thread(target=call)
    t.start()
    act(_running_job(client, account.org_id))
    t.join(timeout=120)
    return before, result["resp"]


def test_worker_crash_fails_the_job_releases_credits_and_serving_goes_on(client, account):
    executor = client.app.state.stableserve.jobs.executor
    before, resp = _long_request_in_background(
        client, account, lambda job_id: os.kill(executor.pid_of(job_id), signal.SIGKILL)
    )
    assert resp.status_code == 500, resp.text
    assert resp.json()["name"] == "server_error"
    assert client.get("/v1/user/balance", headers=account.headers).json()["credits"] == before
    again = client.post(f"/v1/generation/{ENGINE}/text-to-image", json=SHORT, headers=account.headers)
    assert again.status_code == 200, again.text


def test_cancelled_job_releases_credits(client, account):
    """The disconnect watcher's path: cancelling a running job ends it and refunds it."""
    jobs = client.app.state.stableserve.jobs
    cancelled = []
    before, resp = _long_request_in_background(
        client, account, lambda job_id: cancelled.append(job_id) or jobs.cancel(job_id)
    )
    assert resp.status_code == 400 and resp.json()["name"] == "cancelled"
    assert client.get("/v1/user/balance", headers=account.headers).json()["credits"] == before
    assert jobs.get(cancelled[0]).state == "cancelled"
