"""End to end: REST v2beta against ``stableserve serve`` on the demo registry (what ``make run``
serves, but for a smaller conservative-upscale target: ``shared_server``), driven by
Stability's own Python samples (run unchanged but for host and key) and by ``requests`` calls
covering every endpoint in both accept modes, an oversize upload, a result polled by another
organization, and an expired result."""

from __future__ import annotations

import base64
import io
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.e2e.conftest import cli

SAMPLES = Path(__file__).parent / "v2beta_samples"


@pytest.fixture(scope="module")
def server(shared_server):
    """The package's ``shared_server`` (once with each executor): the demo registry as ``make
    run`` serves it, but for the conservative upscale aiming at 0.25 MP instead of 4 MP (a
    4 MP x4-upscaler pass takes minutes on a CPU)."""
    return shared_server


def run_sample(server, name: str, cwd: Path, generation_id: str | None = None) -> str:
    """Run a documentation sample with only its placeholders filled in; its stdout."""
    code = (SAMPLES / name).read_text()
    code = code.replace("https://api.stability.ai", server.host).replace("sk-MYAPIKEY", server.key)
    if generation_id is not None:
        code = code.replace("e52772ac75b...", generation_id)
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def balance(server) -> float:
    r = requests.get(
        f"{server.host}/v1/user/balance", headers={"authorization": f"Bearer {server.key}"}, timeout=30
    )
    return r.json()["credits"]


def test_documentation_samples_run_unchanged(server, tmp_path):
    before = balance(server)
    run_sample(server, "generate_ultra.py", tmp_path)
    img = Image.open(tmp_path / "lighthouse.webp")
    assert img.format == "WEBP" and img.size == (1024, 1024)
    run_sample(server, "generate_core.py", tmp_path)
    assert Image.open(tmp_path / "lighthouse.webp").size == (1024, 1024)
    run_sample(server, "generate_sd3.py", tmp_path)
    assert Image.open(tmp_path / "lighthouse.jpeg").format == "JPEG"
    assert balance(server) == pytest.approx(before - 8 - 3 - 6.5)

    Image.new("RGB", (128, 96), (200, 120, 40)).save(tmp_path / "a-beautiful-image.png")
    out = run_sample(server, "upscale_creative.py", tmp_path)
    generation_id = out.split("Generation ID:")[1].strip()
    assert len(generation_id) == 64
    deadline = time.time() + 300
    while "Generation complete!" not in (
        out := run_sample(server, "fetch_result.py", tmp_path, generation_id)
    ):
        assert "in-progress" in out and time.time() < deadline
        time.sleep(1)
    upscaled = Image.open(tmp_path / "upscaled.webp")
    assert upscaled.format == "WEBP" and upscaled.size == (512, 384)
    assert balance(server) == pytest.approx(before - 8 - 3 - 6.5 - 60)


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (30, 90, 160)).save(buf, format="PNG")
    return buf.getvalue()


SYNC = [
    ("generate/ultra", {"prompt": "a lighthouse", "aspect_ratio": "16:9"}, None, (1344, 768)),
    ("generate/core", {"prompt": "a lighthouse", "aspect_ratio": "2:3"}, None, (832, 1216)),
    ("generate/sd3", {"prompt": "a lighthouse", "model": "sd3.5-large-turbo"}, None, (1024, 1024)),
    (
        "generate/sd3",
        {"prompt": "a lighthouse", "mode": "image-to-image", "strength": "0.7"},
        (300, 200),
        (1280, 832),
    ),
    ("upscale/fast", {}, (64, 48), (256, 192)),
    ("upscale/conservative", {"prompt": "a lighthouse"}, (64, 64), (512, 512)),
]


@pytest.mark.parametrize("accept", ["image/*", "application/json"])
@pytest.mark.parametrize(
    ("path", "data", "image", "size"), SYNC, ids=[f"{p}:{d.get('mode', '')}" for p, d, *_ in SYNC]
)
def test_sync_endpoints_in_both_accept_modes(server, accept, path, data, image, size):
    files = {"image": ("in.png", png(*image), "image/png")} if image else {"none": ""}
    r = requests.post(
        f"{server.host}/v2beta/stable-image/{path}",
        headers={"authorization": f"Bearer {server.key}", "accept": accept},
        files=files,
        data={**data, "seed": "1234", "output_format": "png"},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert len(r.headers["x-request-id"]) == 32
    if accept == "image/*":
        assert r.headers["content-type"] == "image/png"
        assert r.headers["finish-reason"] == "SUCCESS" and r.headers["seed"] == "1234"
        data = r.content
    else:
        assert r.headers["content-type"] == "application/json; type=image/png"
        body = r.json()
        assert body["finish_reason"] == "SUCCESS" and body["seed"] == 1234
        data = base64.b64decode(body["image"])
    assert Image.open(io.BytesIO(data)).size == size


def test_creative_upscale_json_poll_other_org_and_expiry(server):
    auth = {"authorization": f"Bearer {server.key}"}
    r = requests.post(
        f"{server.host}/v2beta/stable-image/upscale/creative",
        headers={**auth, "accept": "application/json"},
        files={"image": ("in.png", png(64, 64), "image/png")},
        data={"prompt": "a castle", "creativity": "0.4", "style_preset": "fantasy-art", "seed": "77"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    deadline = time.time() + 300
    while (
        res := requests.get(
            f"{server.host}/v2beta/results/{job_id}",
            headers={**auth, "accept": "application/json"},
            timeout=30,
        )
    ).status_code == 202:
        assert res.json() == {"id": job_id, "status": "in-progress"} and time.time() < deadline
        time.sleep(0.5)
    assert res.status_code == 200 and res.headers["content-type"] == "application/json; type=image/png"
    assert res.json()["seed"] == 77
    assert Image.open(io.BytesIO(base64.b64decode(res.json()["image"]))).size == (256, 256)

    cli(server.env, "orgs", "create", "other", "--credits", "10")
    other_key = cli(server.env, "keys", "create", "--org", "other")
    for path in (f"/v2beta/results/{job_id}", f"/v2beta/stable-image/upscale/creative/result/{job_id}"):
        nf = requests.get(
            f"{server.host}{path}", headers={"authorization": f"Bearer {other_key}"}, timeout=30
        )
        assert nf.status_code == 404 and nf.json()["name"] == "generation_not_found"
    legacy = requests.get(
        f"{server.host}/v2beta/stable-image/upscale/creative/result/{job_id}", headers=auth, timeout=30
    )
    assert legacy.status_code == 200 and legacy.headers["content-type"] == "image/png"

    past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(server.home / "stableserve.db") as db:  # as if 24 h had passed
        db.execute("UPDATE jobs SET expires_at = ? WHERE id = ?", (past, job_id))
    gone = requests.get(f"{server.host}/v2beta/results/{job_id}", headers=auth, timeout=30)
    assert gone.status_code == 404 and gone.json() == {
        "id": gone.json()["id"],
        "name": "generation_not_found",
        "errors": ["id: the generation either does not exist or has expired."],
    }
    assert not list((server.home / "results").rglob(f"*{job_id}*"))


def test_oversize_upload_is_refused(server):
    before = balance(server)
    r = requests.post(
        f"{server.host}/v2beta/stable-image/upscale/fast",
        headers={"authorization": f"Bearer {server.key}", "accept": "image/*"},
        files={"image": ("big.png", b"\0" * (11 * 1024 * 1024), "image/png")},
        timeout=60,
    )
    assert r.status_code == 413
    assert r.json()["name"] == "payload_too_large"
    assert r.json()["errors"] == ["body: payloads cannot be larger than 10MiB in size"]
    assert balance(server) == before


EDITS = [
    ("edit/erase", {}, ("image", "mask")),
    ("edit/inpaint", {"prompt": "a red door"}, ("image", "mask")),
    ("edit/outpaint", {"left": "64", "up": "32"}, ("image",)),
    ("edit/search-and-replace", {"prompt": "a dog", "search_prompt": "the house"}, ("image",)),
    ("edit/search-and-recolor", {"prompt": "bright red", "select_prompt": "the roof"}, ("image",)),
    ("edit/remove-background", {"output_format": "webp"}, ("image",)),
    ("control/sketch", {"prompt": "a house"}, ("image",)),
    ("control/structure", {"prompt": "a house"}, ("image",)),
    ("control/style", {"prompt": "a house", "aspect_ratio": "3:2"}, ("image",)),
    ("control/style-transfer", {}, ("init_image", "style_image")),
]


@pytest.mark.parametrize(("path", "data", "files"), EDITS, ids=[e[0] for e in EDITS])
def test_edit_and_control_on_the_demo_server(server, path, data, files):
    """Each edit/control endpoint on what ``make run`` serves, with a 300x200 input."""
    mask = Image.new("L", (300, 200), 0)
    mask.paste(255, (100, 50, 200, 150))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    blobs = {
        "image": png(300, 200),
        "mask": buf.getvalue(),
        "init_image": png(300, 200),
        "style_image": png(96, 96),
    }
    r = requests.post(
        f"{server.host}/v2beta/stable-image/{path}",
        headers={"authorization": f"Bearer {server.key}", "accept": "application/json"},
        files={name: (f"{name}.png", blobs[name], "image/png") for name in files},
        data={**data, "seed": "21"},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    img = Image.open(io.BytesIO(base64.b64decode(r.json()["image"])))
    expected = {"edit/outpaint": (364, 232), "control/style": (640, 448)}.get(path, (300, 200))
    assert img.size == expected
    if path == "edit/remove-background":
        assert img.mode == "RGBA" and r.headers["content-type"] == "application/json; type=image/webp"


def test_relight_on_the_demo_server(server):
    auth = {"authorization": f"Bearer {server.key}"}
    r = requests.post(
        f"{server.host}/v2beta/stable-image/edit/replace-background-and-relight",
        headers=auth,
        files={"subject_image": ("s.png", png(256, 256), "image/png")},
        data={"background_prompt": "a sunny beach", "light_source_direction": "above"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    deadline = time.time() + 300
    while (
        res := requests.get(f"{server.host}/v2beta/results/{job_id}", headers=auth, timeout=30)
    ).status_code == 202:
        assert time.time() < deadline
        time.sleep(0.5)
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(res.content)).size == (256, 256)
