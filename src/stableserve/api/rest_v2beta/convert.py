"""REST v2beta wire <-> core: form fields to ``GenerationRequest``, artifacts to responses.

Each ``*_request`` function reads one endpoint's fields (CONTRACT.md §3.3 and
``specs/stability-v2beta.params.json``), enforces its image limits, and returns the
``GenerationRequest`` plus the registry ``ProductSpec`` that prices it. They decode images:
call them from a worker thread. ``render`` answers one artifact in the mode the ``accept``
header asks for (§3.1).
"""

from __future__ import annotations

import base64
import json

from pydantic import ValidationError
from starlette.responses import Response

from stableserve.api.rest_v2beta.forms import V2Form, check_image
from stableserve.core.engines import EngineRegistry, EngineSpec, ProductSpec
from stableserve.core.presets import STYLE_PRESETS
from stableserve.core.products import ASPECT_RATIOS, aspect_size, fit_image, scale_to_area
from stableserve.core.types import Artifact, GenerationRequest, ImageInput, OutputFormat, Task, WeightedPrompt
from stableserve.errors import InvalidRequest, NotFound

OUTPUT_FORMATS = tuple(f.value for f in OutputFormat)
SD3_MODELS = (
    "sd3.5-large",
    "sd3.5-large-turbo",
    "sd3.5-medium",
    "sd3.5-flash",
    "sd3-large",
    "sd3-large-turbo",
    "sd3-medium",
)
"""``model`` values of ``generate/sd3``: the 2026 enum, Flash, and the legacy SD3 names (re-routed)."""
MODES = ("text-to-image", "image-to-image")


def wants_json(accept: str | None) -> bool:
    """True when ``accept`` asks for JSON (any ``application/json…``, incl. ``; type=image/*``)."""
    return (accept or "").strip().lower().startswith("application/json")


def render(artifact: Artifact, accept: str | None) -> Response:
    """The sync-image response for ``artifact``.

    ``image/*`` (default): the bytes, ``content-type`` = the artifact's mime, headers
    ``finish-reason`` and ``seed``. ``application/json``: ``{"image": base64, "finish_reason",
    "seed"}`` with ``content-type: application/json; type=<mime>``.
    """
    if wants_json(accept):
        body = {
            "image": base64.b64encode(artifact.data).decode("ascii"),
            "finish_reason": artifact.finish_reason.value,
            "seed": artifact.seed,
        }
        return Response(
            json.dumps(body, separators=(",", ":")).encode(),
            media_type=f"application/json; type={artifact.mime}",
        )
    return Response(
        artifact.data,
        media_type=artifact.mime,
        headers={"finish-reason": artifact.finish_reason.value, "seed": str(artifact.seed)},
    )


def read_prompts(
    form: V2Form,
    product: ProductSpec | None = None,
    model: str | None = None,
    *,
    required: bool = True,
) -> tuple[WeightedPrompt, ...]:
    """``prompt`` (weight 1) and ``negative_prompt`` (weight -1) as weighted prompts.

    Without ``required``, a missing prompt falls back to the product's ``prompt``; the
    product's ``negative_prompt_text`` is used when the client sends no negative prompt.
    Raises ``InvalidRequest``: a missing/blank required prompt, or a negative prompt for a
    product that refuses one (turbo models, named by ``model``).
    """
    prompt = form.text("prompt", required=required and not (product and product.prompt))
    prompt = prompt if prompt is not None else (product.prompt if product else None)
    if prompt is None or not prompt.strip():
        raise InvalidRequest("prompt: must not be blank", param="prompt")
    prompts = [WeightedPrompt(text=prompt, weight=1.0)]
    negative = form.text("negative_prompt")
    if negative is not None and negative.strip():
        if product is not None and not product.negative_prompt:
            raise InvalidRequest(f"negative_prompt: is not supported by {model}", param="negative_prompt")
        prompts.append(WeightedPrompt(text=negative, weight=-1.0))
    elif product is not None and product.negative_prompt_text:
        prompts.append(WeightedPrompt(text=product.negative_prompt_text, weight=-1.0))
    return tuple(prompts)


def common_fields(form: V2Form, *, style: bool = True, formats: tuple[str, ...] = OUTPUT_FORMATS) -> dict:
    """``seed``, ``output_format`` (one of ``formats``, default png) and, with ``style``,
    ``style_preset``, as ``GenerationRequest`` fields."""
    fields = {
        "seed": form.seed(),
        "output_format": OutputFormat(form.choice("output_format", formats, "png")),
    }
    if style:
        fields["style_preset"] = form.choice("style_preset", tuple(STYLE_PRESETS))
    return fields


def _text_to_image(engine: EngineSpec, form: V2Form) -> dict:
    width, height = aspect_size(engine, form.choice("aspect_ratio", ASPECT_RATIOS, "1:1"))
    return {"task": Task.TEXT_TO_IMAGE, "width": width, "height": height}


def _image_to_image(engine: EngineSpec, image: bytes, strength: float) -> dict:
    return {
        "task": Task.IMAGE_TO_IMAGE,
        "init_image": ImageInput(data=fit_image(engine, image)),
        "schedule_start": strength,
    }


def build_request(engine: EngineSpec, product: ProductSpec, fields: dict) -> GenerationRequest:
    """The ``GenerationRequest`` for ``engine`` from adapter ``fields`` plus the product's
    defaults (``cfg_scale``, ``steps``); a field error becomes ``InvalidRequest``."""
    if product.cfg_scale is not None and "cfg_scale" not in fields:
        fields["cfg_scale"] = product.cfg_scale
    if product.steps is not None:
        fields["steps"] = product.steps
    try:
        return GenerationRequest(engine_id=engine.id, **fields)
    except ValidationError as exc:  # a safety net: the form getters check each field first
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidRequest(f"{field}: {err['msg']}", param=field) from None


def ultra_request(
    registry: EngineRegistry, form: V2Form, image: bytes | None
) -> tuple[GenerationRequest, ProductSpec]:
    """``POST /v2beta/stable-image/generate/ultra``: text-to-image, or image-to-image when
    ``image`` is sent (w, h 64..16384, >= 4096 pixels; ``strength`` 0..1 required)."""
    product, engine = registry.product("ultra")
    fields = {"prompts": read_prompts(form), **common_fields(form)}
    if image is not None:
        check_image(image, "image", min_side=64, max_side=16384, min_pixels=4096)
        strength = form.number("strength", 0, 1, required=True)
        fields.update(_image_to_image(engine, image, strength))
    else:
        fields.update(_text_to_image(engine, form))
    return build_request(engine, product, fields), product


def core_request(registry: EngineRegistry, form: V2Form) -> tuple[GenerationRequest, ProductSpec]:
    """``POST /v2beta/stable-image/generate/core``: text-to-image at ``aspect_ratio``."""
    product, engine = registry.product("core")
    fields = {"prompts": read_prompts(form), **common_fields(form), **_text_to_image(engine, form)}
    return build_request(engine, product, fields), product


def sd3_request(
    registry: EngineRegistry, form: V2Form, image: bytes | None
) -> tuple[GenerationRequest, ProductSpec]:
    """``POST /v2beta/stable-image/generate/sd3``: ``model`` (default sd3.5-large; legacy sd3-*
    names re-routed), ``mode`` text-to-image (``aspect_ratio``) or image-to-image (``image``
    with sides >= 64 and ``strength``), ``cfg_scale`` 1..10 (default per model), no
    ``negative_prompt`` on turbo models."""
    model = form.choice("model", SD3_MODELS, "sd3.5-large")
    try:
        product, engine = registry.product(model)
    except NotFound as exc:  # the operator's registry leaves this model out
        raise InvalidRequest(exc.message, param="model") from None
    mode = form.choice("mode", MODES, "text-to-image")
    fields = {"prompts": read_prompts(form, product, model), **common_fields(form)}
    cfg = form.number("cfg_scale", 1, 10)
    if cfg is not None:
        fields["cfg_scale"] = cfg
    if mode == "image-to-image":
        if image is None:
            raise InvalidRequest("image: is required when mode is image-to-image", param="image")
        if form.text("aspect_ratio") is not None:
            raise InvalidRequest(
                "aspect_ratio: is not allowed when mode is image-to-image", param="aspect_ratio"
            )
        check_image(image, "image", min_side=64)
        strength = form.number("strength", 0, 1, required=True)
        fields.update(_image_to_image(engine, image, strength))
    else:
        if image is not None:
            raise InvalidRequest("image: is only allowed when mode is image-to-image", param="image")
        fields.update(_text_to_image(engine, form))
    return build_request(engine, product, fields), product


def _upscale_width(product: ProductSpec, engine: EngineSpec, w: int, h: int, cap_at_factor: bool) -> int:
    """Output width of a diffusion upscale of a ``w`` x ``h`` image: ``product.output_pixels``
    at the input's aspect (at most the engine's native factor when ``cap_at_factor``), within
    the engine's ``max_output_pixels``; the height follows the aspect ratio (validation)."""
    factor = engine.upscale_factor or 4
    limits = [p for p in (product.output_pixels, engine.max_output_pixels) if p]
    if not limits:
        return w * factor
    limit = min(limits)
    width = scale_to_area(w, h, limit)[0]
    if cap_at_factor:
        width = min(width, w * factor)
    while width > 1 and width * max(1, round(width * h / w)) > limit:
        width -= 1
    return width


def _noise_level(product: ProductSpec, creativity: float) -> int | None:
    if product.noise_level_per_creativity is None:
        return None
    return min(350, round(creativity * product.noise_level_per_creativity))


def fast_upscale_request(
    registry: EngineRegistry, form: V2Form, image: bytes
) -> tuple[GenerationRequest, ProductSpec]:
    """``POST /v2beta/stable-image/upscale/fast``: 4x by a super-resolution network; ``image``
    w, h 32..1536 and 1,024..1,048,576 pixels."""
    product, engine = registry.product("upscale-fast")
    check_image(image, "image", min_side=32, max_side=1536, min_pixels=1024, max_pixels=1_048_576)
    fields = {"task": Task.UPSCALE, "init_image": ImageInput(data=image), **common_fields(form, style=False)}
    return build_request(engine, product, fields), product


def conservative_upscale_request(
    registry: EngineRegistry, form: V2Form, image: bytes
) -> tuple[GenerationRequest, ProductSpec]:
    """``POST /v2beta/stable-image/upscale/conservative``: about ``output_pixels`` (4 MP) out;
    ``image`` sides >= 64, 4,096..9,437,184 pixels, aspect 1:2.5..2.5:1; ``creativity`` 0.2..0.5."""
    product, engine = registry.product("upscale-conservative")
    w, h = check_image(image, "image", min_side=64, min_pixels=4096, max_pixels=9_437_184, max_aspect=2.5)
    creativity = form.number("creativity", 0.2, 0.5, 0.35)
    fields = {
        "task": Task.UPSCALE,
        "prompts": read_prompts(form),
        "init_image": ImageInput(data=image),
        "width": _upscale_width(product, engine, w, h, cap_at_factor=False),
        "noise_level": _noise_level(product, creativity),
        **common_fields(form, style=False),
    }
    return build_request(engine, product, fields), product


def creative_upscale_request(
    registry: EngineRegistry, form: V2Form, image: bytes
) -> tuple[GenerationRequest, ProductSpec]:
    """``POST /v2beta/stable-image/upscale/creative`` (async): up to 4x, at most
    ``output_pixels``; ``image`` sides >= 64, 4,096..1,048,576 pixels; ``creativity`` 0.1..0.5."""
    product, engine = registry.product("upscale-creative")
    w, h = check_image(image, "image", min_side=64, min_pixels=4096, max_pixels=1_048_576)
    creativity = form.number("creativity", 0.1, 0.5, 0.3)
    fields = {
        "task": Task.UPSCALE,
        "prompts": read_prompts(form),
        "init_image": ImageInput(data=image),
        "width": _upscale_width(product, engine, w, h, cap_at_factor=True),
        "noise_level": _noise_level(product, creativity),
        **common_fields(form),
    }
    return build_request(engine, product, fields), product
