"""End to end: the official ``openai`` Python package, unchanged (``OpenAI(base_url, api_key)``),
against ``stableserve serve --engines demo``: images.generate in both response formats (the
url downloaded), images.edit with a mask, images.create_variation, models.list/retrieve."""

from __future__ import annotations

import base64
import io

import pytest
import requests
from PIL import Image

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(shared_server):
    """The e2e server, once with each executor (local worker processes, Ray Serve)."""
    return shared_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.host}/v1", api_key=server.key, max_retries=0, timeout=300)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_generate_in_both_response_formats(client):
    result = client.images.generate(
        model="stable-diffusion-xl-beta-v2-2-2",
        prompt="A lighthouse on a cliff",
        size="512x512",
        n=2,
        response_format="b64_json",
        extra_body={"steps": 4, "seed": 5},
    )
    assert len(result.data) == 2 and result.created > 0
    img = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert img.size == (512, 512)
    assert result.usage.engine == "stable-diffusion-xl-beta-v2-2-2"  # stableserve's usage fields
    result = client.images.generate(
        model="stable-diffusion-xl-beta-v2-2-2",
        prompt="A lighthouse",
        size="512x512",
        extra_body={"steps": 4},
    )
    url = result.data[0].url
    assert url.startswith("http") and "signature=" in url
    download = requests.get(url, timeout=30)  # no API key: the link is signed
    assert download.status_code == 200 and Image.open(io.BytesIO(download.content)).size == (512, 512)
    tampered = requests.get(url.replace("signature=", "signature=0"), timeout=30)
    assert tampered.status_code == 403


def test_edit_with_a_mask_and_variation(client):
    image = Image.new("RGB", (512, 512), (30, 90, 160))
    mask = Image.new("RGBA", (512, 512), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (128, 128, 384, 384))  # transparent: edit here
    result = client.images.edit(
        image=("image.png", png(image), "image/png"),
        mask=("mask.png", png(mask), "image/png"),
        prompt="a red door",
        response_format="b64_json",
        extra_body={"steps": 4},
    )
    out = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).convert("RGB")
    assert out.size == (512, 512)
    assert out.getpixel((10, 10)) == (30, 90, 160)  # outside the mask: untouched
    result = client.images.create_variation(
        image=("image.png", png(image), "image/png"), n=1, response_format="b64_json", extra_body={"steps": 4}
    )
    assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (512, 512)


def test_models_list_and_retrieve(client):
    models = client.models.list()
    ids = {m.id for m in models.data}
    assert {"stable-diffusion-v1-5", "stable-diffusion-xl-1024-v1-0", "esrgan-v1-x2plus"} <= ids
    model = client.models.retrieve("stable-diffusion-v1-5")
    assert model.id == "stable-diffusion-v1-5" and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-9")


def test_bad_key_is_an_authentication_error(server):
    bad = openai.OpenAI(base_url=f"{server.host}/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.images.generate(prompt="x", size="512x512")
