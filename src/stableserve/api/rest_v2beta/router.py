"""REST v2beta routes under ``/v2beta`` (CONTRACT.md §3): generate (ultra, core, sd3), upscale
(fast, conservative, creative) and the async results.

Every POST is multipart only; parameters are validated before the API key (Stability's
order, §1.2); errors use the v2 body (``rest_v2beta.errors``). Sync endpoints answer the
image (``accept: image/*``) or JSON; ``upscale/creative`` answers ``{"id"}`` and its result
is polled at ``/v2beta/results/{id}`` (or the legacy ``.../upscale/creative/result/{id}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from stableserve.api.deps import app_state, authenticate, read_form
from stableserve.api.rest_v2beta import convert
from stableserve.api.rest_v2beta.forms import V2Form
from stableserve.errors import InvalidRequest

GENERATION_ID = re.compile(r"^[0-9a-f]{64}$")
"""A v2 GenerationID: exactly 64 lowercase hex characters (our job ids)."""

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["id", "name", "errors"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
}
_ERRORS = {
    code: {"description": name, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    for code, name in (
        (400, "bad_request"),
        (401, "unauthorized"),
        (402, "payment_required"),
        (403, "content_moderation"),
        (413, "payload_too_large"),
        (500, "internal_error"),
    )
}
IMAGE_200 = {
    200: {
        "description": "The image (`accept: image/*`, headers finish-reason and seed) or "
        '`{"image", "finish_reason", "seed"}` (`accept: application/json`).',
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/json; type=image/png": {
                "schema": {
                    "type": "object",
                    "required": ["image", "finish_reason"],
                    "properties": {
                        "image": {"type": "string"},
                        "finish_reason": {"type": "string", "enum": ["SUCCESS", "CONTENT_FILTERED"]},
                        "seed": {"type": "number"},
                    },
                }
            },
        },
    }
}


def multipart(fields: dict[str, str], required: tuple[str, ...]) -> dict:
    """OpenAPI ``requestBody`` of a multipart endpoint: ``fields`` name -> JSON type or ``file``."""
    props = {
        name: ({"type": "string", "format": "binary"} if kind == "file" else {"type": kind})
        for name, kind in fields.items()
    }
    schema = {"type": "object", "properties": props, "required": list(required)}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


_GENERATE_FIELDS = {
    "prompt": "string",
    "negative_prompt": "string",
    "aspect_ratio": "string",
    "seed": "number",
    "style_preset": "string",
    "output_format": "string",
}


async def parse(request: Request, build: Callable, *files: str, required: tuple[str, ...] = ()):
    """Read the multipart body, build the request with ``build(registry, form, *file_bytes)``
    in a worker thread (parameters are checked before the key, as Stability does), then
    authenticate. Returns (principal, GenerationRequest, ProductSpec)."""
    form = V2Form(await read_form(request))
    blobs = [await form.file(name, required=name in required) for name in files]
    gen, product = await run_in_threadpool(build, app_state(request).registry, form, *blobs)
    principal = await authenticate(request)
    return principal, gen, product


async def sync(request: Request, build: Callable, *files: str, required: tuple[str, ...] = ()) -> Response:
    """A synchronous endpoint: run the job and answer the image in the requested accept mode."""
    principal, gen, product = await parse(request, build, *files, required=required)
    artifacts = await app_state(request).service.generate(
        principal, gen, disconnected=request.is_disconnected, per_image=product.credits
    )
    return convert.render(artifacts[0], request.headers.get("accept"))


async def submit(
    request: Request, build: Callable, *files: str, required: tuple[str, ...] = ()
) -> JSONResponse:
    """An asynchronous endpoint: queue the job and answer ``{"id": <64 hex>}``."""
    principal, gen, product = await parse(request, build, *files, required=required)
    job_id = await app_state(request).service.submit(principal, gen, per_image=product.credits)
    return JSONResponse({"id": job_id})


def build_router() -> APIRouter:
    """The v2beta routes; mount with ``prefix="/v2beta"``."""
    from stableserve.api.rest_v2beta.edit_routes import add_edit_routes

    router = APIRouter(tags=["REST v2beta"], responses=_ERRORS)

    @router.post(
        "/stable-image/generate/ultra",
        responses=IMAGE_200,
        summary="Stable Image Ultra",
        openapi_extra=multipart({**_GENERATE_FIELDS, "image": "file", "strength": "number"}, ("prompt",)),
    )
    async def generate_ultra(request: Request) -> Response:
        """Text-to-image (or image-to-image with `image` + `strength`) on the registry's `ultra` engine."""
        return await sync(request, convert.ultra_request, "image")

    @router.post(
        "/stable-image/generate/core",
        responses=IMAGE_200,
        summary="Stable Image Core",
        openapi_extra=multipart(_GENERATE_FIELDS, ("prompt",)),
    )
    async def generate_core(request: Request) -> Response:
        """Text-to-image on the registry's `core` engine."""
        return await sync(request, convert.core_request)

    @router.post(
        "/stable-image/generate/sd3",
        responses=IMAGE_200,
        summary="Stable Diffusion 3.5",
        openapi_extra=multipart(
            {
                **_GENERATE_FIELDS,
                "mode": "string",
                "model": "string",
                "image": "file",
                "strength": "number",
                "cfg_scale": "number",
            },
            ("prompt",),
        ),
    )
    async def generate_sd3(request: Request) -> Response:
        """SD 3.5 Large / Large Turbo / Medium / Flash; text-to-image or image-to-image."""
        return await sync(request, convert.sd3_request, "image")

    @router.post(
        "/stable-image/upscale/fast",
        responses=IMAGE_200,
        summary="Fast upscale (4x)",
        openapi_extra=multipart({"image": "file", "output_format": "string"}, ("image",)),
    )
    async def upscale_fast(request: Request) -> Response:
        """4x super-resolution (Real-ESRGAN via spandrel)."""
        return await sync(request, convert.fast_upscale_request, "image", required=("image",))

    _upscale_fields = {
        "image": "file",
        "prompt": "string",
        "negative_prompt": "string",
        "seed": "number",
        "creativity": "number",
        "output_format": "string",
    }

    @router.post(
        "/stable-image/upscale/conservative",
        responses=IMAGE_200,
        summary="Conservative upscale (about 4 MP)",
        openapi_extra=multipart(_upscale_fields, ("image", "prompt")),
    )
    async def upscale_conservative(request: Request) -> Response:
        """Diffusion upscale to about 4 megapixels that keeps the image's content."""
        return await sync(request, convert.conservative_upscale_request, "image", required=("image",))

    @router.post(
        "/stable-image/upscale/creative",
        summary="Creative upscale (async)",
        responses={200: {"description": '`{"id": "<64-hex generation id>"}`; poll /v2beta/results/{id}.'}},
        openapi_extra=multipart({**_upscale_fields, "style_preset": "string"}, ("image", "prompt")),
    )
    async def upscale_creative(request: Request) -> JSONResponse:
        """Diffusion upscale that re-imagines detail; answers a generation id to poll."""
        return await submit(request, convert.creative_upscale_request, "image", required=("image",))

    async def result(request: Request, generation_id: str) -> Response:
        if not GENERATION_ID.match(generation_id):
            raise InvalidRequest("id: must be a 64-character generation id", param="id")
        principal = await authenticate(request)
        artifacts = await app_state(request).service.fetch(principal, generation_id)
        if artifacts is None:
            return JSONResponse({"id": generation_id, "status": "in-progress"}, status_code=202)
        return convert.render(artifacts[0], request.headers.get("accept"))

    _poll_200 = {
        **IMAGE_200,
        202: {"description": '`{"id", "status": "in-progress"}` while the generation runs.'},
        404: {
            "description": "generation_not_found",
            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
        },
    }

    @router.get("/results/{id}", responses=_poll_200, summary="Fetch an async generation result")
    async def results(id: str, request: Request) -> Response:  # noqa: A002 - the wire name
        """The finished result (exactly the synchronous response), 202 while in progress, 404
        when unknown, expired (kept 24 h) or another organization's."""
        return await result(request, id)

    @router.get(
        "/stable-image/upscale/creative/result/{id}",
        responses=_poll_200,
        summary="Fetch a creative upscale result (legacy path)",
    )
    async def creative_result(id: str, request: Request) -> Response:  # noqa: A002 - the wire name
        """Legacy poll path of the creative upscaler; same as `/v2beta/results/{id}`."""
        return await result(request, id)

    add_edit_routes(router)
    return router
