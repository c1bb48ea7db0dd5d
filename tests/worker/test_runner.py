"""The runner on demo engines: every task, every family, mask semantics, determinism, progress, cancel."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from stableserve.core.types import GenerationRequest, MaskSource, Sampler, Task, WeightedPrompt
from stableserve.errors import GenerationCancelled, InvalidRequest
from tests.worker.conftest import decode, encode, gradient

P = (WeightedPrompt(text="a red circle on a blue background"),)


def t2i(engine_id: str, **kw) -> GenerationRequest:
    kw.setdefault("prompts", P)
    kw.setdefault("steps", 2)
    kw.setdefault("seed", 7)
    return GenerationRequest(engine_id=engine_id, **kw)


@pytest.mark.parametrize(
    "engine_id",
    [
        "stable-diffusion-v1-5",
        "stable-diffusion-512-v2-1",
        "stable-diffusion-768-v2-1",
        "stable-diffusion-xl-1024-v1-0",
        "stable-diffusion-xl-beta-v2-2-2",
        "sd3.5-medium",
    ],
)
def test_text_to_image_every_family(runner, engine_id):
    arts = runner.generate(t2i(engine_id, width=128, height=64))
    assert len(arts) == 1
    a = arts[0]
    assert (a.width, a.height, a.seed, a.index, a.mime) == (128, 64, 7, 0, "image/png")
    assert decode(a.data).shape == (64, 128, 3)


def test_samples_have_consecutive_seeds_and_are_deterministic(runner):
    req = t2i("stable-diffusion-v1-5", width=64, height=64, samples=3, seed=4_294_967_294)
    first = runner.generate(req)
    assert [a.seed for a in first] == [4_294_967_294, 4_294_967_295, 0]
    assert [a.index for a in first] == [0, 1, 2]
    again = runner.generate(req)
    assert [a.data for a in first] == [a.data for a in again]
    assert first[0].data != first[1].data
    # The single-sample run with the second seed reproduces sample 1 of the batch.
    solo = runner.generate(t2i("stable-diffusion-v1-5", width=64, height=64, seed=4_294_967_295))
    assert np.abs(decode(solo[0].data).astype(int) - decode(first[1].data).astype(int)).max() <= 1


def test_batches_split_by_max_batch(demo_registry, stableserve_home):
    from stableserve.inference.runner import Runner
    from stableserve.settings import RunnerSettings, Settings

    small = Runner(demo_registry, Settings(home=stableserve_home, runner=RunnerSettings(max_batch=2)))
    calls = []
    arts = small.generate(
        t2i("stable-diffusion-v1-5", width=64, height=64, samples=3),
        progress=lambda d, t: calls.append((d, t)),
    )
    assert len(arts) == 3
    assert calls[-1] == (4, 4) and len(calls) == 4  # 2 chunks x 2 steps


@pytest.mark.parametrize("sampler", list(Sampler))
def test_every_sampler_runs_and_is_deterministic(runner, sampler):
    req = t2i("stable-diffusion-v1-5", width=64, height=64, sampler=sampler, steps=3)
    a, b = runner.generate(req)[0], runner.generate(req)[0]
    assert a.data == b.data


def test_image_to_image_strength_and_schedule(runner):
    init = encode(gradient(128, 128))
    base = dict(task=Task.IMAGE_TO_IMAGE, init_image=init, steps=10)
    calls = []
    out = runner.generate(
        t2i("stable-diffusion-v1-5", schedule_start=0.5, **base), progress=lambda d, t: calls.append(d)
    )
    assert (out[0].width, out[0].height) == (128, 128)
    assert len(calls) == 5  # diffusers runs steps * strength
    early = []
    runner.generate(
        t2i("stable-diffusion-v1-5", schedule_start=0.6, schedule_end=0.3, **base),
        progress=lambda d, t: early.append(d),
    )
    assert len(early) == 3  # (0.6 - 0.3) / 0.6 of the 6 scheduled steps
    # a tiny strength keeps the init image far closer than a full one
    init_px = decode(init.data).astype(int)
    weak = decode(runner.generate(t2i("stable-diffusion-v1-5", schedule_start=0.1, **base))[0].data).astype(
        int
    )
    strong = decode(runner.generate(t2i("stable-diffusion-v1-5", schedule_start=1.0, **base))[0].data).astype(
        int
    )
    assert np.abs(weak - init_px).mean() < np.abs(strong - init_px).mean()


def _mask_inputs(source: MaskSource):
    h = w = 128
    region = np.zeros((h, w), dtype=np.uint8)
    region[32:96, 40:88] = 255  # the area to replace
    if source == MaskSource.INIT_IMAGE_ALPHA:
        return encode(gradient(w, h, alpha=255 - region)), None, region
    mask = region if source == MaskSource.MASK_IMAGE_WHITE else 255 - region
    return encode(gradient(w, h)), encode(Image.fromarray(mask, "L")), region


V1_MASK_SOURCES = [s for s in MaskSource if s != MaskSource.TEXT_PROMPT]  # TEXT_PROMPT: test_segmentation


@pytest.mark.parametrize("source", V1_MASK_SOURCES)
@pytest.mark.parametrize("engine_id", ["stable-inpainting-512-v2-0", "stable-diffusion-v1-5"])
def test_masking_preserves_unmasked_pixels_exactly(runner, source, engine_id):
    init, mask, region = _mask_inputs(source)
    req = t2i(engine_id, task=Task.MASKING, init_image=init, mask_image=mask, mask_source=source, steps=3)
    out = decode(runner.generate(req)[0].data)
    original = np.asarray(Image.open(__import__("io").BytesIO(init.data)).convert("RGB"))
    keep = region == 0
    assert out.shape == original.shape
    assert np.array_equal(out[keep], original[keep])
    assert np.abs(out[~keep].astype(int) - original[~keep].astype(int)).mean() > 5


def test_grey_mask_is_a_linear_strength(runner):
    init = encode(gradient(128, 128))
    half = encode(Image.new("L", (128, 128), 128))
    full = encode(Image.new("L", (128, 128), 255))
    base = dict(task=Task.MASKING, init_image=init, mask_source=MaskSource.MASK_IMAGE_WHITE, steps=3)
    a = decode(runner.generate(t2i("stable-inpainting-512-v2-0", mask_image=half, **base))[0].data).astype(
        float
    )
    b = decode(runner.generate(t2i("stable-inpainting-512-v2-0", mask_image=full, **base))[0].data).astype(
        float
    )
    src = decode(init.data).astype(float)
    expected = src * (1 - 128 / 255) + b * (128 / 255)
    assert np.abs(a - expected).max() <= 1.0


def test_esrgan_upscale_with_width_or_height(runner):
    img = encode(gradient(64, 32))
    up = dict(task=Task.UPSCALE, prompts=(), init_image=img)
    a = runner.generate(GenerationRequest(engine_id="esrgan-v1-x2plus", **up))[0]
    assert (a.width, a.height) == (128, 64)
    b = runner.generate(GenerationRequest(engine_id="esrgan-v1-x2plus", width=256, **up))[0]
    assert (b.width, b.height) == (256, 128)
    c = runner.generate(GenerationRequest(engine_id="esrgan-v1-x2plus", height=96, **up))[0]
    assert (c.width, c.height) == (192, 96)


def test_latent_x4_upscale_with_prompt(runner):
    img = encode(gradient(32, 32))
    req = GenerationRequest(
        engine_id="stable-diffusion-x4-latent-upscaler",
        task=Task.UPSCALE,
        prompts=P,
        init_image=img,
        steps=2,
        seed=3,
    )
    a = runner.generate(req)[0]
    assert (a.width, a.height) == (128, 128)
    assert runner.generate(req)[0].data == a.data
    no_prompt = req.model_copy(update={"prompts": ()})
    assert runner.generate(no_prompt)[0].width == 128


def test_style_preset_and_weighted_prompts_change_the_image(runner):
    base = runner.generate(t2i("stable-diffusion-v1-5", width=64, height=64))[0].data
    styled = runner.generate(t2i("stable-diffusion-v1-5", width=64, height=64, style_preset="pixel-art"))[
        0
    ].data
    neg = runner.generate(
        t2i(
            "stable-diffusion-v1-5",
            width=64,
            height=64,
            prompts=P + (WeightedPrompt(text="blurry", weight=-1),),
        )
    )[0].data
    emph = runner.generate(
        t2i(
            "stable-diffusion-v1-5",
            width=64,
            height=64,
            prompts=(WeightedPrompt(text="a (red:1.6) circle on a blue background"),),
        )
    )[0].data
    assert len({base, styled, neg, emph}) == 4


def test_progress_and_cancel(runner):
    calls = []
    runner.generate(
        t2i("stable-diffusion-v1-5", width=64, height=64, steps=4), progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    cancel = threading.Event()

    def stop_after_two(done, total):
        if done == 2:
            cancel.set()

    seen = []
    with pytest.raises(GenerationCancelled):
        runner.generate(
            t2i("stable-diffusion-v1-5", width=64, height=64, steps=6),
            progress=lambda d, t: (seen.append(d), stop_after_two(d, t)),
            cancel=cancel,
        )
    assert seen == [1, 2]


def test_model_cache_shares_components_between_tasks(runner):
    runner.generate(t2i("stable-diffusion-v1-5", width=64, height=64))
    loaded = runner.cache.get(runner.registry.get("stable-diffusion-v1-5"))
    unet = loaded.pipeline.unet
    runner.generate(
        t2i("stable-diffusion-v1-5", task=Task.IMAGE_TO_IMAGE, init_image=encode(gradient(64, 64)))
    )
    assert runner.cache.get(runner.registry.get("stable-diffusion-v1-5")).pipeline.unet is unet


def test_bad_requests_are_domain_errors(runner):
    with pytest.raises(InvalidRequest) as exc:
        runner.generate(t2i("sd3.5-medium", width=64, height=64, sampler=Sampler.DDIM))
    assert exc.value.param == "sampler"
    with pytest.raises(InvalidRequest) as exc:
        runner.generate(
            t2i(
                "stable-diffusion-v1-5",
                task=Task.IMAGE_TO_IMAGE,
                init_image=encode(gradient(64, 64)).model_copy(update={"data": b"not an image"}),
            )
        )
    assert exc.value.code == "invalid_mime_type"


@pytest.mark.parametrize(
    "engine_id", ["sd3.5-large", "stable-diffusion-xl-1024-v1-0", "stable-diffusion-v1-5"]
)
def test_image_to_image_keeps_the_init_size_in_every_family(runner, engine_id):
    """SD3's img2img pipeline would default to 1024 x 1024; the output is the init image's size."""
    req = t2i(engine_id, task=Task.IMAGE_TO_IMAGE, init_image=encode(gradient(128, 64)), steps=2)
    out = runner.generate(req)[0]
    assert (out.width, out.height) == (128, 64)
    assert Image.open(io.BytesIO(out.data)).size == (128, 64)


def test_strength_zero_still_runs_one_step(runner):
    """schedule_start 0 (v1 image_strength 1, v2beta strength 0) is raised to one step."""
    calls = []
    req = t2i("stable-diffusion-v1-5", task=Task.IMAGE_TO_IMAGE, init_image=encode(gradient(64, 64)), steps=4)
    out = runner.generate(
        req.model_copy(update={"schedule_start": 0.0}), progress=lambda d, t: calls.append(d)
    )
    assert out[0].width == 64 and len(calls) == 1
