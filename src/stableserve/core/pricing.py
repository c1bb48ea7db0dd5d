"""Credits for a request, from the engine's ``PriceRule`` (CONTRACT.md §2.4 SDXL rule as the model).

``price(engine, request)`` takes a *resolved* request (``core.validation.resolve``), so steps
and sizes are concrete.
"""

from __future__ import annotations

from stableserve.core.engines import EngineSpec
from stableserve.core.types import GenerationRequest


def price(engine: EngineSpec, request: GenerationRequest) -> float:
    """Credits (float >= 0) for ``request`` on ``engine``.

    credits = per_image * samples * max(1, steps / reference_steps) * max(1, pixels / reference_pixels),
    each factor applying only when the rule sets its reference. E.g. SDXL 1.0 (per_image 0.9,
    reference_steps 30): 30 steps -> 0.9, 50 steps -> 1.5 credits per image.
    """
    rule = engine.price
    credits = rule.per_image * request.samples
    if rule.reference_steps and request.steps:
        credits *= max(1.0, request.steps / rule.reference_steps)
    if rule.reference_pixels and request.width and request.height:
        credits *= max(1.0, (request.width * request.height) / rule.reference_pixels)
    return round(credits, 6)


def default_price(engine: EngineSpec) -> float:
    """Credits (float >= 0) for one image at the engine's default settings (catalogs, CLI).

    Diffusion engines: ``price`` of a one-prompt request resolved against the engine (its
    default task, size and steps); when that request does not validate (a masking-only or
    ControlNet engine needs images), the same defaults priced directly. Upscalers, segmenters
    and matting engines: ``price.per_image``. Never raises.
    """
    from stableserve.core.engines import DIFFUSION_FAMILIES
    from stableserve.core.types import WeightedPrompt
    from stableserve.core.validation import resolve
    from stableserve.errors import StableServeError

    if engine.family not in DIFFUSION_FAMILIES:
        return round(engine.price.per_image, 6)
    defaults = GenerationRequest.model_construct(
        engine_id=engine.id,
        steps=engine.default_steps,
        width=engine.default_width,
        height=engine.default_height,
        samples=1,
    )
    try:
        request = GenerationRequest(
            engine_id=engine.id, task=engine.tasks[0], prompts=(WeightedPrompt(text="x"),)
        )
        return price(engine, resolve(request, engine))
    except (StableServeError, ValueError):  # pydantic's ValidationError is a ValueError
        return price(engine, defaults)
