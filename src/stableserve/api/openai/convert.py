"""OpenAI Images wire <-> core (OpenAI's ``/v1/images`` shapes).

Mappings (documented choices):
- ``model`` is an engine id (default ``settings.openai.*_model``); ``size`` ``"WxH"`` is
  checked against the engine's rules (``"auto"`` = the engine's default size).
- ``quality``: ``low`` runs half the engine's default steps, ``hd``/``high``/``xhigh``/``max``
  1.5x, anything else the default; ``style``: ``natural`` applies the ``photographic`` preset
  unless ``style_preset`` is given, ``vivid`` none.
- stableserve extensions (not in OpenAI's API): ``negative_prompt``, ``seed``, ``steps``,
  ``cfg_scale``, ``sampler``, ``style_preset``.
- edits: the mask's transparent pixels are edited (OpenAI's definition); without a mask the
  image's own transparent pixels are. The output keeps the image's size.
- variations: image-to-image at strength 0.6 with the prompt "a variation of this image".
"""

from __future__ import annotations

import base64
import io
import re
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from stableserve.core.engines import EngineSpec
from stableserve.core.images import decode_image, has_alpha
from stableserve.core.products import size_for_aspect
from stableserve.core.types import (
    Artifact,
    GenerationRequest,
    ImageInput,
    MaskSource,
    OutputFormat,
    Sampler,
    Task,
    WeightedPrompt,
)
from stableserve.errors import InvalidRequest

VARIATION_PROMPT = "a variation of this image"
VARIATION_STRENGTH = 0.6
_SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")


class Extensions(BaseModel):
    """stableserve's extensions to OpenAI's parameters (all optional)."""

    model_config = ConfigDict(extra="ignore")

    negative_prompt: str | None = Field(default=None, max_length=10_000)
    seed: int = Field(default=0, ge=0, le=4_294_967_295)
    steps: int | None = Field(default=None, ge=1, le=150)
    cfg_scale: float | None = Field(default=None, ge=0, le=35)
    sampler: Sampler | None = None
    style_preset: str | None = None


class GenerateBody(Extensions):
    """``POST /v1/images/generations`` JSON body (OpenAI's fields plus the extensions)."""

    prompt: str = Field(min_length=1, max_length=10_000)  # OpenAI allows 32,000; our models read far less
    model: str | None = None
    n: int = Field(default=1, ge=1, le=10)
    size: str | None = None
    response_format: Literal["url", "b64_json"] = "url"
    quality: str | None = None
    style: Literal["vivid", "natural"] | None = None
    user: str | None = None
    output_format: Literal["png", "jpeg", "webp"] = "png"


def parse_size(size: str | None, engine: EngineSpec) -> tuple[int | None, int | None]:
    """``"WxH"`` -> (W, H); ``None``/``"auto"`` -> (None, None) = the engine default.
    Raises ``InvalidRequest`` (param ``size``) for another shape."""
    if size in (None, "", "auto"):
        return None, None
    m = _SIZE.match(size)
    if not m:
        raise InvalidRequest("size: must be 'WIDTHxHEIGHT' (e.g. '1024x1024') or 'auto'", param="size")
    return int(m.group(1)), int(m.group(2))


def _steps(quality: str | None, engine: EngineSpec, steps: int | None) -> int | None:
    if steps is not None or quality is None:
        return steps
    if quality == "low":
        return max(1, engine.default_steps // 2)
    if quality in ("hd", "high", "xhigh", "max"):
        return min(150, round(engine.default_steps * 1.5))
    return None


def _prompts(prompt: str, negative: str | None) -> tuple[WeightedPrompt, ...]:
    prompts = [WeightedPrompt(text=prompt[:10_000], weight=1.0)]
    if negative and negative.strip():
        prompts.append(WeightedPrompt(text=negative, weight=-1.0))
    return tuple(prompts)


def _common(ext: Extensions, n: int, output_format: str = "png") -> dict:
    fields = {
        "seed": ext.seed,
        "samples": n,
        "style_preset": ext.style_preset,
        "output_format": OutputFormat(output_format),
    }
    if ext.cfg_scale is not None:
        fields["cfg_scale"] = ext.cfg_scale
    if ext.sampler is not None:
        fields["sampler"] = ext.sampler
    return fields


def generation_request(body: GenerateBody, engine: EngineSpec) -> GenerationRequest:
    """The core request of ``images.generate`` on ``engine`` (see the module docstring)."""
    width, height = parse_size(body.size, engine)
    preset = body.style_preset or ("photographic" if body.style == "natural" else None)
    return GenerationRequest(
        engine_id=engine.id,
        task=Task.TEXT_TO_IMAGE,
        prompts=_prompts(body.prompt, body.negative_prompt),
        width=width,
        height=height,
        steps=_steps(body.quality, engine, body.steps),
        **{**_common(body, body.n, body.output_format), "style_preset": preset},
    )


def _alpha_mask(mask: bytes, size: tuple[int, int]) -> bytes:
    """OpenAI mask -> a white-replaces L mask of ``size``: transparent pixels (alpha 0) are
    edited; a mask without alpha is read as luminance (white edited)."""
    img = decode_image(mask, param="mask")
    if has_alpha(img):
        alpha = img.convert("RGBA").getchannel("A")
        lum = alpha.point(lambda a: 255 - a)
    else:
        lum = img.convert("L")
    if lum.size != size:
        lum = lum.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    lum.save(buf, format="PNG")
    return buf.getvalue()


def edit_request(
    engine: EngineSpec,
    image: bytes,
    mask: bytes | None,
    prompt: str,
    n: int,
    ext: Extensions,
    output_format: str,
) -> GenerationRequest:
    """The core masking request of ``images.edit`` (see the module docstring)."""
    img = decode_image(image, param="image")
    fields: dict = {}
    if mask is not None:
        fields = {
            "mask_image": ImageInput(data=_alpha_mask(mask, img.size)),
            "mask_source": MaskSource.MASK_IMAGE_WHITE,
        }
    elif has_alpha(img):
        fields = {"mask_source": MaskSource.INIT_IMAGE_ALPHA}
    else:
        raise InvalidRequest("mask: is required when image has no transparent pixels", param="mask")
    width, height = size_for_aspect(engine, img.width / img.height)
    return GenerationRequest(
        engine_id=engine.id,
        task=Task.MASKING,
        prompts=_prompts(prompt, ext.negative_prompt),
        init_image=ImageInput(data=image),
        width=width,
        height=height,
        steps=ext.steps,
        **fields,
        **_common(ext, n, output_format),
    )


def variation_request(engine: EngineSpec, image: bytes, n: int, ext: Extensions) -> GenerationRequest:
    """The core image-to-image request of ``images.create_variation``."""
    img = decode_image(image, param="image")
    width, height = size_for_aspect(engine, img.width / img.height)
    return GenerationRequest(
        engine_id=engine.id,
        task=Task.IMAGE_TO_IMAGE,
        prompts=_prompts(VARIATION_PROMPT, ext.negative_prompt),
        init_image=ImageInput(data=image),
        schedule_start=VARIATION_STRENGTH,
        width=width,
        height=height,
        steps=ext.steps,
        **_common(ext, n),
    )


def image_data(artifact: Artifact, response_format: str, url: str | None) -> dict:
    """One ``data`` item: ``{"url": ...}`` or ``{"b64_json": ...}``."""
    if response_format == "url":
        return {"url": url}
    return {"b64_json": base64.b64encode(artifact.data).decode("ascii")}
