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
