"""``GET /v1/engines/{engine_id}/capabilities`` (a stableserve extension) through the real app:
shapes per rule kind, readiness, auth, the v1 404 for an unknown engine, flavours, OpenAPI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from stableserve.core.presets import STYLE_PRESETS
from stableserve.core.types import Sampler
from tests.api.test_rest_v1 import assert_v1_error

KEYS = {
    "id", "name", "description", "type", "family", "tasks", "ready", "ready_reason", "dimensions",
    "default_width", "default_height", "default_steps", "default_sampler", "samplers", "style_presets",
    "limits", "price", "default_price", "upscale_factor", "max_output_pixels", "control",
}  # fmt: skip


@pytest.fixture(scope="module")
def app_client(api_settings) -> Iterator[TestClient]:
    """The app without its lifespan: these routes read the registry and the database only."""
    from stableserve.api.app import build_app

    yield TestClient(build_app(api_settings), raise_server_exceptions=False)


def caps(client, account, engine_id: str, flavor: str = "v1"):
    return client.get(f"/{flavor}/engines/{engine_id}/capabilities", headers=account.headers)


def test_range_rule_engine(app_client, account):
    resp = caps(app_client, account, "stable-diffusion-v1-5")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == KEYS
    assert body["tasks"] == ["text-to-image", "image-to-image", "masking"]
    assert body["ready"] is True and body["ready_reason"]
    assert body["dimensions"] == {
        "kind": "pixel_range",
        "multiple": 64,
        "min_side": 128,
        "max_side": None,
        "min_pixels": 262144,
        "max_pixels": 1048576,
        "sizes": [],
        "error": "invalid_pixel_count",
    }
    assert (body["default_width"], body["default_height"], body["default_steps"]) == (512, 512, 30)
    assert body["default_sampler"] == "K_DPMPP_2M" and body["samplers"] == [s.value for s in Sampler]
    assert body["style_presets"] == list(STYLE_PRESETS) and len(body["style_presets"]) == 17
    assert body["limits"]["steps_min"] == 10 and body["limits"]["samples_max"] == 10
    assert body["price"] == {"per_image": 0.2, "reference_steps": 30, "reference_pixels": 262144}
    assert body["default_price"] == 0.2 and body["control"] is None


def test_fixed_rule_lists_its_sizes(app_client, account):
    body = caps(app_client, account, "stable-diffusion-xl-1024-v1-0").json()
    dims = body["dimensions"]
    assert dims["kind"] == "fixed" and dims["error"] == "invalid_sdxl_v1_dimensions"
    sizes = {(s["width"], s["height"]) for s in dims["sizes"]}
    assert len(sizes) == 9 and (1024, 1024) in sizes and (1344, 768) in sizes
    assert (body["default_width"], body["default_height"]) in sizes
    assert body["default_sampler"] == "K_EULER"


def test_sdxl_beta_and_flow_matching_engines(app_client, account):
    beta = caps(app_client, account, "stable-diffusion-xl-beta-v2-2-2").json()
    assert beta["dimensions"]["kind"] == "sdxl_beta" and beta["dimensions"]["max_side"] == 896
    sd3 = caps(app_client, account, "sd3.5-large").json()
    assert sd3["samplers"] == ["K_EULER", "K_HEUN"]


def test_upscaler_and_controlnet(app_client, account):
    esrgan = caps(app_client, account, "esrgan-v1-x2plus").json()
    assert esrgan["tasks"] == ["upscale"] and esrgan["dimensions"]["kind"] == "any"
    assert esrgan["samplers"] == [] and esrgan["default_sampler"] is None and esrgan["default_steps"] is None
    assert esrgan["style_presets"] == [] and esrgan["upscale_factor"] == 2
    assert esrgan["max_output_pixels"] == 4194304
    assert caps(app_client, account, "sd15-controlnet-scribble").json()["control"] == "sketch"


def test_unknown_engine_is_the_v1_404(app_client, account):
    body = assert_v1_error(caps(app_client, account, "some-fake-engine"), 404, "not_found")
    assert body["message"] == "The specified engine (ID some-fake-engine) was not found."


def test_needs_a_key(app_client, account):
    resp = app_client.get("/v1/engines/stable-diffusion-v1-5/capabilities")
    assert_v1_error(resp, 401, "unauthorized")
    resp = app_client.get(
        "/v1/engines/stable-diffusion-v1-5/capabilities", headers={"Authorization": "Bearer sk-nope"}
    )
    assert_v1_error(resp, 401, "unauthorized")


def test_v1beta_has_it_v1alpha_does_not(app_client, account):
    body = caps(app_client, account, "stable-diffusion-v1-5", "v1beta").json()
    assert body["id"] == "stable-diffusion-v1-5"
    assert_v1_error(caps(app_client, account, "stable-diffusion-v1-5", "v1alpha"), 404, "not_found")


def test_engine_without_weights_is_not_ready(api_settings, account):
    from stableserve.api.app import build_app
    from stableserve.core.engines import load_registry

    app = build_app(api_settings, registry=load_registry("public"))
    client = TestClient(app, raise_server_exceptions=False)
    body = caps(client, account, "stable-diffusion-v1-5").json()
    assert body["ready"] is False and body["ready_reason"]
    assert "demo" not in body["description"].lower()


def test_documented_in_openapi(app_client):
    doc = app_client.get("/openapi.json").json()
    route = doc["paths"]["/v1/engines/{engine_id}/capabilities"]["get"]
    assert "extension" in route["summary"].lower()
    assert "not_found" in route["description"]
    assert "/v1beta/engines/{engine_id}/capabilities" in doc["paths"]
    assert "/v1alpha/engines/{engine_id}/capabilities" not in doc["paths"]
