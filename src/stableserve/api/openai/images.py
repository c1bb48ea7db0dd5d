"""OpenAI Images routes under ``/v1`` (``images.generate``, ``images.edit``,
``images.create_variation``) and the signed artifact links they answer with.

Responses are ``{"created", "data": [{"url"} | {"b64_json"}], "usage": {...}}``; ``usage``
carries stableserve's figures: ``cost`` (credits charged), ``latency_ms``, ``engine`` and
``seeds``, plus OpenAI's token counters at 0. ``url`` links are signed, expire after
``settings.openai.url_ttl_s`` and need no API key (``links``).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from stableserve.api.deps import app_state, authenticate, read_form, read_json
from stableserve.api.openai import convert, links, schemas
from stableserve.api.rest_v1.convert import parse_model
from stableserve.core.engines import EngineSpec
from stableserve.core.types import GenerationRequest
from stableserve.errors import InvalidRequest, NotFound

FORBIDDEN = {
    "error": {
        "message": "This link is invalid or has expired.",
        "type": "invalid_request_error",
        "param": None,
        "code": "forbidden",
    }
}


def _engine(request: Request, model: str | None, default: str) -> EngineSpec:
    try:
        return app_state(request).registry.get(model or default)
    except NotFound:
        raise NotFound(
            f"The model '{model}' does not exist.", code="model_not_found", param="model"
        ) from None


async def _run(request: Request, gen: GenerationRequest, response_format: str) -> JSONResponse:
    state = app_state(request)
    principal = request.state.principal
    started = time.perf_counter()
    job_id, credits, artifacts = await state.service.run(
        principal, gen, disconnected=request.is_disconnected, store_result=response_format == "url"
    )
    latency = round((time.perf_counter() - started) * 1000)
    base = (state.settings.openai.public_url or str(request.base_url)).rstrip("/")
    ttl = state.settings.openai.url_ttl_s
    data = [
        convert.image_data(a, response_format, base + links.signed_path(state.secret, job_id, a.index, ttl))
        for a in artifacts
    ]
    usage: dict[str, Any] = {
        "cost": float(credits),
        "latency_ms": latency,
        "engine": gen.engine_id,
        "seeds": [a.seed for a in artifacts],
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
    }
    return JSONResponse({"created": int(time.time()), "data": data, "usage": usage})


def _file(form, name: str) -> UploadFile | None:
    value = form.get(name) or form.get(f"{name}[]")
    if value is not None and not isinstance(value, UploadFile):
        raise InvalidRequest(f"{name}: must be a file", param=name)
    return value


def _form_int(form, name: str, default: int, lo: int, hi: int) -> int:
    raw = form.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{name}: must be an integer", param=name) from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name}: must be between {lo} and {hi}", param=name)
    return value


def _response_format(form) -> str:
    value = form.get("response_format") or "url"
    if value not in ("url", "b64_json"):
        raise InvalidRequest("response_format: must be 'url' or 'b64_json'", param="response_format")
    return value


def build_images_router() -> APIRouter:
    """The OpenAI Images routes; mount with ``prefix="/v1"``."""
    router = APIRouter(tags=["OpenAI Images"], responses=schemas.ERRORS)

    @router.post(
        "/images/generations",
        summary="Create image (OpenAI)",
        responses=schemas.IMAGES_200,
        openapi_extra=schemas.json_body(),
    )
    async def generations(request: Request) -> JSONResponse:
        """Text-to-image: OpenAI's body plus stableserve's extensions (see ``convert``)."""
        await authenticate(request)
        body = parse_model(convert.GenerateBody, await read_json(request))
        engine = _engine(request, body.model, app_state(request).settings.openai.default_model)
        gen = convert.generation_request(body, engine)
        return await _run(request, gen, body.response_format)

    @router.post(
        "/images/edits",
        summary="Create image edit (OpenAI)",
        responses=schemas.IMAGES_200,
        openapi_extra=schemas.multipart_body(prompt=True, mask=True),
    )
    async def edits(request: Request) -> JSONResponse:
        """Edit `image` where `mask` (or the image itself) is transparent, from `prompt`."""
        await authenticate(request)
        form = await read_form(request)
        image, mask = _file(form, "image"), _file(form, "mask")
        if image is None:
            raise InvalidRequest("image: is required", param="image")
        prompt = form.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequest("prompt: is required", param="prompt")
        ext = parse_model(
            convert.Extensions, {k: v for k, v in form.items() if isinstance(v, str) and v != ""}
        )
        engine = _engine(request, form.get("model"), app_state(request).settings.openai.edit_model)
        image_bytes = await image.read()
        mask_bytes = await mask.read() if mask is not None else None
        output_format = form.get("output_format") or "png"
        if output_format not in ("png", "jpeg", "webp"):
            raise InvalidRequest("output_format: must be png, jpeg or webp", param="output_format")
        gen = await run_in_threadpool(
            convert.edit_request,
            engine,
            image_bytes,
            mask_bytes,
            prompt,
            _form_int(form, "n", 1, 1, 10),
            ext,
            output_format,
        )
        return await _run(request, gen, _response_format(form))

    @router.post(
        "/images/variations",
        summary="Create image variation (OpenAI)",
        responses=schemas.IMAGES_200,
        openapi_extra=schemas.multipart_body(prompt=False, mask=False),
    )
    async def variations(request: Request) -> JSONResponse:
        """Variations of `image` (image-to-image at strength 0.6)."""
        await authenticate(request)
        form = await read_form(request)
        image = _file(form, "image")
        if image is None:
            raise InvalidRequest("image: is required", param="image")
        ext = parse_model(
            convert.Extensions, {k: v for k, v in form.items() if isinstance(v, str) and v != ""}
        )
        engine = _engine(request, form.get("model"), app_state(request).settings.openai.variation_model)
        gen = await run_in_threadpool(
            convert.variation_request, engine, await image.read(), _form_int(form, "n", 1, 1, 10), ext
        )
        return await _run(request, gen, _response_format(form))

    @router.get("/images/files/{job_id}/{index}", summary="A signed image link", include_in_schema=False)
    async def image_file(job_id: str, index: int, request: Request) -> Response:
        """The stored artifact behind a signed link; 403 (saying nothing more) when the link
        is expired, altered or its image gone."""
        state = app_state(request)
        try:
            expires = int(request.query_params.get("expires", ""))
        except ValueError:
            return JSONResponse(FORBIDDEN, status_code=403)
        sig = request.query_params.get("signature", "")
        if not links.verify(state.secret, job_id, index, expires, sig):
            return JSONResponse(FORBIDDEN, status_code=403)
        try:
            artifacts = await run_in_threadpool(state.jobs.store.get, job_id)
        except ValueError:
            artifacts = None
        match = [a for a in artifacts or () if a.index == index]
        if not match:
            return JSONResponse(FORBIDDEN, status_code=403)
        return Response(
            match[0].data, media_type=match[0].mime, headers={"cache-control": "private, max-age=3600"}
        )

    return router
