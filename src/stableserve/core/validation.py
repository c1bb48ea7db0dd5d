"""Engine-aware validation and defaults: turns a ``GenerationRequest`` into a resolved one.

``resolve(request, engine)`` checks what only the engine knows (task, sizes per family,
sampler support, images and masks) and fills every default (size, steps, sampler, random
seed), so the worker, pricing and the job record all see concrete values. Error codes are
the Stability v1 names (CONTRACT.md §2.6); adapters map them to their wire bodies.
"""

from __future__ import annotations

import secrets

from stableserve.core.engines import DimensionRule, EngineSpec, Family
from stableserve.core.images import decode_image, has_alpha
from stableserve.core.presets import STYLE_PRESETS
from stableserve.core.types import SEED_MAX, GenerationRequest, MaskSource, Task
from stableserve.errors import InvalidRequest

DEFAULT_SCHEDULE_START = {Task.IMAGE_TO_IMAGE: 0.65, Task.MASKING: 1.0}
"""``step_schedule_start`` defaults: v1 ``image_strength`` 0.35 for image-to-image; masking repaints fully."""

UPSCALE_MAX_INTERMEDIATE_PIXELS = 16_777_216
"""Upscalers run at their native factor first; that intermediate image is capped at 16 MP."""


def check_dimensions(rule: DimensionRule, width: int, height: int, *, what: str = "height and width") -> None:
    """Raise ``InvalidRequest`` unless (width, height) in pixels satisfies ``rule``.

    Codes: ``invalid_height_or_width`` (not a multiple / side too small), the rule's ``error``
    (``invalid_pixel_count``, ``invalid_sdxl_v1_dimensions``, ``invalid_sdxl_v222_dimensions``).
    """
    if rule.kind == "any":
        return
    if rule.kind == "fixed":
        if (width, height) not in rule.sizes:
            allowed = ", ".join(f"{w}x{h}" for w, h in rule.sizes)
            raise InvalidRequest(
                f"{what}: {width}x{height} is not allowed for this engine; allowed (w x h): {allowed}",
                code=rule.error,
                param="width",
            )
        return
    if width % rule.multiple or height % rule.multiple:
        raise InvalidRequest(
            f"{what}: {width}x{height}; height and width must be multiples of {rule.multiple}",
            code="invalid_height_or_width",
            param="width" if width % rule.multiple else "height",
        )
    if width < rule.min_side or height < rule.min_side:
        raise InvalidRequest(
            f"{what}: {width}x{height}; height and width must be at least {rule.min_side}",
            code="invalid_height_or_width" if rule.kind == "pixel_range" else rule.error,
            param="width" if width < rule.min_side else "height",
        )
    if rule.kind == "sdxl_beta":
        max_side = rule.max_side or 896
        if (width > 512 and height > 512) or width > max_side or height > max_side:
            raise InvalidRequest(
                f"{what}: {width}x{height}; sides must be >= {rule.min_side}, only one side may exceed 512 "
                f"and none may exceed {max_side}",
                code=rule.error,
                param="width",
            )
        return
    pixels = width * height
    lo, hi = rule.min_pixels or 0, rule.max_pixels or pixels
    if not lo <= pixels <= hi:
        raise InvalidRequest(
            f"{what}: {width}x{height} = {pixels} pixels; must be between {lo} and {hi}",
            code="invalid_pixel_count",
            param="width",
        )


#: At most this many weighted prompts per request (every protocol; gRPC has no other cap).
MAX_PROMPTS = 64
#: At most this many characters in one prompt or mask prompt (``WeightedPrompt`` enforces it
#: too; v1's schema caps a prompt at 2,000).
MAX_PROMPT_CHARS = 10_000


def _check_prompts(request: GenerationRequest, engine: EngineSpec) -> None:
    needs_prompt = request.task not in (Task.UPSCALE, Task.REMOVE_BACKGROUND)
    if len(request.prompts) > MAX_PROMPTS:
        raise InvalidRequest(
            f"text_prompts: at most {MAX_PROMPTS} prompts are allowed",
            code="invalid_prompts",
            param="prompts",
        )
    texts = [p.text for p in request.prompts] + [request.mask_prompt or ""]
    if any(len(text) > MAX_PROMPT_CHARS for text in texts):
        raise InvalidRequest(
            f"text_prompts: a prompt may be at most {MAX_PROMPT_CHARS} characters",
            code="invalid_prompts",
            param="prompts",
        )
    for p in request.prompts:
        if not p.text.strip():
            raise InvalidRequest(
                "text_prompts: prompts may not be blank", code="invalid_prompts", param="prompts"
            )
        if p.weight == 0:
            raise InvalidRequest(
                "text_prompts: a weight of 0 has no effect", code="invalid_prompts", param="prompts"
            )
    if needs_prompt and not request.positive_prompts:
        raise InvalidRequest(
            "text_prompts: at least one prompt with a positive weight is required",
            code="invalid_prompts",
            param="prompts",
        )


def _resolve_masking(
    request: GenerationRequest, init_size: tuple[int, int], init_alpha: bool, segmenter: str | None = None
) -> None:
    source = request.mask_source
    if source is None:
        raise InvalidRequest("mask_source: is required", code="bad_request", param="mask_source")
    if source == MaskSource.TEXT_PROMPT:  # the engine's segmenter masks what mask_prompt names
        if segmenter is None:
            raise InvalidRequest(
                f"mask_prompt: engine {request.engine_id} has no segmenter for text-prompted masks",
                code="bad_request",
                param="mask_prompt",
            )
        if request.mask_prompt is None or not request.mask_prompt.strip():
            raise InvalidRequest(
                "mask_prompt: is required when mask_source is TEXT_PROMPT",
                code="bad_request",
                param="mask_prompt",
            )
        return
    if source == MaskSource.INIT_IMAGE_ALPHA:
        if not init_alpha:
            raise InvalidRequest(
                "init_image: mask_source INIT_IMAGE_ALPHA needs an init_image with an alpha channel",
                code="invalid_mask_image",
                param="init_image",
            )
        return
    if request.mask_image is None:
        raise InvalidRequest(
            f"mask_image: is required when mask_source is {source.value}",
            code="invalid_mask_image",
            param="mask_image",
        )
    mask = decode_image(request.mask_image.data, param="mask_image")
    if mask.size != init_size:
        raise InvalidRequest(
            f"mask_image: {mask.size[0]}x{mask.size[1]} must have the same dimensions as init_image "
            f"({init_size[0]}x{init_size[1]})",
            code="invalid_image_dimensions",
            param="mask_image",
        )


def _resolve_upscale(request: GenerationRequest, engine: EngineSpec, in_w: int, in_h: int) -> tuple[int, int]:
    factor = engine.upscale_factor or 2
    if request.width is not None and request.height is not None:
        raise InvalidRequest("width, height: only one of width or height may be given", param="width")
    if request.width is not None:
        width, height = request.width, max(1, round(request.width * in_h / in_w))
    elif request.height is not None:
        width, height = max(1, round(request.height * in_w / in_h)), request.height
    else:
        width, height = in_w * factor, in_h * factor
    limit = engine.max_output_pixels
    if limit and width * height > limit:
        raise InvalidRequest(
            f"width, height: the output {width}x{height} = {width * height} pixels exceeds {limit}",
            code="invalid_pixel_count",
            param="width",
        )
    # The latent x4 upscaler first shrinks its input to output / 4 (runner), so only ESRGAN's
    # native-factor pass can exceed the intermediate cap.
    native = in_w * in_h * factor * factor
    if engine.family == Family.UPSCALER_ESRGAN and native > UPSCALE_MAX_INTERMEDIATE_PIXELS:
        raise InvalidRequest(
            f"image: {in_w}x{in_h} is too large for a x{factor} upscaler",
            code="invalid_pixel_count",
            param="init_image",
        )
    return width, height


def _resolve_control(request: GenerationRequest, engine: EngineSpec) -> tuple[int, int] | None:
    """Check a ControlNet request; return the default working size of control text-to-image.

    A ControlNet engine needs ``control_image`` for text-to-image and image-to-image; an
    engine without one, or another task, takes none (``InvalidRequest``, param
    ``control_image``). Text-to-image runs by default at the control image's size when it
    satisfies the engine's rule, else at the engine's size nearest its aspect ratio
    (``products.size_for_aspect``); None for every other case.
    """
    controlled = engine.controlnet is not None and request.task in (Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE)
    if not controlled:
        if request.control_image is not None:
            raise InvalidRequest(
                f"control_image: engine {engine.id} takes no control image for {request.task.value}",
                code="bad_request",
                param="control_image",
            )
        return None
    if request.control_image is None:
        raise InvalidRequest(
            f"control_image: is required by {engine.id} (a ControlNet engine)",
            code="bad_request",
            param="control_image",
        )
    control = decode_image(request.control_image.data, param="control_image")
    if request.task != Task.TEXT_TO_IMAGE:
        return None
    try:
        check_dimensions(engine.dimensions, *control.size)
        return control.size
    except InvalidRequest:
        from stableserve.core.products import size_for_aspect  # products imports this module

        return size_for_aspect(engine, control.width / control.height)


def resolve(request: GenerationRequest, engine: EngineSpec) -> GenerationRequest:
    """Validate ``request`` against ``engine`` and return it with every default filled in.

    Afterwards ``width``, ``height``, ``steps``, ``sampler`` (both ``None`` for ESRGAN and for
    remove-background, which is sized like its init image) and a
    non-zero-free ``seed`` (0 replaced by a random uint32) are concrete. Raises
    ``InvalidRequest`` with a v1 error code and the offending ``param``.
    """
    if request.engine_id != engine.id:
        raise ValueError("request.engine_id does not match engine")
    if request.task not in engine.tasks:
        tasks = ", ".join(t.value for t in engine.tasks)
        raise InvalidRequest(
            f"engine {engine.id} does not support {request.task.value}; it supports: {tasks}",
            code="bad_request",
            param="engine_id",
        )
    _check_prompts(request, engine)
    if request.style_preset is not None and request.style_preset not in STYLE_PRESETS:
        raise InvalidRequest(
            f"style_preset: must be one of {', '.join(STYLE_PRESETS)}",
            code="bad_request",
            param="style_preset",
        )
    if request.style_image is not None:  # IP-Adapter style reference
        if engine.ip_adapter is None:
            raise InvalidRequest(
                f"style_image: engine {engine.id} has no IP-Adapter and takes no style image",
                code="bad_request",
                param="style_image",
            )
        decode_image(request.style_image.data, param="style_image")
    control_size = _resolve_control(request, engine)

    supported = engine.supported_samplers()
    sampler = request.sampler or (engine.default_sampler if supported else None)
    if request.sampler is not None and request.sampler not in supported:
        names = ", ".join(s.value for s in supported) or "none"
        raise InvalidRequest(
            f"sampler: {request.sampler.value} is not supported by {engine.id}; supported: {names}",
            code="bad_request",
            param="sampler",
        )

    updates: dict = {
        "steps": request.steps or engine.default_steps,
        "sampler": sampler,
        # A random seed is never 0 itself, so the seed reported back reproduces the image.
        "seed": request.seed or 1 + secrets.randbelow(SEED_MAX),
    }
    if request.task in (Task.IMAGE_TO_IMAGE, Task.MASKING):
        start = request.schedule_start
        start = DEFAULT_SCHEDULE_START[request.task] if start is None else start
        # Diffusers runs int(steps * strength) steps and fails on 0: keep at least one step
        # (an image strength of 1 / strength 0 then changes the init image only slightly).
        updates["schedule_start"] = max(start, 1.0 / updates["steps"])
    if request.task == Task.TEXT_TO_IMAGE:
        default_w, default_h = control_size or (engine.default_width, engine.default_height)
        width = request.width or default_w
        height = request.height or default_h
        check_dimensions(engine.dimensions, width, height)
    else:
        if request.init_image is None:
            name = "image" if request.task == Task.UPSCALE else "init_image"
            raise InvalidRequest(f"{name}: is required", code="bad_request", param="init_image")
        init = decode_image(request.init_image.data, param="init_image")
        in_w, in_h = init.size
        if request.task == Task.UPSCALE:
            width, height = _resolve_upscale(request, engine, in_w, in_h)
        elif request.width is not None and request.height is not None:
            # A working size: the pipeline runs there, the result comes back at the init size.
            width, height = request.width, request.height
            check_dimensions(engine.dimensions, width, height)
        else:
            width, height = in_w, in_h
            check_dimensions(engine.dimensions, width, height, what="init_image")
        if request.task == Task.MASKING:
            _resolve_masking(request, init.size, has_alpha(init), segmenter=engine.segmenter)
    if engine.family == Family.UPSCALER_ESRGAN:
        updates["steps"] = None
    if request.task == Task.REMOVE_BACKGROUND:  # feed-forward segmentation/matting: no denoising
        updates.update(steps=None, sampler=None)
    updates.update(width=width, height=height)
    return request.model_copy(update=updates)
