"""REST v1 / v1beta / v1alpha through the real app: shapes, auth, errors, credits."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import png_bytes

ENGINE = "stable-diffusion-xl-beta-v2-2-2"  # its rules allow 128x128: fast on CPU
T2I = {
    "text_prompts": [{"text": "A lighthouse on a cliff", "weight": 1}],
    "width": 128,
    "height": 128,
    "steps": 10,
    "seed": 42,
}


def balance(client, account) -> float:
    return client.get("/v1/user/balance", headers=account.headers).json()["credits"]


def assert_v1_error(resp, status: int, name: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"id", "name", "message"}
    assert body["name"] == name and len(body["id"]) == 32 and body["message"]
    assert resp.headers["x-request-id"] == body["id"]
    return body


# -- auth ----------------------------------------------------------------------------------------
def test_missing_and_wrong_keys_are_401(client, account):
    body = assert_v1_error(client.get("/v1/engines/list"), 401, "unauthorized")
    assert body["message"] == "missing authorization header"
    for empty in ("Bearer", "Bearer ", ""):  # e.g. curl with an unset $STABILITY_API_KEY
        body = assert_v1_error(
            client.get("/v1/engines/list", headers={"Authorization": empty}), 401, "unauthorized"
        )
        assert body["message"] == "missing authorization header"
    body = assert_v1_error(
        client.get("/v1/engines/list", headers={"Authorization": "Bearer sk-nope123456"}), 401, "unauthorized"
    )
    assert body["message"].startswith("Incorrect API key provided: sk-nope")
    assert "sk-nope123456" not in body["message"]


@pytest.mark.parametrize("fmt", ["Bearer {k}", "bearer {k}", "{k}"])
def test_bearer_and_raw_keys(client, account, fmt):
    resp = client.get("/v1/engines/list", headers={"Authorization": fmt.format(k=account.key)})
    assert resp.status_code == 200


def test_engines_account_balance_shapes(client, account):
    engines = client.get("/v1/engines/list", headers=account.headers).json()
    assert {e["id"] for e in engines} >= {"stable-diffusion-v1-5", "esrgan-v1-x2plus"}
    assert all(set(e) == {"id", "name", "description", "type"} and e["type"] == "PICTURE" for e in engines)
    acct = client.get("/v1/user/account", headers=account.headers).json()
    assert acct["id"].startswith("user-") and acct["email"]
    assert acct["organizations"] == [
        {"id": account.org_id, "name": account.org_name, "role": "OWNER", "is_default": True}
    ]
    assert balance(client, account) == 100.0


def test_organization_header(client, account, make_account):
    other = make_account(5)
    resp = client.get("/v1/user/balance", headers={**account.headers, "Organization": other.org_id})
    assert_v1_error(resp, 403, "permission_denied")
    ok = client.get("/v1/user/balance", headers={**account.headers, "Organization": account.org_id})
    assert ok.json() == {"credits": 100.0}


# -- text-to-image ---------------------------------------------------------------------------------
def test_text_to_image_json_png_and_charge(client, account):
    resp = client.post(
        f"/v1/generation/{ENGINE}/text-to-image", json={**T2I, "samples": 2}, headers=account.headers
    )
    assert resp.status_code == 200, resp.text
    arts = resp.json()["artifacts"]
    assert [a["seed"] for a in arts] == [42, 43] and all(a["finishReason"] == "SUCCESS" for a in arts)
    assert Image.open(io.BytesIO(base64.b64decode(arts[0]["base64"]))).size == (128, 128)
    after_two = balance(client, account)
    assert after_two < 100
    png = client.post(
        f"/v1/generation/{ENGINE}/text-to-image", json=T2I, headers={**account.headers, "Accept": "image/png"}
    )
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["finish-reason"] == "SUCCESS" and png.headers["seed"] == "42"
    alone = np.asarray(Image.open(io.BytesIO(png.content)), dtype=int)
    batched = np.asarray(Image.open(io.BytesIO(base64.b64decode(arts[0]["base64"]))), dtype=int)
    assert np.abs(alone - batched).max() <= 2  # same seed, same image (batching only adds float noise)
    assert balance(client, account) == pytest.approx(100 - 1.5 * (100 - after_two))


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"samples": 2, "_accept": "image/png"}, "invalid_samples"),
        ({"seed": None}, "bad_request"),
        ({"cfg_scale": 36}, "bad_request"),
        ({"steps": 5}, "bad_request"),
        ({"sampler": "K_MAGIC"}, "bad_request"),
        ({"style_preset": "watercolor"}, "bad_request"),
        ({"clip_guidance_preset": "FASTEST"}, "bad_request"),
        ({"text_prompts": []}, "bad_request"),
        ({"text_prompts": [{"text": ""}]}, "bad_request"),
        ({"text_prompts": [{"text": "   "}]}, "invalid_prompts"),
        ({"width": 100}, "invalid_height_or_width"),
        ({"width": 1024, "height": 1024}, "invalid_sdxl_v222_dimensions"),
    ],
)
def test_text_to_image_bad_input_is_a_documented_400_and_free(client, account, change, name):
    change = dict(change)
    headers = {**account.headers, "Accept": change.pop("_accept", "application/json")}
    resp = client.post(f"/v1/generation/{ENGINE}/text-to-image", json={**T2I, **change}, headers=headers)
    assert_v1_error(resp, 400, name)
    assert balance(client, account) == 100.0


def test_engine_rules_and_unknown_engine(client, account):
    resp = client.post(
        "/v1/generation/stable-diffusion-xl-1024-v1-0/text-to-image", json=T2I, headers=account.headers
    )
    assert_v1_error(resp, 400, "invalid_sdxl_v1_dimensions")
    resp = client.post(
        "/v1/generation/stable-diffusion-v1-5/text-to-image", json=T2I, headers=account.headers
    )
    assert_v1_error(resp, 400, "invalid_pixel_count")
    body = assert_v1_error(
        client.post("/v1/generation/some-fake-engine/text-to-image", json=T2I, headers=account.headers),
        404,
        "not_found",
    )
    assert body["message"] == "The specified engine (ID some-fake-engine) was not found."


def test_wrong_body_types_are_400(client, account):
    resp = client.post(
        f"/v1/generation/{ENGINE}/text-to-image",
        data={"text_prompts[0][text]": "x"},
        files={"none": ("x", b"")},
        headers=account.headers,
    )
    assert_v1_error(resp, 400, "bad_request")
    resp = client.post(f"/v1/generation/{ENGINE}/image-to-image", json=T2I, headers=account.headers)
    assert_v1_error(resp, 400, "bad_request")
    resp = client.post(
        f"/v1/generation/{ENGINE}/text-to-image",
        content=b"{not json",
        headers={**account.headers, "Content-Type": "application/json"},
    )
    assert_v1_error(resp, 400, "bad_request")


# -- image-to-image, masking, upscale ---------------------------------------------------------------
def test_image_to_image_multipart_with_sparse_prompt_indices(client, account):
    data = {
        "text_prompts[3][text]": "a castle",
        "text_prompts[3][weight]": "0.5",
        "text_prompts[7][text]": "blurry",
        "text_prompts[7][weight]": "-1",
        "image_strength": "0.35",
        "init_image_mode": "IMAGE_STRENGTH",
        "steps": "10",
        "seed": "5",
        "clip_guidance_preset": "FAST_BLUE",
    }
    resp = client.post(
        f"/v1/generation/{ENGINE}/image-to-image",
        data=data,
        files={"init_image": ("init.png", png_bytes(128, 128))},
        headers=account.headers,
    )
    assert resp.status_code == 200, resp.text
    art = resp.json()["artifacts"][0]
    assert art["seed"] == 5
    step = client.post(
        f"/v1beta/generation/{ENGINE}/image-to-image",
        data={
            **data,
            "init_image_mode": "STEP_SCHEDULE",
            "step_schedule_start": "0.7",
            "step_schedule_end": "0.1",
        },
        files={"init_image": ("init.png", png_bytes(128, 128))},
        headers=account.headers,
    )
    assert step.status_code == 200, step.text


def test_image_to_image_errors(client, account):
    base = {"text_prompts[0][text]": "a castle", "steps": "10"}
    resp = client.post(
        f"/v1/generation/{ENGINE}/image-to-image", data=base, files={"x": ("x", b"")}, headers=account.headers
    )
    body = assert_v1_error(resp, 400, "bad_request")
    assert body["message"] == "init_image: is required"
    resp = client.post(
        f"/v1/generation/{ENGINE}/image-to-image",
        data=base,
        files={"init_image": ("a.txt", b"hello, not an image")},
        headers=account.headers,
    )
    assert_v1_error(resp, 400, "invalid_mime_type")
    assert balance(client, account) == 100.0


@pytest.mark.parametrize("source", ["MASK_IMAGE_WHITE", "MASK_IMAGE_BLACK", "INIT_IMAGE_ALPHA"])
def test_masking_sources(client, account, source):
    files = {
        "init_image": (
            "init.png",
            png_bytes(128, 128, "RGBA", (10, 200, 10, 0))
            if source == "INIT_IMAGE_ALPHA"
            else png_bytes(128, 128),
        )
    }
    if source != "INIT_IMAGE_ALPHA":
        files["mask_image"] = ("mask.png", png_bytes(128, 128, "L", 255))
    resp = client.post(
        f"/v1/generation/{ENGINE}/image-to-image/masking",
        data={"mask_source": source, "text_prompts[0][text]": "a cat", "steps": "10"},
        files=files,
        headers=account.headers,
    )
    assert resp.status_code == 200, resp.text


def test_masking_errors(client, account):
    data = {"mask_source": "MASK_IMAGE_WHITE", "text_prompts[0][text]": "a cat", "steps": "10"}
    resp = client.post(
        f"/v1/generation/{ENGINE}/image-to-image/masking",
        data=data,
        files={
            "init_image": ("i.png", png_bytes(128, 128)),
            "mask_image": ("m.png", png_bytes(128, 192, "L", 255)),
        },
        headers=account.headers,
    )
    assert_v1_error(resp, 400, "invalid_image_dimensions")
    resp = client.post(
        f"/v1/generation/{ENGINE}/image-to-image/masking",
        data=data,
        files={"init_image": ("i.png", png_bytes(128, 128))},
        headers=account.headers,
    )
    assert_v1_error(resp, 400, "invalid_mask_image")
    resp = client.post(
        f"/v1/generation/{ENGINE}/image-to-image/masking",
        data={**data, "mask_source": "MASK_IMAGE_PURPLE"},
        files={"init_image": ("i.png", png_bytes(128, 128))},
        headers=account.headers,
    )
    assert_v1_error(resp, 400, "bad_request")


def test_upscale_esrgan_and_latent(client, account):
    resp = client.post(
        "/v1/generation/esrgan-v1-x2plus/image-to-image/upscale",
        data={"width": "512"},
        files={"image": ("i.png", png_bytes(128, 64))},
        headers={**account.headers, "Accept": "image/png"},
    )
    assert resp.status_code == 200, resp.text
    assert Image.open(io.BytesIO(resp.content)).size == (512, 256)
    both = client.post(
        "/v1/generation/esrgan-v1-x2plus/image-to-image/upscale",
        data={"width": "512", "height": "512"},
        files={"image": ("i.png", png_bytes(128, 64))},
        headers=account.headers,
    )
    assert_v1_error(both, 400, "bad_request")
    small = client.post(
        "/v1/generation/esrgan-v1-x2plus/image-to-image/upscale",
        data={"width": "256"},
        files={"image": ("i.png", png_bytes(128, 64))},
        headers=account.headers,
    )
    assert_v1_error(small, 400, "invalid_height_or_width")
    latent = client.post(
        "/v1/generation/stable-diffusion-x4-latent-upscaler/image-to-image/upscale",
        data={"text_prompts[0][text]": "sharp", "steps": "10", "seed": "3"},
        files={"image": ("i.png", png_bytes(32, 32))},
        headers=account.headers,
    )
    assert latent.status_code == 200, latent.text
    assert Image.open(io.BytesIO(base64.b64decode(latent.json()["artifacts"][0]["base64"]))).size == (
        128,
        128,
    )


# -- legacy flavors -----------------------------------------------------------------------------------
def test_v1alpha_raw_key_options_json_and_bare_array(client, account):
    raw = {"Authorization": account.key}
    resp = client.post(f"/v1alpha/generation/{ENGINE}/text-to-image", json=T2I, headers=raw)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert isinstance(body, list) and set(body[0]) == {"base64", "seed", "finishReason"}
    options = '{"text_prompts": [{"text": "a castle", "weight": 1}], "step_schedule_start": 0.6, "steps": 10}'
    resp = client.post(
        f"/v1alpha/generation/{ENGINE}/image-to-image",
        data={"options": options},
        files={"init_image": ("render_0001.png", png_bytes(128, 128))},
        headers={**raw, "Accept": "image/png"},
    )
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    bad = client.post(
        f"/v1alpha/generation/{ENGINE}/image-to-image",
        data={"options": "{oops"},
        files={"init_image": ("r.png", png_bytes(128, 128))},
        headers=raw,
    )
    assert_v1_error(bad, 400, "bad_request")
    assert client.get("/v1alpha/user/balance", headers=raw).status_code == 200
    assert (
        client.post("/v1alpha/generation/esrgan-v1-x2plus/image-to-image/upscale", headers=raw).status_code
        == 404
    )


def test_v1beta_has_v1_shapes(client, account):
    resp = client.post(f"/v1beta/generation/{ENGINE}/text-to-image", json=T2I, headers=account.headers)
    assert resp.status_code == 200 and "artifacts" in resp.json()
    assert client.get("/v1beta/engines/list", headers=account.headers).status_code == 200


# -- credits ---------------------------------------------------------------------------------------------
def test_insufficient_credits_is_402_before_any_work(client, make_account):
    poor = make_account(0.01)
    resp = client.post(f"/v1/generation/{ENGINE}/text-to-image", json=T2I, headers=poor.headers)
    assert_v1_error(resp, 402, "insufficient_credits")
    assert balance(client, poor) == 0.01


def test_openapi_describes_the_v1_endpoints(client):
    doc = client.get("/openapi.json").json()
    for path in (
        "/v1/engines/list",
        "/v1/user/account",
        "/v1/user/balance",
        "/v1/generation/{engine_id}/text-to-image",
        "/v1/generation/{engine_id}/image-to-image",
        "/v1/generation/{engine_id}/image-to-image/masking",
        "/v1/generation/{engine_id}/image-to-image/upscale",
        "/v1alpha/generation/{engine_id}/text-to-image",
    ):
        assert path in doc["paths"], path
    t2i = doc["paths"]["/v1/generation/{engine_id}/text-to-image"]["post"]
    assert "application/json" in t2i["requestBody"]["content"]
    assert client.get("/docs").status_code == 200
