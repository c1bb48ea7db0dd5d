"""Artifact encodings (PNG/JPEG/WEBP), the x4 latent upscaler's noise level and pre-resize, and
the x4plus-style Real-ESRGAN demo engine, all through the Runner on demo engines."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stableserve.core.engines import Family
from stableserve.core.types import GenerationRequest, OutputFormat, Task, WeightedPrompt
from stableserve.inference.demo import (
    DEMO_VERSION,
    ESRGAN_WEIGHTS,
    build_demo_pipeline,
    demo_folder,
    ensure_demo_pipeline,
)
from stableserve.inference.imaging import encode_image, png_bytes
from stableserve.inference.runner import latent_upscale_input
from stableserve.inference.spandrel_compat import import_spandrel
from tests.worker.conftest import encode, gradient

P = (WeightedPrompt(text="a red circle on a blue background"),)
LATENT = "stable-diffusion-x4-latent-upscaler"
SIGNATURES = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# -- encodings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(OutputFormat), ids=lambda f: f.value)
def test_text_to_image_artifacts_follow_output_format(runner, fmt: OutputFormat) -> None:
    req = GenerationRequest(
        engine_id="stable-diffusion-v1-5",
        prompts=P,
        width=64,
        height=64,
        steps=1,
        seed=11,
        samples=2,
        output_format=fmt,
    )
    arts = runner.generate(req)
    assert [a.mime for a in arts] == [fmt.mime] * 2
    for a in arts:
        img = _open(a.data)
        assert img.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt.value]
        assert img.size == (a.width, a.height) == (64, 64)
        assert img.mode == "RGB"
        if fmt != OutputFormat.PNG:
            assert not img.info.get("exif") and not img.info.get("icc_profile")
    if fmt == OutputFormat.WEBP:
        assert arts[0].data[:4] == b"RIFF" and arts[0].data[8:12] == b"WEBP"
    else:
        assert arts[0].data.startswith(SIGNATURES[fmt.value])
    again = runner.generate(req)
    assert [a.data for a in again] == [a.data for a in arts]  # same seed -> same bytes
    assert arts[0].data != arts[1].data


def test_lossy_encodings_are_close_to_the_png_pixels(runner) -> None:
    base = dict(engine_id="stable-diffusion-v1-5", prompts=P, width=64, height=64, steps=1, seed=5)
    png = np.asarray(_open(runner.generate(GenerationRequest(**base))[0].data), dtype=np.float32)
    for fmt in (OutputFormat.JPEG, OutputFormat.WEBP):
        art = runner.generate(GenerationRequest(**base, output_format=fmt))[0]
        lossy = np.asarray(_open(art.data).convert("RGB"), dtype=np.float32)
        assert np.abs(lossy - png).mean() < 16, fmt  # same picture, quality 95


def test_encode_image_drops_metadata_and_jpeg_alpha() -> None:
    img = gradient(24, 16, alpha=np.full((16, 24), 100))
    img.info.update(comment=b"secret", icc_profile=b"x" * 8, exif=b"Exif\x00\x00")
    for fmt in ("jpeg", "webp"):
        data = encode_image(img, fmt)
        out = _open(data)
        # WEBP keeps an alpha channel (background removal); JPEG has none.
        assert out.mode == ("RGBA" if fmt == "webp" else "RGB") and out.size == (24, 16)
        assert b"secret" not in data and "comment" not in out.info
        assert not out.info.get("icc_profile") and not out.info.get("exif")
        assert encode_image(img.copy(), fmt) == data
    assert encode_image(img, OutputFormat.PNG) == png_bytes(img)
    with pytest.raises(ValueError):
        encode_image(img, "gif")


def test_upscale_artifacts_follow_output_format(runner) -> None:
    req = GenerationRequest(
        engine_id="esrgan-v1-x2plus",
        task=Task.UPSCALE,
        prompts=(),
        init_image=encode(gradient(16, 8)),
        output_format=OutputFormat.WEBP,
    )
    a = runner.generate(req)[0]
    assert a.mime == "image/webp" and _open(a.data).size == (32, 16) == (a.width, a.height)


# -- x4 latent upscaler ------------------------------------------------------------------------


def _latent(**kw) -> GenerationRequest:
    kw.setdefault("init_image", encode(gradient(16, 16)))
    return GenerationRequest(engine_id=LATENT, task=Task.UPSCALE, prompts=P, steps=2, seed=3, **kw)


def test_latent_upscaler_noise_level_changes_the_output(runner) -> None:
    default = runner.generate(_latent())[0]
    explicit_default = runner.generate(_latent(noise_level=20))[0]
    noisy = runner.generate(_latent(noise_level=300))[0]
    clean = runner.generate(_latent(noise_level=0))[0]
    assert (noisy.width, noisy.height) == (default.width, default.height) == (64, 64)
    assert explicit_default.data == default.data  # None = the pipeline's default 20
    assert len({default.data, noisy.data, clean.data}) == 3
    assert runner.generate(_latent(noise_level=300))[0].data == noisy.data


def test_latent_upscaler_pre_resizes_to_the_requested_output(runner, monkeypatch) -> None:
    from stableserve.inference import runner as runner_mod

    seen: list[tuple[int, int]] = []
    real = runner_mod.latent_upscale_input

    def spy(image, output, factor=4):
        out = real(image, output, factor)
        seen.append(out.size)
        return out

    monkeypatch.setattr(runner_mod, "latent_upscale_input", spy)
    img = encode(gradient(64, 32))
    small = runner.generate(_latent(init_image=img, width=72))[0]  # 72x36 < 256x128
    assert (small.width, small.height) == (72, 36)
    assert _open(small.data).size == (72, 36)
    assert seen[-1] == (16, 8)  # 72/4 = 18 -> 16, 36/4 = 9 -> 8
    full = runner.generate(_latent(init_image=encode(gradient(24, 16))))[0]  # exactly 4x: no resize
    assert (full.width, full.height) == (96, 64) and seen[-1] == (24, 16)


@pytest.mark.parametrize(
    ("size", "output", "expected"),
    [
        ((64, 32), (72, 36), (16, 8)),  # rounded to multiples of 8
        ((64, 32), (256, 128), (64, 32)),  # exactly 4x: unchanged
        ((64, 32), (512, 256), (128, 64)),  # larger than 4x: enlarged first, diffusion does 4x
        ((64, 64), (20, 20), (8, 8)),  # at least 8
        ((100, 100), (396, 396), (96, 96)),
        ((6, 6), (20, 20), (8, 8)),
    ],
)
def test_latent_upscale_input_sizes(size, output, expected) -> None:
    img = gradient(*size)
    out = latent_upscale_input(img, output)
    assert out.size == expected
    if expected == size:
        assert out is img


# -- Real-ESRGAN x4plus ------------------------------------------------------------------------


def test_realesrgan_x4plus_upscales_4x_through_the_runner(runner) -> None:
    img = encode(gradient(16, 16))
    up = dict(engine_id="realesrgan-x4plus", task=Task.UPSCALE, prompts=(), init_image=img)
    a = runner.generate(GenerationRequest(**up))[0]
    assert (a.width, a.height) == (64, 64) and _open(a.data).size == (64, 64)
    assert runner.generate(GenerationRequest(**up))[0].data == a.data
    b = runner.generate(GenerationRequest(**up, width=48))[0]
    assert (b.width, b.height) == (48, 48)
    loaded = runner.cache.get(runner.registry.get("realesrgan-x4plus"))
    assert loaded.upscaler.scale == 4 and loaded.upscaler.input_channels == 3
    x2 = runner.cache.get(runner.registry.get("esrgan-v1-x2plus"))
    assert x2.upscaler.scale == 2


def test_esrgan_x4_demo_has_its_own_folder_and_is_reproducible(tmp_path: Path) -> None:
    folder = ensure_demo_pipeline(Family.UPSCALER_ESRGAN, tmp_path / "root", scale=4)
    assert folder == demo_folder(Family.UPSCALER_ESRGAN, tmp_path / "root", scale=4)
    assert folder.name == f"upscaler-esrgan-x4-{DEMO_VERSION}"
    assert demo_folder(Family.UPSCALER_ESRGAN, tmp_path, scale=2).name == f"upscaler-esrgan-{DEMO_VERSION}"
    model = import_spandrel().ModelLoader().load_from_file(str(folder / ESRGAN_WEIGHTS)).eval()
    assert (model.architecture.id, model.scale, model.input_channels) == ("ESRGAN", 4, 3)
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 8, 12)).shape == (1, 3, 32, 48)
    build_demo_pipeline(Family.UPSCALER_ESRGAN, tmp_path / "again", scale=4)
    assert (tmp_path / "again" / ESRGAN_WEIGHTS).read_bytes() == (folder / ESRGAN_WEIGHTS).read_bytes()


def test_demo_scale_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        demo_folder(Family.UPSCALER_ESRGAN, tmp_path, scale=3)
    with pytest.raises(ValueError):
        demo_folder(Family.SD1, tmp_path, scale=4)


def test_vae_tiling_only_above_the_threshold() -> None:
    from types import SimpleNamespace

    from stableserve.inference.runner import TILED_DECODE_PIXELS, vae_tiling

    calls: list[str] = []
    vae = SimpleNamespace(
        enable_tiling=lambda: calls.append("on"), disable_tiling=lambda: calls.append("off")
    )
    pipe = SimpleNamespace(vae=vae)
    with vae_tiling(pipe, 1536, 1536):
        assert calls == []
    assert TILED_DECODE_PIXELS == 1536 * 1536
    with pytest.raises(RuntimeError), vae_tiling(pipe, 2048, 2048):
        assert calls == ["on"]
        raise RuntimeError("pipeline failed")
    assert calls == ["on", "off"]  # restored even on failure
    with vae_tiling(None, 4096, 4096):  # ESRGAN: no VAE
        pass
