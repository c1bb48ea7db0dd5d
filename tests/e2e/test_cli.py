"""The CLI as a user runs it: a subprocess per command, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "stableserve", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def test_generate_twice_writes_byte_identical_pngs(tmp_path):
    outs = []
    for n in range(2):
        path = tmp_path / f"lighthouse-{n}.png"
        r = cli(
            "generate",
            "A lighthouse on a cliff",
            "--engine",
            "stable-diffusion-v1-5",
            "--seed",
            "42",
            "--steps",
            "8",
            "-o",
            str(path),
        )
        assert r.returncode == 0, r.stderr
        assert "wrote" in r.stdout and "seed 42" in r.stdout and "demo engine" in r.stderr
        outs.append(path.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0][:8] == b"\x89PNG\r\n\x1a\n"


def test_engines_list_shows_readiness():
    demo = cli("engines", "list")
    assert demo.returncode == 0
    assert "stable-diffusion-xl-1024-v1-0" in demo.stdout and "upscaler-esrgan" in demo.stdout
    public = cli("engines", "list", "--engines", "public")
    assert public.returncode == 0
    assert "stableserve models pull" in public.stdout


def test_not_ready_engine_and_unreachable_hub_are_clear_errors():
    r = cli("generate", "a cat", "--engines", "public", "--engine", "stable-diffusion-v1-5", "-o", "x.png")
    assert r.returncode == 2
    assert "engine stable-diffusion-v1-5 is not ready" in r.stderr
    assert "stableserve models pull stable-diffusion-v1-5" in r.stderr.replace("\n", " ")
    assert "Traceback" not in r.stderr
    pulled = cli(
        "models",
        "pull",
        "stable-diffusion-v1-5",
        "--engines",
        "public",
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"},
    )
    assert pulled.returncode == 2
    assert "could not download" in pulled.stderr and "Traceback" not in pulled.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--sampler", "K_WHATEVER"], "K_WHATEVER"),
        (["--style-preset", "watercolor"], "style_preset"),
        (["--steps", "0"], "--steps"),
        (["--engine", "nope"], "The specified engine (ID nope) was not found."),
        (["--width", "500", "--height", "512"], "multiples of 64"),
        (["--init-image", "README.md"], "must be a PNG, JPEG or WEBP image"),
        (["--init-image", "missing.png"], "cannot read"),
    ],
)
def test_bad_input_is_a_clear_error_not_a_traceback(args, fragment):
    r = cli("generate", "a cat", "-o", "unused.png", *args)
    assert r.returncode == 2
    assert fragment in " ".join((r.stderr + r.stdout).split())
    assert "Traceback" not in r.stderr


def test_invalid_registry_file_names_file_engine_and_field(tmp_path):
    bad = tmp_path / "engines.yaml"
    bad.write_text(
        "engines:\n  - id: mine\n    name: x\n    description: y\n    family: sd1\n"
        "    source: {kind: demo}\n    tasks: [text-to-image]\n    dimensions: {kind: any}\n"
        "    price: {per_image: 1}\n    default_steps: 500\n"
    )
    r = cli("engines", "list", "--engines", str(bad))
    assert r.returncode == 2
    text = " ".join(r.stderr.split())
    assert str(bad) in text.replace(" ", "") or str(bad) in text
    assert "engine mine" in text and "default_steps" in text


def test_upscale_and_masking_from_the_cli(tmp_path):
    from PIL import Image

    img = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(img)
    up = tmp_path / "up.png"
    r = cli("generate", "", "--engine", "esrgan-v1-x2plus", "--init-image", str(img), "-o", str(up))
    assert r.returncode == 0, r.stderr
    assert Image.open(up).size == (128, 128)
    assert Path(up).exists()


def test_background_removal_control_and_style_from_the_cli(tmp_path):
    from PIL import Image

    img = tmp_path / "in.png"
    Image.new("RGB", (96, 64), (40, 160, 90)).save(img)
    cut = tmp_path / "cut.png"
    r = cli(
        "generate", "", "--engine", "vitmatte-small-composition-1k", "--init-image", str(img), "-o", str(cut)
    )
    assert r.returncode == 0, r.stderr
    assert Image.open(cut).mode == "RGBA" and Image.open(cut).size == (96, 64)
    sketch = tmp_path / "sketch.png"
    args = (
        "--control-image",
        str(img),
        "--width",
        "512",
        "--height",
        "512",
        "--steps",
        "2",
        "-o",
        str(sketch),
    )
    r = cli("generate", "a house", "--engine", "sd15-controlnet-scribble", *args)
    assert r.returncode == 0, r.stderr
    assert Image.open(sketch).size == (96, 64)  # a control result keeps the control image's size
    styled = tmp_path / "styled.png"
    r = cli(
        "generate",
        "a house",
        "--engine",
        "sd15-ip-adapter",
        "--style-image",
        str(img),
        "--steps",
        "2",
        "-o",
        str(styled),
    )
    assert r.returncode == 0, r.stderr
    assert Image.open(styled).size == (512, 512)
    r = cli("generate", "a house", "--engine", "sd15-controlnet-canny", "-o", str(tmp_path / "x.png"))
    assert r.returncode != 0 and "control_image" in r.stderr and "Traceback" not in r.stderr
