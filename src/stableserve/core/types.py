"""Protocol-neutral request and result types (DESIGN.md "The request path").

``GenerationRequest`` is the only thing protocol adapters hand to the core and the queue:
frozen, validated by pydantic, and JSON-serializable (image bytes travel as base64).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SEED_MAX = 4_294_967_295
"""Largest seed (uint32, CONTRACT.md §2.4). Seed 0 means "pick one at random"."""


class Task(StrEnum):
    """What the engine is asked to do (the v1 route names, plus background removal)."""

    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"
    MASKING = "masking"
    UPSCALE = "upscale"
    REMOVE_BACKGROUND = "remove-background"


class Sampler(StrEnum):
    """Stability's sampler enum (REST v1 ``sampler`` and gRPC ``DiffusionSampler``, CONTRACT.md §4.2)."""

    DDIM = "DDIM"
    DDPM = "DDPM"
    K_EULER = "K_EULER"
    K_EULER_ANCESTRAL = "K_EULER_ANCESTRAL"
    K_HEUN = "K_HEUN"
    K_DPM_2 = "K_DPM_2"
    K_DPM_2_ANCESTRAL = "K_DPM_2_ANCESTRAL"
    K_LMS = "K_LMS"
    K_DPMPP_2S_ANCESTRAL = "K_DPMPP_2S_ANCESTRAL"
    K_DPMPP_2M = "K_DPMPP_2M"
    K_DPMPP_SDE = "K_DPMPP_SDE"


class MaskSource(StrEnum):
    """Where the inpainting mask comes from (v1 ``mask_source``, CONTRACT.md §2.4).

    ``MASK_IMAGE_WHITE``: white pixels of the mask image are replaced;
    ``MASK_IMAGE_BLACK``: black pixels are replaced;
    ``INIT_IMAGE_ALPHA``: transparent pixels of the init image are replaced.
    Grey values give a linear strength in between.
    """

    MASK_IMAGE_WHITE = "MASK_IMAGE_WHITE"
    MASK_IMAGE_BLACK = "MASK_IMAGE_BLACK"
    INIT_IMAGE_ALPHA = "INIT_IMAGE_ALPHA"
    TEXT_PROMPT = "TEXT_PROMPT"
    """Not a v1 value: the engine's text-prompted segmenter masks what ``mask_prompt`` names."""


class FinishReason(StrEnum):
    """Per-artifact outcome (v1 ``finishReason``; gRPC maps SUCCESS to NULL, CONTENT_FILTERED to FILTER)."""

    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    CONTENT_FILTERED = "CONTENT_FILTERED"


class OutputFormat(StrEnum):
    """Encoding of the generated images (v2beta ``output_format``; v1 and gRPC always PNG)."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def mime(self) -> str:
        """The media type: ``image/png``, ``image/jpeg`` or ``image/webp``."""
        return f"image/{self.value}"


class WeightedPrompt(BaseModel):
    """One text prompt. ``weight`` > 0 conditions towards it, < 0 away from it (negative prompt).

    ``text`` may use ``(word:1.3)`` emphasis; 1..10000 characters.
    """

    model_config = ConfigDict(frozen=True)

    text: str = Field(min_length=1, max_length=10_000)
    weight: float = 1.0


class ImageInput(BaseModel):
    """An uploaded image as encoded bytes (PNG, JPEG or WEBP); decoded on the worker."""

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    data: bytes = Field(repr=False)


class GenerationRequest(BaseModel):
    """A protocol-neutral generation request.

    Fields (units and ranges; engine-aware rules are in ``core.validation``):
    - ``engine_id``: registry id, e.g. ``stable-diffusion-v1-5``.
    - ``task``: ``Task``.
    - ``prompts``: weighted prompts; at least one positive prompt except for ESRGAN upscale.
    - ``width``/``height``: output pixels; ``None`` = engine default (text-to-image), the init
      image's size (image-to-image, masking) or 2x/4x the input (upscale). For upscale only one
      of them may be set; the other follows the aspect ratio.
    - ``steps``: denoising steps 1..150, ``None`` = engine default.
    - ``cfg_scale``: classifier-free guidance scale 0..35.
    - ``sampler``: ``None`` = engine default.
    - ``seed``: 0..4294967295; 0 = random. Sample ``i`` uses ``seed + i`` (mod 2**32).
    - ``samples``: 1..10 images.
    - ``style_preset``: one of the 17 presets of ``core.presets`` or ``None``.
    - ``init_image``: required for image-to-image, masking and upscale.
    - ``schedule_start``: fraction of the noise schedule the init image enters at, 0..1
      (Stability's ``step_schedule_start`` = 1 - ``image_strength``; diffusers' ``strength``);
      ``None`` = 0.65 for image-to-image (``image_strength`` 0.35), 1.0 for masking.
    - ``schedule_end``: optional fraction 0..1 at which denoising stops (``step_schedule_end``).
    - ``mask_image``/``mask_source``: masking only (see ``MaskSource``).
    - ``mask_prompt``: what to mask, in words, for ``MaskSource.TEXT_PROMPT`` (v2beta
      ``search_prompt`` / ``select_prompt``); segmented by the engine's ``segmenter``.
    - ``grow_mask``: pixels (0..100) by which the mask is grown and feathered before use.
    - ``control_image``: a conditioning image for a ControlNet engine (a sketch, or the image
      whose structure is kept); ``control_strength`` 0..1 (ControlNet conditioning scale,
      ``None`` = 0.7).
    - ``style_image``: a style reference for an IP-Adapter engine; ``style_strength`` 0..1
      (IP-Adapter scale, ``None`` = 0.5).
    - ``background_image``: masking only: the masked area starts from this image (resized to
      the init image's size) instead of the init image's own pixels (v2beta
      ``background_reference``).
    - ``light_direction`` (``left``/``right``/``above``/``below``) and ``light_strength`` 0..1:
      a directional relighting of the result (v2beta replace-background-and-relight).
    - Sizes of image tasks: image-to-image, masking, control and background-removal
      artifacts come back at the size of their input (``init_image``, else ``control_image``).
      ``width``/``height``, when given for them, are the size the pipeline runs at (the
      engine's rule applies); the result is resized (Lanczos) to the input's size, and masking
      composites there so pixels outside the mask stay exactly the input's.
    - ``noise_level``: noise augmentation of the x4 latent upscaler, 0..350 (diffusers'
      ``noise_level``; ``None`` = the pipeline's default 20). More noise = more re-imagined detail.
    - ``output_format``: encoding of the artifacts (``OutputFormat``, default PNG).
    - ``image_safety``: ``blur``: the worker runs its image safety checker and blurs flagged
      images (``CONTENT_FILTERED``); ``off`` (default): no check. Set by the server from the
      organization's ``ModerationPolicy`` (``core.moderation``), never by a client.
    - ``extras``: free-form, accepted and ignored unless a feature documents a key.
    """

    model_config = ConfigDict(frozen=True)

    engine_id: str = Field(min_length=1, max_length=200)
    task: Task = Task.TEXT_TO_IMAGE
    prompts: tuple[WeightedPrompt, ...] = ()
    width: int | None = Field(default=None, ge=1, le=16_384)
    height: int | None = Field(default=None, ge=1, le=16_384)
    steps: int | None = Field(default=None, ge=1, le=150)
    cfg_scale: float = Field(default=7.0, ge=0, le=35)
    sampler: Sampler | None = None
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    samples: int = Field(default=1, ge=1, le=10)
    style_preset: str | None = None
    init_image: ImageInput | None = None
    schedule_start: float | None = Field(default=None, ge=0, le=1)
    schedule_end: float | None = Field(default=None, ge=0, le=1)
    mask_image: ImageInput | None = None
    mask_source: MaskSource | None = None
    mask_prompt: str | None = Field(default=None, min_length=1, max_length=10_000)
    grow_mask: int = Field(default=0, ge=0, le=100)
    control_image: ImageInput | None = None
    control_strength: float | None = Field(default=None, ge=0, le=1)
    style_image: ImageInput | None = None
    style_strength: float | None = Field(default=None, ge=0, le=1)
    background_image: ImageInput | None = None
    light_direction: Literal["left", "right", "above", "below"] | None = None
    light_strength: float = Field(default=0.3, ge=0, le=1)
    noise_level: int | None = Field(default=None, ge=0, le=350)
    output_format: OutputFormat = OutputFormat.PNG
    image_safety: Literal["off", "blur"] = "off"
    extras: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _schedule_order(self) -> GenerationRequest:
        start = 1.0 if self.schedule_start is None else self.schedule_start
        if self.schedule_end is not None and self.schedule_end >= start:
            raise ValueError("schedule_end must be smaller than schedule_start")
        return self

    @property
    def positive_prompts(self) -> tuple[WeightedPrompt, ...]:
        """Prompts with weight > 0."""
        return tuple(p for p in self.prompts if p.weight > 0)

    @property
    def negative_prompts(self) -> tuple[WeightedPrompt, ...]:
        """Prompts with weight < 0 (their absolute weight is used for the negative conditioning)."""
        return tuple(p for p in self.prompts if p.weight < 0)


class Artifact(BaseModel):
    """One generated image: encoded bytes plus what produced it.

    ``index``: 0-based sample index; ``seed``: the uint32 seed that produced it;
    ``width``/``height`` in pixels; ``mime``: ``image/png`` (default), ``image/jpeg`` or
    ``image/webp``, following the request's ``output_format``.
    """

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    index: int
    seed: int
    finish_reason: FinishReason = FinishReason.SUCCESS
    mime: str = "image/png"
    width: int
    height: int
    data: bytes = Field(repr=False)
