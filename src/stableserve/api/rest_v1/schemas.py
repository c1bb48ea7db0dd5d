"""REST v1 wire schemas (CONTRACT.md §2; names as in stability-v1.openapi.json components).

Request models forbid explicit nulls (a ``null`` where a value is expected is a 400) and keep
the contract's ranges; unknown fields are ignored as the live API does. Engine-specific
rules (sizes per engine, supported tasks) are checked later by ``core.validation``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stableserve.core.presets import STYLE_PRESETS
from stableserve.core.types import Sampler


class ClipGuidancePreset(StrEnum):
    """Accepted for compatibility; stableserve runs no CLIP guidance (the value is ignored)."""

    FAST_BLUE = "FAST_BLUE"
    FAST_GREEN = "FAST_GREEN"
    NONE = "NONE"
    SIMPLE = "SIMPLE"
    SLOW = "SLOW"
    SLOWER = "SLOWER"
    SLOWEST = "SLOWEST"


class FinishReasonV1(StrEnum):
    """``finishReason`` / ``Finish-Reason`` values."""

    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    CONTENT_FILTERED = "CONTENT_FILTERED"


class TextPrompt(BaseModel):
    """``{text (1..2000 chars), weight (default 1; negative = negative prompt)}``."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(min_length=1, max_length=2000)
    weight: float = 1.0


def _style(v: str | None) -> str | None:
    if v is not None and v not in STYLE_PRESETS:
        raise ValueError(f"must be one of {', '.join(STYLE_PRESETS)}")
    return v


class GenerationOptions(BaseModel):
    """``GenerationRequestOptionalParams``: the parameters every generation route takes."""

    model_config = ConfigDict(extra="ignore")

    cfg_scale: float = Field(default=7.0, ge=0, le=35)
    clip_guidance_preset: ClipGuidancePreset = ClipGuidancePreset.NONE
    sampler: Sampler | None = None
    samples: int = Field(default=1, ge=1, le=10)
    seed: int = Field(default=0, ge=0, le=4_294_967_295)
    steps: int = Field(default=30, ge=10, le=150)
    style_preset: str | None = None
    extras: dict[str, Any] = Field(default_factory=dict)

    @field_validator("style_preset")
    @classmethod
    def _check_style(cls, v: str | None) -> str | None:
        return _style(v)


class TextToImageRequestBody(GenerationOptions):
    """JSON body of ``text-to-image``: ``text_prompts`` (>= 1), ``height``/``width`` (multiples of 64,
    >= 128; ``None`` = the engine's default size)."""

    text_prompts: list[TextPrompt] = Field(min_length=1)
    height: int | None = Field(default=None, ge=128, multiple_of=64)
    width: int | None = Field(default=None, ge=128, multiple_of=64)


class ImageToImageOptions(GenerationOptions):
    """Form fields of ``image-to-image`` besides ``init_image`` (v1alpha: the ``options`` JSON)."""

    text_prompts: list[TextPrompt] = Field(min_length=1)
    init_image_mode: Literal["IMAGE_STRENGTH", "STEP_SCHEDULE"] = "IMAGE_STRENGTH"
    image_strength: float = Field(default=0.35, ge=0, le=1)
    step_schedule_start: float | None = Field(default=None, ge=0, le=1)
    step_schedule_end: float | None = Field(default=None, ge=0, le=1)


class MaskingOptions(GenerationOptions):
    """Form fields of ``image-to-image/masking`` besides the images."""

    text_prompts: list[TextPrompt] = Field(min_length=1)
    mask_source: Literal["MASK_IMAGE_WHITE", "MASK_IMAGE_BLACK", "INIT_IMAGE_ALPHA"]


class UpscaleOptions(BaseModel):
    """Form fields of ``image-to-image/upscale`` besides ``image``: ``width`` or ``height`` (>= 512);
    the latent upscaler also takes ``text_prompts``, ``seed``, ``steps``, ``cfg_scale``."""

    model_config = ConfigDict(extra="ignore")

    width: int | None = Field(default=None, ge=512)
    height: int | None = Field(default=None, ge=512)
    text_prompts: list[TextPrompt] = Field(default_factory=list)
    seed: int = Field(default=0, ge=0, le=4_294_967_295)
    steps: int = Field(default=20, ge=10, le=150)
    cfg_scale: float = Field(default=7.0, ge=0, le=35)


class Image(BaseModel):
    """One artifact of a JSON response."""

    base64: str
    seed: int
    finishReason: FinishReasonV1  # noqa: N815 - wire name


class GenerationResponse(BaseModel):
    """``{"artifacts": [Image, ...]}`` (v1, v1beta; v1alpha answers the bare array)."""

    artifacts: list[Image]


class Engine(BaseModel):
    """``Engine``: id, name, description, type (always ``PICTURE`` here)."""

    id: str
    name: str
    description: str
    type: Literal["AUDIO", "CLASSIFICATION", "PICTURE", "STORAGE", "TEXT", "VIDEO"]


class OrganizationMembership(BaseModel):
    """One membership of the account's user."""

    id: str
    name: str
    role: Literal["MEMBER", "ACCOUNTANT", "OWNER"]
    is_default: bool


class AccountResponseBody(BaseModel):
    """``GET /v1/user/account``."""

    id: str
    email: str
    profile_picture: str | None = None
    organizations: list[OrganizationMembership]


class BalanceResponseBody(BaseModel):
    """``GET /v1/user/balance``: credits as a double."""

    credits: float


class Error(BaseModel):
    """``{id, name, message}`` (CONTRACT.md §1.4)."""

    id: str
    name: str
    message: str
