"""The live model catalog of the OpenAI-compatible API: ``GET /v1/models`` and
``GET /v1/models/{model_id}`` (mount ``build_models_router()`` with ``prefix="/v1"``).

OpenAI's shapes (list: ``{"object": "list", "data": [model, ...]}``; model: ``{"id",
"object": "model", "created", "owned_by"}``) plus stableserve fields on each model:

- ``provider``: ``"stableserve"``; ``type``: ``"image"``; ``name``, ``description``: the
  registry's; ``tasks``: the engine's tasks (``text-to-image``, ``upscale``, ...);
- ``best_for``: a short phrase (``BEST_FOR``, keyed by family);
- ``price``: credits per image at the engine's default settings (``core.pricing.default_price``);
- ``ready``: whether its weights are available (``inference.loading.readiness``);
- ``stats``: its jobs of the last hour (``jobs.stats.engine_stats``): ``jobs`` (count),
  ``p50_latency_ms`` / ``p95_latency_ms`` (finished - created of succeeded jobs, integer
  ms, null without one), ``success_rate`` (succeeded / (succeeded + failed), 0..1, null
  when none finished).

``created`` is the (approximate) public release date of the engine's model family, in epoch
seconds. Both routes need an API key (401 otherwise); an unknown id is ``NotFound`` with code
``model_not_found``, param ``model`` (404, rendered in OpenAI's error form by the app).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from stableserve.api.deps import AppState, app_state, authenticate
from stableserve.api.openai.schemas import ERRORS
from stableserve.core.engines import EngineSpec, Family
from stableserve.core.pricing import default_price
from stableserve.errors import NotFound

PROVIDER = "stableserve"
"""``provider`` and ``owned_by`` of every model."""

STATS_WINDOW = timedelta(hours=1)
"""How far back ``stats`` looks (jobs created since now - this)."""

BEST_FOR: dict[Family, str] = {
    Family.SD1: "general-purpose 512px text-to-image and image-to-image",
    Family.SD2_512: "512px text-to-image and image-to-image",
    Family.SD2_768: "768px text-to-image",
    Family.SDXL: "photorealistic 1024px text-to-image",
    Family.SDXL_BETA: "quick drafts up to 896px",
    Family.SD3: "prompt-faithful 1-megapixel text-to-image with legible text",
    Family.INPAINT: "inpainting: repainting a masked area",
    Family.UPSCALER_ESRGAN: "fast upscaling",
    Family.UPSCALER_LATENT_X4: "detailed 4x diffusion upscaling",
    Family.SEGMENTER_CLIPSEG: "masks from a text description",
    Family.MATTING_VITMATTE: "background removal with fine edges (hair, fur)",
}
"""What each family is best at (``best_for``); ControlNet / IP-Adapter engines: ``BEST_FOR_HELPERS``."""

BEST_FOR_HELPERS: dict[str, str] = {
    "sketch": "turning a sketch into an image (ControlNet scribble)",
    "canny": "keeping an image's structure with a new look (ControlNet edges)",
    "ip_adapter": "text-to-image in the style of a reference image (IP-Adapter)",
}
"""``best_for`` of engines with a ControlNet (keyed by ``control_preprocess``) or an IP-Adapter."""

RELEASED: dict[Family, str] = {
    Family.SD1: "2022-08-22",
    Family.SD2_512: "2022-11-24",
    Family.SD2_768: "2022-11-24",
    Family.SDXL: "2023-07-26",
    Family.SDXL_BETA: "2023-04-13",
    Family.SD3: "2024-10-22",
    Family.INPAINT: "2022-10-20",
    Family.UPSCALER_ESRGAN: "2021-07-22",
    Family.UPSCALER_LATENT_X4: "2022-11-24",
    Family.SEGMENTER_CLIPSEG: "2021-12-18",
    Family.MATTING_VITMATTE: "2023-05-24",
}
"""Approximate public release date (UTC, ISO) of each family's models: the source of ``created``."""


class ModelStats(BaseModel):
    """An engine's jobs created in the last hour."""

    jobs: int = Field(description="Jobs created in the window, any state.")
    p50_latency_ms: int | None = Field(description="Median finished - created of succeeded jobs, ms.")
    p95_latency_ms: int | None = Field(description="95th percentile of the same, ms.")
    success_rate: float | None = Field(description="succeeded / (succeeded + failed), 0..1.")


class Model(BaseModel):
    """One model: OpenAI's fields, then stableserve's."""

    id: str
    object: str = "model"
    created: int = Field(description="Release date of the model family, epoch seconds.")
    owned_by: str
    provider: str
    type: str = "image"
    name: str
    description: str
    best_for: str
    tasks: list[str]
    price: float = Field(description="Credits per image at the default settings.")
    ready: bool = Field(description="Whether the weights are available on this server.")
    stats: ModelStats


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: str = "list"
    data: list[Model]


def best_for(engine: EngineSpec) -> str:
    """The ``best_for`` phrase of ``engine`` (helpers first, then its family; never raises)."""
    if engine.control_preprocess is not None:
        return BEST_FOR_HELPERS[engine.control_preprocess]
    if engine.ip_adapter is not None:
        return BEST_FOR_HELPERS["ip_adapter"]
    return BEST_FOR.get(engine.family, "image generation")


def created_epoch(family: Family) -> int:
    """``RELEASED[family]`` as integer epoch seconds (0 for a family without a date)."""
    day = RELEASED.get(family)
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()) if day else 0


def describe(engine: EngineSpec, state: AppState, stats) -> Model:
    """The catalog entry of ``engine``; ``stats`` is its ``EngineStats`` or ``None`` (no jobs).

    Blocking (readiness looks at the model cache on disk).
    """
    from stableserve.inference.loading import readiness

    return Model(
        id=engine.id,
        created=created_epoch(engine.family),
        owned_by=PROVIDER,
        provider=PROVIDER,
        name=engine.name,
        description=engine.description,
        best_for=best_for(engine),
        tasks=[t.value for t in engine.tasks],
        price=default_price(engine),
        ready=readiness(engine, state.settings).ready,
        stats=ModelStats(
            jobs=stats.jobs if stats else 0,
            p50_latency_ms=stats.p50_latency_ms if stats else None,
            p95_latency_ms=stats.p95_latency_ms if stats else None,
            success_rate=stats.success_rate if stats else None,
        ),
    )


def catalog(state: AppState, engines: list[EngineSpec]) -> list[Model]:
    """Catalog entries of ``engines`` with the last hour's stats (one read of the job table).

    Blocking: run it in a thread from async code.
    """
    from stableserve.jobs.stats import engine_stats

    with state.sessions() as session:
        stats = engine_stats(session, datetime.now(UTC) - STATS_WINDOW)
    return [describe(e, state, stats.get(e.id)) for e in engines]


def build_models_router() -> APIRouter:
    """``GET /models`` and ``GET /models/{model_id}``; mount with ``prefix="/v1"``."""
    router = APIRouter(tags=["OpenAI"], responses=ERRORS)

    @router.get("/models", response_model=ModelList, summary="List models")
    async def list_models(request: Request) -> ModelList:
        """Every engine of the registry, in registry order, with price, readiness and stats."""
        await authenticate(request)
        state = app_state(request)
        data = await run_in_threadpool(catalog, state, list(state.registry.engines))
        return ModelList(data=data)

    @router.get("/models/{model_id}", response_model=Model, summary="Retrieve a model")
    async def retrieve_model(request: Request, model_id: str) -> Model:
        """One engine; 404 ``model_not_found`` for an id the registry does not serve."""
        await authenticate(request)
        state = app_state(request)
        engine = next((e for e in state.registry.engines if e.id == model_id), None)
        if engine is None:
            raise NotFound(
                f"The model '{model_id}' does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        (model,) = await run_in_threadpool(catalog, state, [engine])
        return model

    return router
