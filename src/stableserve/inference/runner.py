"""The runner: a resolved ``GenerationRequest`` -> diffusers (or spandrel) call -> ``Artifact`` list.

Tasks (CONTRACT.md §2.4): text-to-image; image-to-image (``schedule_start`` = diffusers
``strength``, ``schedule_end`` stops denoising early); masking (mask from a white-mask image,
a black-mask image or the init image's alpha; unmasked pixels come back exactly); upscale
(ESRGAN-family via spandrel, or the SD x4 latent upscaler with prompts and ``noise_level``),
resized to the requested width or height. The latent upscaler works on the input shrunk to about
a quarter of the requested size when that is smaller than the input, so its time and memory
follow the output asked for.

Segmentation (``inference.segmentation``): a masking request with ``MaskSource.TEXT_PROMPT``
takes its mask from the engine's ``segmenter`` (CLIPSeg, ``mask_prompt``); remove-background
returns the init image as RGBA with a CLIPSeg (+ ViTMatte) alpha.

Artifacts are encoded as ``request.output_format`` (PNG, JPEG or WEBP; ``imaging.encode_image``,
deterministic bytes) and carry its media type in ``Artifact.mime``.

Seeds: sample ``i`` uses ``seed + i`` (mod 2**32) through its own ``torch.Generator``, so the
same seed and parameters give identical pixels. Samples run in batches of at most
``settings.runner.max_batch``. ``progress(done, total)`` is called after every denoising step
and ``cancel`` (a ``threading.Event``) is checked there: setting it raises
``GenerationCancelled`` between two steps.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from stableserve.core.engines import EngineRegistry, EngineSpec, Family
from stableserve.core.images import decode_image
from stableserve.core.presets import apply_style_preset
from stableserve.core.types import SEED_MAX, Artifact, FinishReason, GenerationRequest, MaskSource, Task
from stableserve.core.validation import resolve
from stableserve.errors import (
    EngineNotReady,
    GenerationCancelled,
    GenerationFailed,
    InvalidRequest,
    StableServeError,
)
from stableserve.inference import safety
from stableserve.inference.controlnet import control_inputs, control_pipeline_class, resize_results
from stableserve.inference.imaging import (
    composite,
    encode_image,
    fit,
    fit_mask,
    grow_mask,
    pipeline_mask,
    relight,
    replace_mask,
    to_rgb,
)
from stableserve.inference.ip_adapter import style_conditioning
from stableserve.inference.loading import LoadedEngine
from stableserve.inference.model_cache import ModelCache
from stableserve.inference.prompts import encode_prompts
from stableserve.inference.samplers import make_noise_scheduler
from stableserve.settings import Settings

Progress = Callable[[int, int], None]


def _task_pipeline_class(family: Family, task: Task):
    """The diffusers pipeline class serving ``task`` for ``family`` (derived with ``from_pipe``)."""
    import diffusers as d

    sd = (d.StableDiffusionPipeline, d.StableDiffusionImg2ImgPipeline, d.StableDiffusionInpaintPipeline)
    xl = (d.StableDiffusionXLPipeline, d.StableDiffusionXLImg2ImgPipeline, d.StableDiffusionXLInpaintPipeline)
    sd3 = (d.StableDiffusion3Pipeline, d.StableDiffusion3Img2ImgPipeline, d.StableDiffusion3InpaintPipeline)
    table = {
        Family.SD1: sd,
        Family.SD2_512: sd,
        Family.SD2_768: sd,
        Family.INPAINT: sd,
        Family.SDXL: xl,
        Family.SDXL_BETA: xl,
        Family.SD3: sd3,
    }
    index = {Task.TEXT_TO_IMAGE: 0, Task.IMAGE_TO_IMAGE: 1, Task.MASKING: 2}[task]
    return table[family][index]


def _task_view(cls, base: Any, scheduler: Any, **extra: Any) -> Any:
    """A pipeline of class ``cls`` over ``base``'s components with its own noise scheduler.

    ``extra`` adds components ``cls`` takes that ``base`` lacks (a ControlNet engine's
    ``controlnet``); those ``cls`` does not take are ignored.

    The cached base pipeline is never modified and every task shares its weights. Built
    directly rather than with ``from_pipe``, which re-casts every module on each call.
    """
    expected, optional = cls._get_signature_keys(cls)
    parts = {k: v for k, v in base.components.items() if k in expected or k in optional}
    parts.update({k: None for k in expected if k not in parts})
    parts["scheduler"] = scheduler
    parts.update({k: v for k, v in extra.items() if k in expected or k in optional})
    if "requires_safety_checker" in optional:
        parts["requires_safety_checker"] = False
    pipe = cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_seeds(seed: int, samples: int) -> list[int]:
    """Seeds of each sample: seed, seed+1, ... wrapping inside 0..4294967295."""
    return [(seed + i) % (SEED_MAX + 1) for i in range(samples)]


class _StepHook:
    """Diffusers step callback: progress, cancellation and the ``schedule_end`` early stop."""

    def __init__(
        self,
        progress: Progress | None,
        cancel: threading.Event | None,
        offset: int,
        total: int,
        stop_fraction: float | None,
    ):
        self.progress, self.cancel = progress, cancel
        self.offset, self.total, self.stop_fraction = offset, total, stop_fraction
        self.steps = 0

    def _tick(self, pipe: Any, step: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelled("generation cancelled")
        self.steps = step + 1
        if self.progress is not None:
            self.progress(self.offset + step + 1, self.total)
        if self.stop_fraction is not None and pipe is not None:
            n = getattr(pipe, "num_timesteps", None) or getattr(pipe, "_num_timesteps", None)
            if n and step + 1 >= round(n * self.stop_fraction):
                pipe._interrupt = True

    def on_step_end(self, pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        """``callback_on_step_end`` of modern diffusers pipelines."""
        self._tick(pipe, step)
        return kwargs

    def legacy(self, step: int, timestep: Any, latents: Any) -> None:
        """``callback`` of pipelines without ``callback_on_step_end`` (the x4 upscaler)."""
        self._tick(None, step)


class Runner:
    """Runs generation requests on engines of ``registry`` with a shared ``ModelCache``.

    ``run`` takes a request already passed through ``core.validation.resolve``; ``generate``
    resolves first. Raises ``InvalidRequest`` / ``EngineNotReady`` / ``NotFound`` before any
    work, ``GenerationCancelled`` when cancelled, ``GenerationFailed`` when the pipeline fails.
    """

    def __init__(self, registry: EngineRegistry, settings: Settings, cache: ModelCache | None = None):
        self.registry = registry
        self.settings = settings
        self.cache = cache or ModelCache(settings)
        self._checkers: dict[str, Any] = {}  # engine id -> image safety checker (or None)

    def _screen(
        self, loaded: LoadedEngine, request: GenerationRequest, images: list[Image.Image]
    ) -> tuple[list[Image.Image], list[bool]]:
        """With ``request.image_safety == "blur"``: the images with the unsafe ones blurred, and
        which were (``inference.safety``); else the images unchanged. A checker that fails (or
        cannot be loaded) fails the job with ``GenerationFailed`` (nothing is charged)."""
        if request.image_safety != "blur":
            return images, [False] * len(images)
        engine_id = loaded.engine.id
        try:
            if engine_id not in self._checkers:
                self._checkers[engine_id] = safety.checker_for(loaded, self.settings)
            with torch.inference_mode():
                return safety.screen(images, self._checkers[engine_id])
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise GenerationFailed(f"image safety check failed on {engine_id}: {why}") from exc

    def generate(
        self,
        request: GenerationRequest,
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Artifact]:
        """Resolve ``request`` against its engine, then ``run`` it."""
        engine = self.registry.get(request.engine_id)
        return self.run(resolve(request, engine), progress=progress, cancel=cancel)

    def run(
        self,
        request: GenerationRequest,
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Artifact]:
        """Generate ``request.samples`` artifacts (``index`` 0.., ``seed`` per sample).

        Each is encoded as ``request.output_format`` with the matching ``mime``. Sizes:
        text-to-image ``request.width`` x ``request.height`` (with a control image: the
        control image's size); image-to-image, masking and background removal: the init
        image's size (the pipeline ran at ``width`` x ``height``); upscale: ``width`` x
        ``height``. Background removal artifacts are RGBA.
        """
        engine = self.registry.get(request.engine_id)
        loaded = self.cache.get(engine)
        try:
            with torch.inference_mode(), vae_tiling(loaded.pipeline, request.width, request.height):
                if request.task == Task.UPSCALE:
                    images = self._upscale(loaded, request, progress, cancel)
                elif request.task == Task.REMOVE_BACKGROUND:
                    images = self._remove_background(loaded, request, progress, cancel)
                else:
                    images = self._diffuse(loaded, request, progress, cancel)
        except StableServeError:
            raise
        except Exception as exc:  # pipeline failures become one clean domain error
            raise GenerationFailed(f"generation failed on {engine.id}: {type(exc).__name__}: {exc}") from exc
        return self.artifacts(loaded, request, images)

    def artifacts(self, loaded: LoadedEngine, request: GenerationRequest, images: list) -> list[Artifact]:
        """``images`` (PIL, one per sample, ``index`` order) of ``request`` through the safety
        screen (blurred and ``CONTENT_FILTERED`` when flagged), encoded in its output format,
        with their seeds."""
        images, filtered = self._screen(loaded, request, images)
        seeds = sample_seeds(request.seed, request.samples)
        fmt = request.output_format
        return [
            Artifact(
                index=i,
                seed=seeds[i],
                finish_reason=FinishReason.CONTENT_FILTERED if filtered[i] else FinishReason.SUCCESS,
                mime=fmt.mime,
                width=img.width,
                height=img.height,
                data=encode_image(img, fmt),
            )
            for i, img in enumerate(images)
        ]

    # -- diffusion tasks ---------------------------------------------------------------------
    def _diffuse(
        self,
        loaded: LoadedEngine,
        req: GenerationRequest,
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> list[Image.Image]:
        engine, base = loaded.engine, loaded.pipeline
        # ControlNet engines run the ControlNet pipeline of the task over the base components.
        controlnet = loaded.controlnet if req.control_image is not None else None
        if controlnet is not None:
            cls = control_pipeline_class(engine.family, req.task)
        else:
            cls = _task_pipeline_class(engine.family, req.task)
        assert req.sampler is not None and req.steps is not None
        scheduler = make_noise_scheduler(req.sampler, base.scheduler.config, engine.family, req.seed)
        pipe = _task_view(cls, base, scheduler, controlnet=controlnet)
        prompts = apply_style_preset(req.style_preset, req.prompts)
        cond = encode_prompts(pipe, engine.family, prompts, device=loaded.device, dtype=loaded.dtype)

        kwargs: dict[str, Any] = dict(
            num_inference_steps=req.steps, guidance_scale=req.cfg_scale, output_type="pil"
        )
        init = mask = None
        if req.task == Task.TEXT_TO_IMAGE:
            kwargs.update(width=req.width, height=req.height)
        else:
            assert req.init_image is not None
            init = decode_image(req.init_image.data, param="init_image")
            # The pipeline runs at the working size (width x height, default the init size);
            # the result comes back at the init size.
            work = (req.width or init.width, req.height or init.height)
            kwargs.update(image=fit(to_rgb(init), work), strength=req.schedule_start)
            if "width" in inspect.signature(pipe.__call__).parameters:
                # SD3's img2img defaults to 1024 x 1024 rather than the image's size.
                kwargs.update(width=work[0], height=work[1])
            if req.task == Task.MASKING:
                mask = (
                    np.asarray(self._text_mask(engine, init, req.mask_prompt or ""), dtype=np.float32) / 255.0
                    if req.mask_source == MaskSource.TEXT_PROMPT
                    else replace_mask(req, init)
                )
                mask = grow_mask(mask, req.grow_mask)
                if req.background_image is not None:  # the masked area starts from the reference
                    reference = decode_image(req.background_image.data, param="background_image")
                    start = composite(init, fit(to_rgb(reference), init.size), mask)
                    kwargs.update(image=fit(start, work))
                kwargs.update(mask_image=fit_mask(pipeline_mask(mask), work), width=work[0], height=work[1])
        # IP-Adapter engines: the style image and scale (scale 0 + a neutral image without one).
        kwargs.update(style_conditioning(pipe, req))
        control_size = None  # text-to-image with a control image: results come back at its size
        if controlnet is not None and engine.control_preprocess is not None:
            work = (kwargs.get("width", req.width), kwargs.get("height", req.height))
            control, control_size = control_inputs(req, engine.control_preprocess, work)
            kwargs.update(control)
        stop_fraction = None
        if req.schedule_end is not None and req.task != Task.TEXT_TO_IMAGE:
            start = req.schedule_start or 1.0
            stop_fraction = (start - req.schedule_end) / start

        seeds = sample_seeds(req.seed, req.samples)
        batch = self.settings.runner.max_batch
        chunks = [seeds[i : i + batch] for i in range(0, len(seeds), batch)]
        per_chunk = self._expected_steps(req)
        images: list[Image.Image] = []
        for n, chunk in enumerate(chunks):
            hook = _StepHook(progress, cancel, n * per_chunk, len(chunks) * per_chunk, stop_fraction)
            generators = [torch.Generator(loaded.device).manual_seed(s) for s in chunk]
            out = pipe(
                **cond,
                **kwargs,
                num_images_per_prompt=len(chunk),
                generator=generators,
                callback_on_step_end=hook.on_step_end,
            )
            images.extend(out.images)
        if mask is not None and init is not None:
            images = [composite(init, img, mask) for img in images]
        elif init is not None:
            images = [fit(img, init.size) for img in images]
        images = resize_results(images, control_size)
        if req.light_direction is not None:
            images = [relight(img, req.light_direction, req.light_strength) for img in images]
        return images

    @staticmethod
    def _expected_steps(req: GenerationRequest) -> int:
        steps = req.steps or 1
        if req.task in (Task.IMAGE_TO_IMAGE, Task.MASKING) and req.schedule_start is not None:
            steps = max(1, int(steps * req.schedule_start))
        return steps

    # -- upscaling ---------------------------------------------------------------------------
    def _upscale(
        self,
        loaded: LoadedEngine,
        req: GenerationRequest,
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> list[Image.Image]:
        assert req.init_image is not None and req.width and req.height
        image = to_rgb(decode_image(req.init_image.data, param="init_image"))
        if loaded.upscaler is not None:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("generation cancelled")
            out = _spandrel_upscale(loaded, image)
            if progress:
                progress(1, 1)
            outs = [out] * req.samples
        else:
            outs = self._latent_upscale(loaded, req, image, progress, cancel)
        return [
            o
            if o.size == (req.width, req.height)
            else o.resize((req.width, req.height), Image.Resampling.LANCZOS)
            for o in outs
        ]

    def _latent_upscale(
        self,
        loaded: LoadedEngine,
        req: GenerationRequest,
        image: Image.Image,
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> list[Image.Image]:
        engine, base = loaded.engine, loaded.pipeline
        assert req.sampler is not None and req.steps is not None and req.width and req.height
        image = latent_upscale_input(image, (req.width, req.height), engine.upscale_factor or 4)
        scheduler = make_noise_scheduler(req.sampler, base.scheduler.config, engine.family, req.seed)
        pipe = _task_view(type(base), base, scheduler)
        prompts = apply_style_preset(req.style_preset, req.prompts)
        cond: dict[str, Any] = (
            encode_prompts(pipe, engine.family, prompts, device=loaded.device, dtype=loaded.dtype)
            if prompts
            else {"prompt": ""}
        )
        extra: dict[str, Any] = {}
        if req.noise_level is not None:
            extra["noise_level"] = req.noise_level
        images = []
        total = req.samples * req.steps
        for i, seed in enumerate(sample_seeds(req.seed, req.samples)):
            hook = _StepHook(progress, cancel, i * req.steps, total, None)
            out = pipe(
                **cond,
                image=image,
                num_inference_steps=req.steps,
                guidance_scale=req.cfg_scale,
                generator=torch.Generator(loaded.device).manual_seed(seed),
                output_type="pil",
                callback=hook.legacy,
                callback_steps=1,
                **extra,
            )
            images.append(out.images[0])
        return images

    # -- segmentation: text-prompted masks and background removal (inference.segmentation) --
    def _text_mask(self, engine: EngineSpec, init: Image.Image, prompt: str) -> Image.Image:
        """``engine``'s text-prompted mask of ``init``: an ``L`` image of ``init``'s size, 255
        where its ``segmenter`` (CLIPSeg) finds what ``prompt`` names (probability >=
        ``segmentation.TEXT_MASK_THRESHOLD``), else 0.

        Loads the segmenter engine through the model cache. Raises ``InvalidRequest`` (param
        ``mask_prompt``) when ``engine`` has no ``segmenter``.
        """
        from stableserve.inference.segmentation import binary_mask, text_mask

        if engine.segmenter is None:
            raise InvalidRequest(
                f"mask_prompt: engine {engine.id} has no segmenter for text-prompted masks",
                code="bad_request",
                param="mask_prompt",
            )
        segmenter = self.cache.get(self.registry.get(engine.segmenter))
        return binary_mask(text_mask(segmenter, init, prompt))

    def _remove_background(
        self,
        loaded: LoadedEngine,
        req: GenerationRequest,
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> list[Image.Image]:
        """``req.samples`` copies of the init image with its background transparent (RGBA, init size).

        A ``matting-vitmatte`` engine refines the coarse mask of its ``segmenter`` (loaded
        through the cache); a ``segmenter-clipseg`` engine alone gives CLIPSeg's soft alpha
        (``segmentation.remove_background``). Raises ``EngineNotReady`` for a matting engine
        configured without a segmenter.
        """
        from stableserve.inference.segmentation import remove_background

        assert req.init_image is not None
        image = decode_image(req.init_image.data, param="init_image")
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("generation cancelled")
        engine = loaded.engine
        if engine.family == Family.MATTING_VITMATTE:
            if engine.segmenter is None:
                raise EngineNotReady(f"engine {engine.id} is not ready: a matting engine needs a 'segmenter'")
            segmenter = self.cache.get(self.registry.get(engine.segmenter))
            out = remove_background(loaded, segmenter, image)
        else:
            out = remove_background(None, loaded, image)
        if progress:
            progress(1, 1)
        return [out] * req.samples


TILED_DECODE_PIXELS = 2_359_296
"""Outputs above this many pixels (1536 x 1536) are VAE-decoded in tiles."""


@contextlib.contextmanager
def vae_tiling(pipeline: Any, width: int | None, height: int | None) -> Iterator[None]:
    """Decode in overlapping tiles (diffusers ``AutoencoderKL.enable_tiling``) while generating
    an output above ``TILED_DECODE_PIXELS``; restores untiled decoding afterwards.

    The VAE's mid-block self-attention is quadratic in latent pixels: a 2048 x 2048 decode of
    the x4 upscaler attends over 262,144 tokens at once, tiles over about 16,000 each. A
    pipeline without a tiling VAE (or ``None``, e.g. ESRGAN) is left alone.
    """
    vae = getattr(pipeline, "vae", None)
    tile = (width or 0) * (height or 0) > TILED_DECODE_PIXELS and hasattr(vae, "enable_tiling")
    if tile:
        vae.enable_tiling()
    try:
        yield
    finally:
        if tile:
            vae.disable_tiling()


def latent_upscale_input(image: Image.Image, output: tuple[int, int], factor: int = 4) -> Image.Image:
    """The input a latent upscaler of ``factor`` should see for an ``output`` (width, height).

    Returns ``image`` resized (LANCZOS) to about ``output / factor``: each side rounded to a
    multiple of 8, at least 8, so the upscaler's time and memory follow the requested output
    and the diffusion pass itself makes the whole enlargement (a 4 MP conservative upscale of
    a small image enlarges it first, then diffuses at 4x). Returns ``image`` itself when it
    already has that size. The upscaler's output is resized to exactly ``output`` afterwards.
    """
    out_w, out_h = output

    def side(n: int) -> int:
        return max(8, 8 * round(n / factor / 8))

    size = (side(out_w), side(out_h))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def _spandrel_upscale(loaded: LoadedEngine, image: Image.Image) -> Image.Image:
    """Run a spandrel super-resolution model on an RGB image: (H, W) -> (H*s, W*s)."""
    model = loaded.upscaler
    arr = np.asarray(image, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).to(loaded.device)
    y = model(x).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()
    return Image.fromarray(np.rint(y * 255.0).astype(np.uint8), mode="RGB")
