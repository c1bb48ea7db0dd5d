"""``/health``, ``/ready`` and Prometheus ``/metrics`` on the real app."""

from __future__ import annotations

import pytest


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok", "engine": "ok"}


def test_metrics_count_requests_by_route_and_generations_by_engine(client, account):
    r = client.post(
        "/v1/generation/stable-diffusion-xl-beta-v2-2-2/text-to-image",
        headers=account.headers,
        json={"text_prompts": [{"text": "a cat"}], "height": 128, "width": 128, "steps": 10},
    )
    assert r.status_code == 200, r.text
    text = client.get("/metrics").text
    assert (
        'stableserve_http_requests_total{method="POST",route="/v1/generation/{engine_id}/text-to-image",'
        'status="200"}' in text
    )
    assert 'stableserve_generation_seconds_count{engine="stable-diffusion-xl-beta-v2-2-2",' in text
    line = next(x for x in text.splitlines() if x.startswith("stableserve_credits_charged_total{"))
    assert float(line.split()[-1]) == pytest.approx(0.9)  # SDXL beta: 0.9 credits up to 30 steps
    assert 'stableserve_jobs{state="succeeded"}' in text and "stableserve_queue_depth" in text
