"""``GET /v1/engines/{engine_id}/capabilities``: a stableserve extension of REST v1.

What a client needs to build a form for one engine without trial and error: its tasks,
whether it is ready (and why not), the sizes it allows (``fixed`` rules list them; range rules
give the rule so a client can offer the aspect ratios that satisfy it), its defaults, the
samplers and style presets it takes, the wire limits of the v1 parameters and its price rule.
The web playground builds its generation form from it. Served under ``/v1`` and ``/v1beta``.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from stableserve.api.deps import app_state, authenticate
from stableserve.core.engines import DIFFUSION_FAMILIES, EngineSpec
from stableserve.core.presets import STYLE_PRESETS
from stableserve.core.types import SEED_MAX


class Size(BaseModel):
    """An output size in pixels."""

    width: int
    height: int


class Dimensions(BaseModel):
    """The engine's size rule (``core.engines.DimensionRule``).

    ``pixel_range``: both sides multiples of ``multiple`` and >= ``min_side``, ``min_pixels`` <=
    width x height <= ``max_pixels``. ``fixed``: one of ``sizes``. ``sdxl_beta``: sides >=
    ``min_side``, multiples of ``multiple``, only one side above 512 and none above
    ``max_side``. ``any``: no rule (upscalers; their output is capped by ``max_output_pixels``).
    ``error`` is the v1 error name a size outside the rule gets.
    """

    kind: Literal["pixel_range", "fixed", "sdxl_beta", "any"]
    multiple: int
    min_side: int
    max_side: int | None
    min_pixels: int | None
    max_pixels: int | None
    sizes: list[Size] = Field(description="The allowed sizes of a `fixed` rule (empty otherwise).")
    error: str


class Price(BaseModel):
    """Credits = ``per_image`` x samples x max(1, steps / ``reference_steps``) x max(1, pixels /
    ``reference_pixels``); a ``null`` reference turns its factor off."""

    per_image: float
    reference_steps: int | None
    reference_pixels: int | None


class Limits(BaseModel):
    """The v1 wire ranges of the numeric generation parameters (CONTRACT.md §2.4)."""

    steps_min: int = 10
    steps_max: int = 150
    cfg_scale_min: float = 0
    cfg_scale_max: float = 35
    samples_min: int = 1
    samples_max: int = 10
    seed_max: int = SEED_MAX


class EngineCapabilities(BaseModel):
    """One engine's capabilities (see the module docstring)."""

    id: str
    name: str
    description: str
    type: str
    family: str
    tasks: list[str] = Field(description="v1 tasks: text-to-image, image-to-image, masking, upscale.")
    ready: bool
    ready_reason: str = Field(description="Why the engine is (not) ready, e.g. weights missing.")
    dimensions: Dimensions
    default_width: int
    default_height: int
    default_steps: int | None
    default_sampler: str | None
    samplers: list[str]
    style_presets: list[str]
    limits: Limits
    price: Price
    default_price: float = Field(description="Credits of one image at the default size and steps.")
    upscale_factor: int | None
    max_output_pixels: int | None
    control: Literal["sketch", "canny"] | None = Field(
        description="A ControlNet engine's conditioning: it needs a control image (v2beta control routes)."
    )


def describe(engine: EngineSpec, ready: bool, reason: str) -> EngineCapabilities:
    """The capabilities of ``engine``, given its readiness (``inference.loading.readiness``)."""
    from stableserve.core.pricing import default_price

    rule = engine.dimensions
    diffusion = engine.family in DIFFUSION_FAMILIES
    samplers = [s.value for s in engine.supported_samplers()]
    return EngineCapabilities(
        id=engine.id,
        name=engine.name,
        description=engine.description,
        type=engine.type,
        family=engine.family.value,
        tasks=[t.value for t in engine.tasks],
        ready=ready,
        ready_reason=reason,
        dimensions=Dimensions(
            kind=rule.kind,
            multiple=rule.multiple,
            min_side=rule.min_side,
            max_side=rule.max_side,
            min_pixels=rule.min_pixels,
            max_pixels=rule.max_pixels,
            sizes=[Size(width=w, height=h) for w, h in rule.sizes],
            error=rule.error,
        ),
        default_width=engine.default_width,
        default_height=engine.default_height,
        default_steps=engine.default_steps if samplers else None,
        default_sampler=engine.default_sampler.value if samplers else None,
        samplers=samplers,
        style_presets=list(STYLE_PRESETS) if diffusion else [],
        limits=Limits(),
        price=Price(**engine.price.model_dump()),
        default_price=default_price(engine),
        upscale_factor=engine.upscale_factor,
        max_output_pixels=engine.max_output_pixels,
        control=engine.control_preprocess,
    )


def _readiness(engine: EngineSpec, settings) -> tuple[bool, str]:
    """Ready or not and why, without the server's paths (a ready real engine says only that)."""
    from stableserve.inference.loading import readiness

    r = readiness(engine, settings)
    if r.ready and not engine.is_demo:
        return True, "weights available"
    return r.ready, r.reason


def add_capability_routes(router: APIRouter, flavor: str) -> None:
    """Add ``GET /engines/{engine_id}/capabilities`` to the ``v1`` and ``v1beta`` routers
    (v1alpha, a legacy alias kept for old clients, gets no extension)."""
    if flavor not in ("v1", "v1beta"):
        return

    @router.get(
        "/engines/{engine_id}/capabilities",
        response_model=EngineCapabilities,
        summary="Engine capabilities (stableserve extension)",
    )
    async def engine_capabilities(engine_id: str, request: Request) -> EngineCapabilities:
        """What one engine accepts: tasks, readiness (and why not), allowed sizes (the list of a
        `fixed` rule, else the rule itself), default size/steps/sampler, samplers, style presets,
        the v1 parameter ranges and the price rule (with the price of one default image).

        A stableserve extension (Stability's API has no such route). Authenticated like
        `/engines/list`; an unknown engine is 404 `not_found` with the v1 error body
        (`The specified engine (ID ...) was not found.`).
        """
        await authenticate(request)
        state = app_state(request)
        engine = state.registry.get(engine_id)  # NotFound -> 404 not_found
        ready, reason = await run_in_threadpool(_readiness, engine, state.settings)
        return describe(engine, ready, reason)
