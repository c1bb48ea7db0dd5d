"""OpenAI Images API in process: generations (url and b64_json), edits with a mask, variations,
signed links (expired or tampered: 403), OpenAI's error body, credits like every protocol."""

from __future__ import annotations

import base64
import io
import time
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import png_bytes

GEN = {"prompt": "a lighthouse", "model": "stable-diffusion-v1-5", "size": "64x64", "steps": 2, "seed": 9}


def auth(account) -> dict:
    return {"Authorization": f"Bearer {account.key}"}


def test_generate_b64_and_url(v2, account):
    r = v2.post(
        "/v1/images/generations", headers=auth(account), json={**GEN, "n": 2, "response_format": "b64_json"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["created"], int) and len(body["data"]) == 2
    img = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert img.size == (64, 64)
    assert body["usage"]["engine"] == "stable-diffusion-v1-5" and body["usage"]["seeds"] == [9, 10]
    assert body["usage"]["cost"] == pytest.approx(0.4) and body["usage"]["latency_ms"] >= 0
    r = v2.post("/v1/images/generations", headers=auth(account), json=GEN)
    url = r.json()["data"][0]["url"]
    link = v2.get(url)  # no API key needed
    assert link.status_code == 200 and link.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(link.content)).size == (64, 64)
    v1 = v2.get("/v1/user/balance", headers=auth(account)).json()["credits"]
    assert v1 == pytest.approx(100 - 0.6)


def test_tampered_or_expired_links_are_403_and_say_nothing(v2, account, api_settings):
    from stableserve.accounts.keys import server_secret
    from stableserve.api.openai import links

    url = v2.post("/v1/images/generations", headers=auth(account), json=GEN).json()["data"][0]["url"]
    parts = urlparse(url)
    query = parse_qs(parts.query)
    job_id, index = parts.path.split("/")[-2:]
    tampered = [
        f"{parts.path}?expires={int(query['expires'][0]) + 100}&signature={query['signature'][0]}",
        f"{parts.path}?expires={query['expires'][0]}&signature={'0' * 64}",
        f"{parts.path[:-1]}1?{parts.query}",
        f"{parts.path}?expires=soon&signature={query['signature'][0]}",
    ]
    secret = server_secret(api_settings)
    tampered.append(links.signed_path(secret, job_id, int(index), ttl_s=-1))  # expired
    for path in tampered:
        r = v2.get(path)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "forbidden" and job_id not in r.text
    assert v2.get(links.signed_path(secret, job_id, int(index), ttl_s=60, now=time.time())).status_code == 200


def test_edit_with_a_transparent_mask_and_a_variation(v2, account):
    image = png_bytes(96, 64, color=(20, 100, 200))
    mask = Image.new("RGBA", (96, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (32, 16, 64, 48))  # transparent = edit here
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    r = v2.post(
        "/v1/images/edits",
        headers=auth(account),
        data={
            "prompt": "a red door",
            "model": "stable-inpainting-512-v2-0",
            "response_format": "b64_json",
            "steps": "2",
        },
        files={"image": ("i.png", image, "image/png"), "mask": ("m.png", buf.getvalue(), "image/png")},
    )
    assert r.status_code == 200, r.text
    out = np.asarray(
        Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"]))).convert("RGB")
    ).astype(int)
    src = np.asarray(Image.open(io.BytesIO(image)).convert("RGB")).astype(int)
    keep = np.ones((64, 96), bool)
    keep[14:50, 30:66] = False
    assert out.shape == src.shape and (out[keep] == src[keep]).all()
    assert (out[20:44, 36:60] != src[20:44, 36:60]).any()
    r = v2.post(
        "/v1/images/variations",
        headers=auth(account),
        data={"n": "2", "response_format": "b64_json", "steps": "2", "model": "stable-diffusion-v1-5"},
        files={"image": ("i.png", image, "image/png")},
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2


def test_openai_error_bodies(v2, account, make_account):
    r = v2.post("/v1/images/generations", json=GEN)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = v2.post("/v1/images/generations", headers=auth(account), json={**GEN, "size": "65x64"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["type"] == "invalid_request_error" and err["param"] == "size"
    r = v2.post("/v1/images/generations", headers=auth(account), json={**GEN, "model": "dall-e-9"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = v2.post("/v1/images/generations", headers=auth(account), json={**GEN, "n": 11})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = v2.post("/v1/images/generations", headers=auth(make_account(0.01)), json=GEN)
    assert r.status_code == 429 and r.json()["error"]["type"] == "insufficient_quota"
    r = v2.post(
        "/v1/images/edits",
        headers=auth(account),
        data={"prompt": "x"},
        files={"image": ("i.png", png_bytes(64, 64), "image/png")},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "mask"
    assert v2.get("/v1/user/balance", headers=auth(account)).json()["credits"] == 100
