"""OpenAI-compatible model catalog (``GET /v1/models``, ``GET /v1/models/{id}``) through the real
app: shapes, stableserve fields, auth, unknown ids, and stats after a real generation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

ENGINE = "stable-diffusion-xl-beta-v2-2-2"  # its rules allow 128x128: fast on CPU
MODEL_KEYS = {
    "id",
    "object",
    "created",
    "owned_by",
    "provider",
    "type",
    "name",
    "description",
    "best_for",
    "tasks",
    "price",
    "ready",
    "stats",
}
STATS_KEYS = {"jobs", "p50_latency_ms", "p95_latency_ms", "success_rate"}


@pytest.fixture(scope="module")
def oa(api_settings) -> Iterator[TestClient]:
    """The app with the models router mounted under /v1 (by the app itself once it does)."""
    from stableserve.api.app import build_app
    from stableserve.api.openai.models import build_models_router

    app = build_app(api_settings)
    if not any(getattr(r, "path", None) == "/v1/models" for r in app.routes):
        app.include_router(build_models_router(), prefix="/v1")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def check_model(m: dict) -> None:
    assert set(m) == MODEL_KEYS, m
    assert m["object"] == "model" and m["type"] == "image"
    assert m["owned_by"] == "stableserve" and m["provider"] == "stableserve"
    assert isinstance(m["created"], int) and m["created"] > 1_500_000_000
    assert m["best_for"] and m["description"] and m["tasks"]
    assert isinstance(m["price"], float | int) and m["price"] >= 0
    assert m["ready"] is True  # demo engines are always ready
    assert set(m["stats"]) == STATS_KEYS


def test_list_has_every_engine(oa, account):
    from stableserve.core.engines import load_registry

    registry = load_registry("demo")
    resp = oa.get("/v1/models", headers=account.headers)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == registry.ids()
    for m in body["data"]:
        check_model(m)
    by_id = {m["id"]: m for m in body["data"]}
    assert by_id["stable-diffusion-xl-1024-v1-0"]["best_for"] == "photorealistic 1024px text-to-image"
    assert by_id["stable-diffusion-xl-1024-v1-0"]["price"] == 0.9
    assert by_id["esrgan-v1-x2plus"]["best_for"] == "fast upscaling"
    assert by_id["esrgan-v1-x2plus"]["tasks"] == ["upscale"]
    assert by_id["esrgan-v1-x2plus"]["price"] == registry.get("esrgan-v1-x2plus").price.per_image
    assert by_id["sd3.5-large"]["price"] == 6.5


def test_retrieve_one(oa, account):
    resp = oa.get("/v1/models/sd3.5-large", headers=account.headers)
    assert resp.status_code == 200, resp.text
    check_model(resp.json())
    assert resp.json()["id"] == "sd3.5-large"


def test_unknown_model_is_404_in_openai_form(oa, account):
    resp = oa.get("/v1/models/no-such-model", headers=account.headers)
    assert resp.status_code == 404, resp.text
    err = resp.json()["error"]
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert err["type"] == "invalid_request_error" and "no-such-model" in err["message"]


@pytest.mark.parametrize("path", ["/v1/models", f"/v1/models/{ENGINE}", "/v1/models/no-such-model"])
def test_key_required(oa, path):
    assert oa.get(path).status_code == 401
    resp = oa.get(path, headers={"Authorization": "Bearer sk-nope123456"})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"


def test_stats_reflect_a_generation(oa, account):
    body = {"text_prompts": [{"text": "a cat"}], "height": 128, "width": 128, "steps": 10}  # v1: steps >= 10
    gen = oa.post(f"/v1/generation/{ENGINE}/text-to-image", headers=account.headers, json=body)
    assert gen.status_code == 200, gen.text

    stats = oa.get(f"/v1/models/{ENGINE}", headers=account.headers).json()["stats"]
    assert stats["jobs"] >= 1
    assert isinstance(stats["p50_latency_ms"], int) and stats["p50_latency_ms"] > 0
    assert stats["p95_latency_ms"] >= stats["p50_latency_ms"]
    assert stats["success_rate"] == 1.0
    listed = {m["id"]: m for m in oa.get("/v1/models", headers=account.headers).json()["data"]}
    assert listed[ENGINE]["stats"] == stats
    untouched = listed["esrgan-v1-x2plus"]["stats"]
    assert untouched == {"jobs": 0, "p50_latency_ms": None, "p95_latency_ms": None, "success_rate": None}
