"""End to end: ``stableserve serve`` as a subprocess, driven over real HTTP the way Stability's
official v1 / v1beta / v1alpha example clients (curl and Python ``requests``) drive it: same
routes, headers, payloads and engines (``API_HOST`` + ``STABILITY_API_KEY``), with 10 diffusion
steps where the examples ask for 30-50 (the demo engines make noise either way)."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import time

import pytest
import requests
from PIL import Image


@pytest.fixture(scope="module")
def server(shared_server, tmp_path_factory):
    """The e2e server (``shared_server``: once with each executor, the same suite passes on
    local worker processes and on Ray Serve); yields (API_HOST, STABILITY_API_KEY, workdir)."""
    work = tmp_path_factory.mktemp("e2e-v1-client")
    (work / "out").mkdir(parents=True)
    Image.new("RGB", (512, 512), (20, 40, 160)).save(work / "init_image.png")
    mask = Image.new("L", (512, 512), 0)
    mask.paste(255, (128, 128, 384, 384))
    mask.save(work / "mask_image_white.png")
    return shared_server.host, shared_server.key, work


def _png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_python_requests_v1_examples(server):
    api_host, api_key, work = server
    auth = {"Authorization": f"Bearer {api_key}"}
    engines = requests.get(f"{api_host}/v1/engines/list", headers=auth, timeout=30)
    assert engines.status_code == 200 and any(e["id"] == "stable-diffusion-v1-5" for e in engines.json())
    account = requests.get(f"{api_host}/v1/user/account", headers=auth, timeout=30).json()
    assert account["organizations"][0]["name"] == "e2e"
    before = requests.get(f"{api_host}/v1/user/balance", headers=auth, timeout=30).json()["credits"]

    r = requests.post(
        f"{api_host}/v1/generation/stable-diffusion-v1-5/text-to-image",
        headers={**auth, "Content-Type": "application/json", "Accept": "application/json"},
        json={
            "text_prompts": [{"text": "A lighthouse on a cliff"}],
            "cfg_scale": 7,
            "height": 512,
            "width": 512,
            "samples": 1,
            "steps": 10,
        },
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert _png(base64.b64decode(r.json()["artifacts"][0]["base64"])).size == (512, 512)

    with open(work / "init_image.png", "rb") as init:
        r = requests.post(
            f"{api_host}/v1/generation/stable-diffusion-v1-5/image-to-image",
            headers={"Accept": "application/json", **auth},
            files={"init_image": init},
            data={
                "image_strength": 0.35,
                "init_image_mode": "IMAGE_STRENGTH",
                "text_prompts[0][text]": "Galactic dog with a cape",
                "cfg_scale": 7,
                "clip_guidance_preset": "FAST_BLUE",
                "samples": 1,
                "steps": 10,
            },
            timeout=300,
        )
    assert r.status_code == 200, r.text

    with open(work / "init_image.png", "rb") as init, open(work / "mask_image_white.png", "rb") as mask:
        r = requests.post(
            f"{api_host}/v1/generation/stable-inpainting-512-v2-0/image-to-image/masking",
            headers={"Accept": "application/json", **auth},
            files={"init_image": init, "mask_image": mask},
            data={
                "mask_source": "MASK_IMAGE_WHITE",
                "text_prompts[0][text]": "A spiral galaxy",
                "cfg_scale": 7,
                "clip_guidance_preset": "FAST_BLUE",
                "samples": 1,
                "steps": 10,
            },
            timeout=300,
        )
    assert r.status_code == 200, r.text
    out = _png(base64.b64decode(r.json()["artifacts"][0]["base64"])).convert("RGB")
    assert out.getpixel((10, 10)) == (20, 40, 160)  # outside the mask: unchanged

    with open(work / "init_image.png", "rb") as image:
        r = requests.post(
            f"{api_host}/v1/generation/esrgan-v1-x2plus/image-to-image/upscale",
            headers={"Accept": "image/png", **auth},
            files={"image": image},
            data={"width": 1024},
            timeout=300,
        )
    assert r.status_code == 200, r.text
    assert _png(r.content).size == (1024, 1024)
    after = requests.get(f"{api_host}/v1/user/balance", headers=auth, timeout=30).json()["credits"]
    assert after < before


def test_python_requests_v1alpha_and_v1beta_examples(server):
    api_host, api_key, work = server
    r = requests.post(
        f"{api_host}/v1alpha/generation/stable-diffusion-v1-5/text-to-image",
        json={
            "cfg_scale": 7,
            "clip_guidance_preset": "FAST_BLUE",
            "height": 512,
            "width": 512,
            "samples": 1,
            "steps": 10,
            "text_prompts": [{"text": "A lighthouse on a cliff", "weight": 1}],
        },
        headers={"Content-Type": "application/json", "Accept": "image/png", "Authorization": api_key},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert _png(r.content).size == (512, 512)
    alpha = requests.get(f"{api_host}/v1alpha/user/balance", headers={"Authorization": api_key}, timeout=30)
    assert isinstance(alpha.json()["credits"], float)
    with open(work / "init_image.png", "rb") as init:
        r = requests.post(
            f"{api_host}/v1beta/generation/stable-diffusion-512-v2-1/image-to-image",
            headers={"Accept": "application/json", "Authorization": f"Bearer {api_key}"},
            files={"init_image": init},
            data={
                "image_strength": 0.35,
                "init_image_mode": "IMAGE_STRENGTH",
                "text_prompts[0][text]": "A dog space commander",
                "text_prompts[0][weight]": 1,
                "cfg_scale": 7,
                "samples": 1,
                "steps": 10,
                "height": 512,
                "width": 512,
            },
            timeout=300,
        )
    assert r.status_code == 200, r.text


def test_curl_examples(server):
    api_host, api_key, work = server
    env = {**os.environ, "API_HOST": api_host, "STABILITY_API_KEY": api_key}

    def curl(*args: str) -> None:
        r = subprocess.run(["curl", "-f", "-sS", *args], cwd=work, env=env, capture_output=True, timeout=300)
        assert r.returncode == 0, r.stderr

    curl(
        "-X",
        "POST",
        f"{api_host}/v1/generation/stable-diffusion-v1-5/text-to-image",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Accept: image/png",
        "-H",
        f"Authorization: Bearer {api_key}",
        "--data-raw",
        '{"text_prompts": [{"text": "A lighthouse on a cliff"}], "cfg_scale": 7, "clip_guidance_preset": '
        '"FAST_BLUE", "height": 512, "width": 512, "samples": 1, "steps": 10}',
        "-o",
        "out/v1_txt2img.png",
    )
    assert _png((work / "out/v1_txt2img.png").read_bytes()).size == (512, 512)
    curl(
        "-X",
        "POST",
        f"{api_host}/v1alpha/generation/stable-inpainting-512-v2-0/image-to-image/masking",
        "-H",
        "Content-Type: multipart/form-data",
        "-H",
        "Accept: image/png",
        "-H",
        f"Authorization: {api_key}",
        "-F",
        'init_image=@"init_image.png"',
        "-F",
        'mask_image=@"mask_image_white.png"',
        "-F",
        'options="{\\"mask_source\\": \\"MASK_IMAGE_WHITE\\", \\"cfg_scale\\": 7, \\"samples\\": 1, '
        '\\"steps\\": 10, \\"text_prompts\\": [{\\"text\\": \\"A galaxy dog\\", \\"weight\\": 1}]}"',
        "-o",
        "out/v1alpha_img2img_masking.png",
    )
    assert _png((work / "out/v1alpha_img2img_masking.png").read_bytes()).size == (512, 512)
    curl(
        "-X",
        "POST",
        f"{api_host}/v1/generation/esrgan-v1-x2plus/image-to-image/upscale",
        "-H",
        "Content-Type: multipart/form-data",
        "-H",
        "Accept: image/png",
        "-H",
        f"Authorization: Bearer {api_key}",
        "-F",
        'image=@"init_image.png"',
        "-F",
        "width=1024",
        "-o",
        "out/v1_upscaled_image.png",
    )
    assert _png((work / "out/v1_upscaled_image.png").read_bytes()).size == (1024, 1024)
    r = subprocess.run(
        ["curl", "-sS", f"{api_host}/v1/user/balance", "-H", "Authorization: Bearer sk-wrong"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert '"name":"unauthorized"' in r.stdout


def test_error_id_appears_in_the_server_log(server, shared_server):
    api_host, api_key, _ = server
    r = requests.post(
        f"{api_host}/v1/generation/stable-diffusion-v1-5/text-to-image",
        headers={"Authorization": f"Bearer {api_key}"},
        json={"text_prompts": []},
        timeout=30,
    )
    assert r.status_code == 400
    rid = r.json()["id"]
    log = shared_server.home / "server.log"
    deadline = time.time() + 5
    while rid not in log.read_text() and time.time() < deadline:
        time.sleep(0.1)
    assert rid in log.read_text()


def test_client_disconnect_cancels_the_job_and_releases_credits(server):
    api_host, api_key, _ = server
    auth = {"Authorization": f"Bearer {api_key}"}
    before = requests.get(f"{api_host}/v1/user/balance", headers=auth, timeout=30).json()["credits"]
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(
            f"{api_host}/v1/generation/stable-diffusion-v1-5/text-to-image",
            headers=auth,
            json={"text_prompts": [{"text": "a very long job"}], "steps": 150},
            timeout=3,
        )
    deadline = time.time() + 60
    balance = None
    while time.time() < deadline:
        balance = requests.get(f"{api_host}/v1/user/balance", headers=auth, timeout=30).json()["credits"]
        if balance == before:
            break
        time.sleep(0.25)
    assert balance == before
    # and the server still serves
    ok = requests.post(
        f"{api_host}/v1/generation/esrgan-v1-x2plus/image-to-image/upscale",
        headers=auth,
        files={"image": ("i.png", (server[2] / "init_image.png").read_bytes())},
        timeout=120,
    )
    assert ok.status_code == 200
