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
    # the worker loaded the engine for this job: its load time is recorded (no GPU here)
    line = next(
        x for x in text.splitlines() if x.startswith('stableserve_model_load_seconds_count{engine="stable-')
    )
    assert float(line.split()[-1]) >= 1
    assert "stableserve_gpu_memory_bytes{" not in text


def test_worker_stats_give_load_times_and_gpu_memory(client):
    from stableserve.jobs.events import WorkerStats
    from stableserve.observability.metrics import Metrics

    metrics = Metrics(client.app.state.stableserve.sessions)
    metrics.observe_worker(WorkerStats("j", (("sd-x", 2.5),), "cuda:0", 3 * 2**30, 4 * 2**30))
    text = metrics.render().decode()
    assert 'stableserve_model_load_seconds_sum{engine="sd-x"} 2.5' in text
    assert 'stableserve_gpu_memory_bytes{device="cuda:0",kind="allocated"} 3.221225472e+09' in text
    assert 'stableserve_gpu_memory_bytes{device="cuda:0",kind="reserved"} 4.294967296e+09' in text
