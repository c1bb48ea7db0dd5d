"""REST v1 routes under ``/v1``, ``/v1beta`` and ``/v1alpha`` (CONTRACT.md §2.1, §2.7).

v1 and v1beta share shapes; v1alpha takes the raw key, an ``options`` JSON form field for the
image routes, and answers JSON as a bare array of images. The upscale route is v1 only.
stableserve extensions (v1 and v1beta): ``Prefer: respond-async`` with results, cancel and
price routes (``rest_v1.jobs``), engine capabilities (``rest_v1.capabilities``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from stableserve.api.deps import app_state, authenticate, read_form, read_json
from stableserve.api.openapi_doc import inline_schema, json_body
from stableserve.api.rest_v1 import convert, jobs
from stableserve.api.rest_v1.capabilities import add_capability_routes
from stableserve.api.rest_v1.schemas import (
    AccountResponseBody,
    BalanceResponseBody,
    Engine,
    Error,
    GenerationResponse,
    ImageToImageOptions,
    MaskingOptions,
    OrganizationMembership,
    TextToImageRequestBody,
    UpscaleOptions,
)
from stableserve.core.types import GenerationRequest
from stableserve.errors import InvalidRequest

log = logging.getLogger("stableserve.api")

Flavor = Literal["v1", "v1beta", "v1alpha"]

_ERRORS = {code: {"model": Error} for code in (400, 401, 402, 403, 404, 500, 503)}
def _image_200(flavor: Flavor) -> dict:
    """The 200 of a generation route: ``{"artifacts": [...]}`` JSON (v1alpha: the bare array,
    CONTRACT.md §2.7) or PNG bytes."""
    json_schema = inline_schema(GenerationResponse)
    if flavor == "v1alpha":
        json_schema = json_schema["properties"]["artifacts"]
    return {
        200: {
            "description": "One artifact per sample: JSON by default, PNG bytes with `Accept: image/png`.",
            "content": {
                "application/json": {"schema": json_schema},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
            "headers": {
                "Finish-Reason": {"schema": {"type": "string"}},
                "Seed": {"schema": {"type": "integer"}},
            },
        }
    }


def _multipart_doc(model, files: dict[str, bool]) -> dict[str, Any]:
    schema = inline_schema(model)
    props = dict(schema.get("properties", {}))
    for name in files:
        props[name] = {"type": "string", "format": "binary"}
    required = [f for f, req in files.items() if req] + list(schema.get("required", []))
    body = {"type": "object", "properties": props, "required": required}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body}}}}


def build_router(flavor: Flavor) -> APIRouter:
    """The routes of one flavor; mount with ``prefix=f"/{flavor}"``."""
    router = APIRouter(tags=[f"REST {flavor}"], responses=_ERRORS)
    image_200 = _image_200(flavor)
    alpha = flavor == "v1alpha"

    async def run(request: Request, gen: GenerationRequest) -> Response:
        state = app_state(request)
        if not alpha and jobs.wants_async(request):  # stableserve extension (``rest_v1.jobs``)
            return await jobs.respond_async(request, gen, flavor)
        png = convert.wants_png(request.headers.get("accept"))
        if png and gen.samples > 1:
            raise InvalidRequest(
                "Sample count may only be greater than 1 when the accept header is set to `application/json`",
                code="invalid_samples",
                param="samples",
            )
        artifacts = await state.service.generate(
            request.state.principal, gen, disconnected=request.is_disconnected
        )
        return convert.render(artifacts, png=png, bare_array=alpha)

    async def options_from(request: Request, form, model):
        data = convert.alpha_options(form) if alpha else convert.form_fields(form)
        return convert.parse_model(model, data)

    @router.get("/engines/list", response_model=list[Engine], summary="List engines")
    async def list_engines(request: Request) -> list[Engine]:
        """The engines this server serves (id, name, description, type)."""
        await authenticate(request)
        return [
            Engine(id=e.id, name=e.name, description=e.description, type=e.type)
            for e in app_state(request).registry.engines
        ]

    @router.get("/user/account", response_model=AccountResponseBody, summary="Account details")
    async def user_account(request: Request) -> AccountResponseBody:
        """The key's user and the organizations it belongs to (ignores the Organization header)."""
        from stableserve.accounts import orgs as orgs_mod

        principal = await authenticate(request, use_org_header=False)
        state = app_state(request)

        def work() -> AccountResponseBody:
            with state.sessions() as session:
                members = orgs_mod.user_orgs(session, principal.user_id)
                return AccountResponseBody(
                    id=principal.user_id,
                    email=principal.email,
                    organizations=[
                        OrganizationMembership(id=org.id, name=org.name, role=m.role, is_default=m.is_default)
                        for org, m in members
                    ],
                )

        return await run_in_threadpool(work)

    @router.get("/user/balance", response_model=BalanceResponseBody, summary="Credit balance")
    async def user_balance(request: Request) -> BalanceResponseBody:
        """Credits of the organization the request acts for (the key's, or the Organization header's)."""
        from stableserve.accounts import ledger

        principal = await authenticate(request)
        state = app_state(request)

        def work() -> float:
            with state.sessions() as session:
                return float(ledger.balance(session, principal.org_id))

        return BalanceResponseBody(credits=await run_in_threadpool(work))

    @router.post(
        "/generation/{engine_id}/text-to-image",
        responses=image_200,
        summary="Text-to-image",
        openapi_extra=json_body(TextToImageRequestBody),
    )
    async def text_to_image(engine_id: str, request: Request) -> Response:
        """Generate images from text prompts (JSON body)."""
        await authenticate(request)
        body = convert.parse_model(TextToImageRequestBody, await read_json(request))
        return await run(request, convert.text_to_image(engine_id, body))

    @router.post(
        "/generation/{engine_id}/image-to-image",
        responses=image_200,
        summary="Image-to-image",
        openapi_extra=_multipart_doc(ImageToImageOptions, {"init_image": True}),
    )
    async def image_to_image(engine_id: str, request: Request) -> Response:
        """Modify an init image (IMAGE_STRENGTH or STEP_SCHEDULE mode); multipart body."""
        await authenticate(request)
        form = await read_form(request)
        body = await options_from(request, form, ImageToImageOptions)
        init = await convert.read_file(form, "init_image")
        return await run(request, convert.image_to_image(engine_id, body, init))

    @router.post(
        "/generation/{engine_id}/image-to-image/masking",
        responses=image_200,
        summary="Inpainting",
        openapi_extra=_multipart_doc(MaskingOptions, {"init_image": True, "mask_image": False}),
    )
    async def masking(engine_id: str, request: Request) -> Response:
        """Inpaint the masked area of an init image (MASK_IMAGE_WHITE, MASK_IMAGE_BLACK, INIT_IMAGE_ALPHA)."""
        await authenticate(request)
        form = await read_form(request)
        body = await options_from(request, form, MaskingOptions)
        init = await convert.read_file(form, "init_image")
        mask = await convert.read_file(form, "mask_image", required=False)
        return await run(request, convert.masking(engine_id, body, init, mask))

    if flavor == "v1":

        @router.post(
            "/generation/{engine_id}/image-to-image/upscale",
            responses=image_200,
            summary="Upscale",
            openapi_extra=_multipart_doc(UpscaleOptions, {"image": True}),
        )
        async def upscale(engine_id: str, request: Request) -> Response:
            """Upscale an image to `width` or `height` (ESRGAN; the latent upscaler also takes prompts)."""
            await authenticate(request)
            form = await read_form(request)
            body = convert.parse_model(UpscaleOptions, convert.form_fields(form))
            image = await convert.read_file(form, "image")
            return await run(request, convert.upscale(engine_id, body, image))

    add_capability_routes(router, flavor)  # GET /engines/{engine_id}/capabilities
    if not alpha:  # async generation, progress, cancel and price (stableserve extensions)
        jobs.add_job_routes(router, flavor)
    return router
