"""Engine-aware validation: the dimension rules of every family, tasks, samplers, defaults, pricing."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from stableserve.core.engines import load_registry
from stableserve.core.pricing import price
from stableserve.core.types import GenerationRequest, ImageInput, MaskSource, Sampler, Task, WeightedPrompt
from stableserve.core.validation import resolve
from stableserve.errors import InvalidRequest

REG = load_registry("public")
P = (WeightedPrompt(text="a red circle"),)


def req(engine_id: str, **kw) -> GenerationRequest:
    kw.setdefault("prompts", P)
    return GenerationRequest(engine_id=engine_id, **kw)


def png(w: int, h: int, mode: str = "RGB", fmt: str = "PNG") -> ImageInput:
    buf = io.BytesIO()
    Image.new(mode, (w, h), (10, 20, 30, 0) if mode == "RGBA" else 128 if mode == "L" else (10, 20, 30)).save(
        buf, format=fmt
    )
    return ImageInput(data=buf.getvalue())


def check(engine_id: str, w: int, h: int) -> str | None:
    try:
        resolve(req(engine_id, width=w, height=h), REG.get(engine_id))
    except InvalidRequest as exc:
        return exc.code
    return None


@pytest.mark.parametrize(
    "engine_id", ["stable-diffusion-v1-5", "stable-diffusion-512-v2-1", "stable-diffusion-v1"]
)
def test_512_engines_pixel_range(engine_id):
    assert check(engine_id, 512, 512) is None
    assert check(engine_id, 1024, 1024) is None  # 1,048,576 exactly
    assert check(engine_id, 512, 448) == "invalid_pixel_count"  # 229,376 < 262,144
    assert check(engine_id, 1088, 1024) == "invalid_pixel_count"
    assert check(engine_id, 512, 500) == "invalid_height_or_width"
    assert check(engine_id, 2048, 128) is None  # 262,144 px exactly, min side 128
    assert check(engine_id, 4096, 64) == "invalid_height_or_width"  # side below 128


@pytest.mark.parametrize("engine_id", ["stable-diffusion-768-v2-1", "stable-diffusion-768-v2-0"])
def test_768_engines_pixel_range(engine_id):
    assert check(engine_id, 768, 768) is None
    assert check(engine_id, 512, 512) == "invalid_pixel_count"
    assert check(engine_id, 1024, 1024) is None
    assert check(engine_id, 1024, 1088) == "invalid_pixel_count"
    assert resolve(req(engine_id), REG.get(engine_id)).width == 768


SDXL_SIZES = [
    (1024, 1024),
    (1152, 896),
    (1216, 832),
    (1344, 768),
    (1536, 640),
    (640, 1536),
    (768, 1344),
    (832, 1216),
    (896, 1152),
]


@pytest.mark.parametrize("engine_id", ["stable-diffusion-xl-1024-v1-0", "stable-diffusion-xl-1024-v0-9"])
def test_sdxl_nine_sizes(engine_id):
    for w, h in SDXL_SIZES:
        assert check(engine_id, w, h) is None
    assert check(engine_id, 512, 512) == "invalid_sdxl_v1_dimensions"
    assert check(engine_id, 1024, 960) == "invalid_sdxl_v1_dimensions"
    r = resolve(req(engine_id), REG.get(engine_id))
    assert (r.width, r.height) == (1024, 1024)


def test_sdxl_beta_rule():
    e = "stable-diffusion-xl-beta-v2-2-2"
    assert check(e, 512, 512) is None
    assert check(e, 512, 896) is None and check(e, 896, 512) is None
    assert check(e, 128, 128) is None
    assert check(e, 576, 576) == "invalid_sdxl_v222_dimensions"  # both sides over 512
    assert check(e, 512, 960) == "invalid_sdxl_v222_dimensions"  # over 896
    assert check(e, 64, 512) == "invalid_sdxl_v222_dimensions"  # below 128
    assert check(e, 500, 512) == "invalid_height_or_width"


def test_sd3_rule_and_flow_samplers():
    e = "sd3.5-large"
    assert check(e, 1024, 1024) is None
    assert check(e, 1536, 1536) is None
    assert check(e, 2048, 2048) == "invalid_pixel_count"
    with pytest.raises(InvalidRequest) as exc:
        resolve(req(e, sampler=Sampler.K_DPMPP_2M), REG.get(e))
    assert exc.value.param == "sampler"
    assert resolve(req(e, sampler=Sampler.K_HEUN), REG.get(e)).sampler == Sampler.K_HEUN


def test_defaults_are_filled():
    r = resolve(req("stable-diffusion-v1-5"), REG.get("stable-diffusion-v1-5"))
    assert (r.width, r.height, r.steps, r.sampler) == (512, 512, 30, Sampler.K_DPMPP_2M)
    assert 1 <= r.seed <= 4_294_967_295
    assert resolve(req("stable-diffusion-v1-5", seed=42), REG.get("stable-diffusion-v1-5")).seed == 42


def test_task_support_and_prompts():
    with pytest.raises(InvalidRequest, match="does not support"):
        resolve(req("stable-inpainting-512-v2-0"), REG.get("stable-inpainting-512-v2-0"))
    with pytest.raises(InvalidRequest) as exc:
        resolve(
            req("stable-diffusion-v1-5", prompts=(WeightedPrompt(text="bad", weight=-1),)),
            REG.get("stable-diffusion-v1-5"),
        )
    assert exc.value.code == "invalid_prompts"
    with pytest.raises(InvalidRequest) as exc:
        resolve(
            req("stable-diffusion-v1-5", prompts=(WeightedPrompt(text="   "),)),
            REG.get("stable-diffusion-v1-5"),
        )
    assert exc.value.code == "invalid_prompts"
    with pytest.raises(InvalidRequest) as exc:
        resolve(req("stable-diffusion-v1-5", style_preset="watercolor"), REG.get("stable-diffusion-v1-5"))
    assert exc.value.param == "style_preset"


def test_image_to_image_follows_init_image_and_checks_it():
    e = REG.get("stable-diffusion-v1-5")
    r = resolve(req(e.id, task=Task.IMAGE_TO_IMAGE, init_image=png(640, 512)), e)
    assert (r.width, r.height, r.schedule_start) == (640, 512, 0.65)
    with pytest.raises(InvalidRequest) as exc:
        resolve(req(e.id, task=Task.IMAGE_TO_IMAGE, init_image=png(300, 300)), e)
    assert exc.value.code == "invalid_height_or_width"
    with pytest.raises(InvalidRequest) as exc:
        resolve(req(e.id, task=Task.IMAGE_TO_IMAGE), e)
    assert exc.value.message == "init_image: is required"
    with pytest.raises(InvalidRequest) as exc:
        resolve(req(e.id, task=Task.IMAGE_TO_IMAGE, init_image=ImageInput(data=b"GIF89a not an image")), e)
    assert exc.value.code == "invalid_mime_type"


def test_masking_sources():
    e = REG.get("stable-inpainting-512-v2-0")
    init = png(512, 512)
    ok = resolve(
        req(
            e.id,
            task=Task.MASKING,
            init_image=init,
            mask_image=png(512, 512, "L"),
            mask_source=MaskSource.MASK_IMAGE_BLACK,
        ),
        e,
    )
    assert ok.schedule_start == 1.0
    cases = [
        (dict(mask_source=MaskSource.MASK_IMAGE_WHITE), "invalid_mask_image"),
        (
            dict(mask_source=MaskSource.MASK_IMAGE_WHITE, mask_image=png(512, 576, "L")),
            "invalid_image_dimensions",
        ),
        (dict(mask_source=MaskSource.INIT_IMAGE_ALPHA), "invalid_mask_image"),
        (dict(mask_image=png(512, 512, "L")), "bad_request"),
    ]
    for extra, code in cases:
        with pytest.raises(InvalidRequest) as exc:
            resolve(req(e.id, task=Task.MASKING, init_image=init, **extra), e)
        assert exc.value.code == code, extra
    alpha = resolve(
        req(
            e.id, task=Task.MASKING, init_image=png(512, 512, "RGBA"), mask_source=MaskSource.INIT_IMAGE_ALPHA
        ),
        e,
    )
    assert alpha.width == 512


def test_upscale_sizes():
    e = REG.get("esrgan-v1-x2plus")
    up = dict(task=Task.UPSCALE, prompts=(), init_image=png(512, 256))
    r = resolve(req(e.id, **up), e)
    assert (r.width, r.height, r.steps) == (1024, 512, None)
    r = resolve(req(e.id, width=2048, **up), e)
    assert (r.width, r.height) == (2048, 1024)
    r = resolve(req(e.id, height=768, **up), e)
    assert (r.width, r.height) == (1536, 768)
    with pytest.raises(InvalidRequest) as exc:
        resolve(req(e.id, width=4096, **up), e)  # 4096 x 2048 > 4,194,304
    assert exc.value.code == "invalid_pixel_count"
    with pytest.raises(InvalidRequest, match="only one of width or height"):
        resolve(req(e.id, width=1024, height=512, **up), e)
    x4 = REG.get("stable-diffusion-x4-latent-upscaler")
    r = resolve(req(x4.id, task=Task.UPSCALE, init_image=png(128, 128)), x4)
    assert (r.width, r.height) == (512, 512)


def test_decompression_bomb_is_a_clean_error():
    big = png(5000, 4000, "L")
    with pytest.raises(InvalidRequest) as exc:
        resolve(
            req("stable-diffusion-v1-5", task=Task.IMAGE_TO_IMAGE, init_image=big),
            REG.get("stable-diffusion-v1-5"),
        )
    assert exc.value.code == "invalid_pixel_count"


def test_pricing_rules():
    sdxl = REG.get("stable-diffusion-xl-1024-v1-0")
    assert price(sdxl, resolve(req(sdxl.id, steps=30), sdxl)) == pytest.approx(0.9)
    assert price(sdxl, resolve(req(sdxl.id, steps=50), sdxl)) == pytest.approx(1.5)
    assert price(sdxl, resolve(req(sdxl.id, steps=10, samples=3), sdxl)) == pytest.approx(2.7)
    sd = REG.get("stable-diffusion-v1-5")
    base = price(sd, resolve(req(sd.id, steps=30), sd))
    assert price(sd, resolve(req(sd.id, steps=30, width=1024, height=1024), sd)) == pytest.approx(base * 4)
