"""Admission control (issue 8): with ``jobs.max_queue`` jobs queued or running, new work on
every protocol is refused with 503 and ``Retry-After`` (gRPC: RESOURCE_EXHAUSTED), uncharged;
once the queue drains the same requests run."""

from __future__ import annotations

from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.api.conftest import account_factory
from tests.api.v2 import NONE

MAX_QUEUE = 2
V1 = "/v1/generation/stable-diffusion-v1-5/text-to-image"
V1_BODY = {"text_prompts": [{"text": "a house"}], "width": 128, "height": 128, "steps": 10}


@pytest.fixture(scope="module")
def small_queue(api_settings):
    """The app on the small v2 registry with room for ``MAX_QUEUE`` active jobs."""
    from stableserve.api.app import build_app
    from tests.api.v2 import small_v2_registry

    settings = api_settings.model_copy(
        update={"jobs": api_settings.jobs.model_copy(update={"max_queue": MAX_QUEUE})}
    )
    with TestClient(build_app(settings, registry=small_v2_registry()), raise_server_exceptions=False) as c:
        yield c


def _fill_queue(client, org_id: str) -> list[str]:
    """``MAX_QUEUE`` job rows that stay ``running`` (no executor knows them)."""
    from stableserve.db.models import Job

    sessions = client.app.state.stableserve.sessions
    with sessions.begin() as s:
        jobs = [
            Job(
                org_id=org_id,
                engine_id="stable-diffusion-v1-5",
                task="text_to_image",
                state="running",
                request_json="{}",
                price=Decimal(0),
            )
            for _ in range(MAX_QUEUE)
        ]
        s.add_all(jobs)
        s.flush()
        return [job.id for job in jobs]


def _finish(client, job_ids: list[str]) -> None:
    from stableserve.db.models import Job

    with client.app.state.stableserve.sessions.begin() as s:
        s.execute(update(Job).where(Job.id.in_(job_ids)).values(state="failed"))


def test_a_full_queue_is_503_with_retry_after_on_every_protocol(small_queue, api_settings):
    client = small_queue
    account = account_factory(api_settings)(100)
    held = _fill_queue(client, account.org_id)
    try:
        r = client.post(V1, headers=account.headers, json=V1_BODY)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["name"] == "overloaded"
        r = client.post(
            "/v2beta/stable-image/generate/core",
            headers={**account.headers, "accept": "image/*"},
            data={"prompt": "a house"},
            files=NONE,
        )
        assert r.status_code == 503 and r.headers["retry-after"] == "5" and r.json()["errors"]
        r = client.post("/v1/images/generations", headers=account.headers, json={"prompt": "a house"})
        assert r.status_code == 503 and r.headers["retry-after"] == "5" and r.json()["error"]["message"]
        assert client.get("/v1/user/balance", headers=account.headers).json()["credits"] == 100
    finally:
        _finish(client, held)
    r = client.post(V1, headers=account.headers, json=V1_BODY)
    assert r.status_code == 200, r.text


def test_grpc_maps_overloaded_to_resource_exhausted():
    import grpc

    from stableserve.api.grpc.service import status_for
    from stableserve.errors import Overloaded

    assert status_for(Overloaded("busy")) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
