"""REST v2beta through the real app: generate (ultra, core, sd3), upscale (fast, conservative,
creative), async results, the v2 error body, the 10 MiB limit and credits per product."""

from __future__ import annotations

import base64
import io
from datetime import timedelta

import pytest
from PIL import Image

from tests.api.conftest import png_bytes
from tests.api.v2 import assert_v2_error, balance, poll, post


def test_core_binary_mode_headers_and_credits(v2, account):
    r = post(v2, "generate/core", account, {"prompt": "a lighthouse", "seed": "42", "aspect_ratio": "16:9"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["finish-reason"] == "SUCCESS" and r.headers["seed"] == "42"
    assert len(r.headers["x-request-id"]) == 32
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "PNG" and img.width > img.height
    assert balance(v2, account) == pytest.approx(100 - 3)


def test_ultra_json_mode_jpeg(v2, account):
    r = post(
        v2,
        "generate/ultra",
        account,
        {"prompt": "a fox", "output_format": "jpeg", "seed": "7"},
        accept="application/json",
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json; type=image/jpeg"
    body = r.json()
    assert set(body) == {"image", "finish_reason", "seed"}
    assert body["finish_reason"] == "SUCCESS" and body["seed"] == 7
    assert Image.open(io.BytesIO(base64.b64decode(body["image"]))).format == "JPEG"
    assert balance(v2, account) == pytest.approx(100 - 8)


def test_ultra_image_to_image_webp_and_strength_required(v2, account):
    image = {"image": ("in.png", png_bytes(256, 128), "image/png")}
    r = post(v2, "generate/ultra", account, {"prompt": "a fox"}, files=image)
    assert_v2_error(r, 400, "bad_request", "strength")
    r = post(
        v2,
        "generate/ultra",
        account,
        {"prompt": "a fox", "strength": "0.5", "output_format": "webp"},
        files=image,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "WEBP" and img.width > img.height
    assert balance(v2, account) == pytest.approx(100 - 8)  # the failed call was free


def test_sd3_models_prices_and_rules(v2, account):
    r = post(v2, "generate/sd3", account, {"prompt": "a cat", "model": "sd3-medium", "seed": "5"})
    assert r.status_code == 200, r.text  # legacy name, re-routed to sd3.5-medium
    assert balance(v2, account) == pytest.approx(100 - 3.5)
    r = post(
        v2,
        "generate/sd3",
        account,
        {"prompt": "a cat", "model": "sd3.5-large-turbo", "negative_prompt": "dogs"},
    )
    assert_v2_error(r, 400, "bad_request", "negative_prompt")
    r = post(v2, "generate/sd3", account, {"prompt": "a cat", "cfg_scale": "11"})
    assert_v2_error(r, 400, "bad_request", "cfg_scale")
    r = post(v2, "generate/sd3", account, {"prompt": "a cat", "model": "sd4"})
    assert_v2_error(r, 400, "bad_request", "model")
    image = {"image": ("in.png", png_bytes(128, 128), "image/png")}
    r = post(
        v2,
        "generate/sd3",
        account,
        {"prompt": "a cat", "mode": "image-to-image", "strength": "0.6", "aspect_ratio": "1:1"},
        files=image,
    )
    assert_v2_error(r, 400, "bad_request", "aspect_ratio")
    r = post(
        v2,
        "generate/sd3",
        account,
        {"prompt": "a cat", "mode": "image-to-image", "strength": "0"},
        files=image,
    )
    assert r.status_code == 200, r.text  # strength 0 still runs one step
    assert balance(v2, account) == pytest.approx(100 - 3.5 - 6.5)


def test_multipart_only_required_fields_and_validation_before_auth(v2, account):
    r = v2.post(
        "/v2beta/stable-image/generate/core",
        headers={"authorization": f"Bearer {account.key}"},
        json={"prompt": "a cat"},
    )
    assert_v2_error(r, 400, "bad_request", "content-type")
    r = post(v2, "generate/core", account, {"seed": "1"})
    assert_v2_error(r, 400, "bad_request", "prompt")
    r = post(v2, "generate/core", account, {"prompt": "x", "seed": "4294967295"})
    assert_v2_error(r, 400, "bad_request", "seed")
    r = post(v2, "generate/core", account, {"prompt": "x", "aspect_ratio": "7:3"})
    assert_v2_error(r, 400, "bad_request", "aspect_ratio")
    bad = type(account)(account.org_id, account.org_name, "sk-not-a-key")
    assert_v2_error(post(v2, "generate/core", bad, {"seed": "1"}), 400, "bad_request", "prompt")
    r = post(v2, "generate/core", bad, {"prompt": "a cat"})
    assert_v2_error(r, 401, "unauthorized", "authorization")
    assert balance(v2, account) == 100


def test_payment_required_is_free(v2, make_account):
    poor = make_account(1)
    r = post(v2, "generate/core", poor, {"prompt": "a cat"})
    assert_v2_error(r, 402, "payment_required")
    assert balance(v2, poor) == 1


def test_oversize_body_is_413_without_reading(v2, account):
    big = b"\0" * (10 * 1024 * 1024 + 1)
    r = post(v2, "upscale/fast", account, files={"image": ("big.png", big, "image/png")})
    assert_v2_error(r, 413, "payload_too_large", "body")

    def chunks():  # no content-length: counted while streaming
        for _ in range(11):
            yield b"x" * (1024 * 1024)

    r = v2.post(
        "/v2beta/stable-image/upscale/fast",
        headers={
            "authorization": f"Bearer {account.key}",
            "content-type": "multipart/form-data; boundary=abc",
        },
        content=chunks(),
    )
    assert_v2_error(r, 413, "payload_too_large", "body")
    assert balance(v2, account) == 100


def test_fast_upscale_is_4x_and_checks_the_image(v2, account):
    r = post(v2, "upscale/fast", account, files={"image": ("in.png", png_bytes(40, 32), "image/png")})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (160, 128)
    assert balance(v2, account) == pytest.approx(100 - 2)
    r = post(v2, "upscale/fast", account, files={"image": ("in.png", png_bytes(31, 64), "image/png")})
    assert_v2_error(r, 400, "bad_request", "image")
    r = post(v2, "upscale/fast", account)
    assert_v2_error(r, 400, "bad_request", "image")
    r = post(v2, "upscale/fast", account, files={"image": ("in.txt", b"not an image", "text/plain")})
    assert_v2_error(r, 400, "bad_request", "image")


def test_conservative_upscale_output_area_and_limits(v2, account):
    files = {"image": ("in.png", png_bytes(96, 64), "image/png")}
    r = post(v2, "upscale/conservative", account, {"prompt": "a house", "creativity": "0.3"}, files=files)
    assert r.status_code == 200, r.text
    w, h = Image.open(io.BytesIO(r.content)).size
    assert w * h <= 256 * 256 and w * h > 0.9 * 256 * 256 and abs(w / h - 1.5) < 0.02
    assert balance(v2, account) == pytest.approx(100 - 40)
    r = post(v2, "upscale/conservative", account, {"prompt": "a house", "creativity": "0.6"}, files=files)
    assert_v2_error(r, 400, "bad_request", "creativity")
    thin = {"image": ("in.png", png_bytes(400, 64), "image/png")}
    assert_v2_error(
        post(v2, "upscale/conservative", account, {"prompt": "a"}, files=thin), 400, "bad_request", "image"
    )
    assert_v2_error(post(v2, "upscale/conservative", account, files=files), 400, "bad_request", "prompt")


def test_creative_upscale_async_results(v2, account, make_account, api_settings):
    files = {"image": ("in.png", png_bytes(64, 64), "image/png")}
    r = post(v2, "upscale/creative", account, {"prompt": "a castle", "seed": "9"}, files=files)
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    assert set(r.json()) == {"id"} and len(job_id) == 64
    done = poll(v2, account, job_id)
    assert done.status_code == 200, done.text
    assert done.headers["content-type"] == "image/png" and done.headers["seed"] == "9"
    assert done.headers["finish-reason"] == "SUCCESS"
    assert Image.open(io.BytesIO(done.content)).size == (256, 256)
    again = poll(
        v2, account, job_id, path="/v2beta/stable-image/upscale/creative/result/", accept="application/json"
    )
    assert again.status_code == 200 and again.headers["content-type"] == "application/json; type=image/png"
    assert base64.b64decode(again.json()["image"]) == done.content
    assert balance(v2, account) == pytest.approx(100 - 60)

    other = make_account(100)
    assert_v2_error(poll(v2, other, job_id), 404, "generation_not_found", "id")
    assert_v2_error(poll(v2, account, "0" * 64), 404, "generation_not_found", "id")
    assert_v2_error(poll(v2, account, "not-an-id"), 400, "bad_request", "id")

    from stableserve.db.models import Job
    from stableserve.db.session import session_factory

    with session_factory(api_settings).begin() as s:
        job = s.get(Job, job_id)
        job.expires_at = job.finished_at - timedelta(hours=1)
    assert_v2_error(poll(v2, account, job_id), 404, "generation_not_found", "id")
    assert not any(api_settings.results_dir.rglob(f"{job_id}*")), "expired result still stored"


def test_openapi_describes_the_v2beta_endpoints(v2):
    doc = v2.get("/openapi.json").json()
    for path in (
        "/v2beta/stable-image/generate/ultra",
        "/v2beta/stable-image/generate/core",
        "/v2beta/stable-image/generate/sd3",
        "/v2beta/stable-image/upscale/fast",
        "/v2beta/stable-image/upscale/conservative",
        "/v2beta/stable-image/upscale/creative",
    ):
        body = doc["paths"][path]["post"]["requestBody"]["content"]
        assert list(body) == ["multipart/form-data"], path
    assert "/v2beta/results/{id}" in doc["paths"]
    sd3 = doc["paths"]["/v2beta/stable-image/generate/sd3"]["post"]["requestBody"]["content"]
    assert {"prompt", "model", "mode", "cfg_scale"} <= set(sd3["multipart/form-data"]["schema"]["properties"])


def test_unknown_v2_route_uses_the_v2_error_body(v2, account):
    r = v2.post("/v2beta/stable-image/generate/nope", headers={"authorization": f"Bearer {account.key}"})
    assert_v2_error(r, 404, "not_found")
