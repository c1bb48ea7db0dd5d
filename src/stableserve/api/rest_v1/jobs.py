"""stableserve extensions of REST v1 (``/v1`` and ``/v1beta``; not in Stability's API): asynchronous
generation with progress and cancel, and a price quote. The playground uses them; any client may.

- ``Prefer: respond-async`` (RFC 7240) on a generation POST: ``202 {"id", "status":
  "in-progress", "credits"}`` with ``Location: /v1/generation/results/{id}`` and
  ``Preference-Applied: respond-async``; the job runs in any server process and its result is
  kept ``results.retention_s`` (24 h). Without the header nothing changes.
- ``GET /v1/generation/results/{id}``: ``202 {"id", "status": "in-progress", "state":
  "queued" | "running", "progress": 0..1 | null}`` while unfinished; then exactly the
  synchronous answer (JSON ``{"artifacts": [...]}``, or PNG bytes with ``Accept: image/png``);
  a failed or cancelled job answers its own v1 error; unknown, expired or another
  organization's: 404 ``not_found``.
- ``DELETE /v1/generation/results/{id}``: ``202 {"id", "status": "cancelling"}`` (the job
  stops whichever process runs it, and is not charged); 404 unknown; 409 ``job_finished``.
- ``POST /v1/generation/{engine_id}/price``: a text-to-image body; ``200 {"credits"}``, what
  that request would reserve (the price depends on engine, size, steps and samples only, so it
  is also the price of an image-to-image or inpainting of that size). Nothing is charged.

All of it sits on ``GenerationService`` (``submit``, ``fetch``, ``status``, ``cancel``,
``quote``), so the same jobs are reachable from every protocol.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from stableserve.api.deps import app_state, authenticate, read_json
from stableserve.api.openapi_doc import inline_schema, json_body
from stableserve.api.rest_v1 import convert
from stableserve.api.rest_v1.schemas import Error, GenerationResponse, TextToImageRequestBody
from stableserve.core.types import GenerationRequest
from stableserve.errors import InvalidRequest

JOB_ID = re.compile(r"^[0-9a-f]{64}$")
RESPOND_ASYNC = "respond-async"


class JobAccepted(BaseModel):
    """The 202 of a generation POST sent with ``Prefer: respond-async``."""

    id: str = Field(description="The job id (64 hex characters): poll `/v1/generation/results/{id}`.")
    status: str = Field("in-progress", description="Always `in-progress`.")
    credits: float = Field(description="Credits reserved for the job (charged only if it succeeds).")


class JobProgress(BaseModel):
    """The 202 of ``GET /v1/generation/results/{id}`` while the job is unfinished."""

    id: str
    status: str = Field("in-progress", description="Always `in-progress` (the v2beta word).")
    state: str = Field(description="`queued` or `running`.")
    progress: float | None = Field(description="Fraction of the denoising steps done (0..1), or null.")


class CancelAccepted(BaseModel):
    """The 202 of ``DELETE /v1/generation/results/{id}``."""

    id: str
    status: str = Field("cancelling", description="Always `cancelling`.")


class Quote(BaseModel):
    """The 200 of ``POST /v1/generation/{engine_id}/price``."""

    credits: float = Field(description="Credits the request would reserve (and be charged on success).")


def wants_async(request: Request) -> bool:
    """True when the request carries ``Prefer: respond-async`` (RFC 7240; other preferences
    in the header are ignored)."""
    for value in request.headers.getlist("prefer"):
        for preference in value.split(","):
            if preference.split(";")[0].strip().lower() == RESPOND_ASYNC:
                return True
    return False


async def respond_async(request: Request, gen: GenerationRequest, flavor: str) -> Response:
    """Queue ``gen`` as an asynchronous job of the caller's organization; the 202 answer."""
    service = app_state(request).service
    job_id, credits = await service.submit_priced(request.state.principal, gen)
    body = JobAccepted(id=job_id, credits=float(credits))
    headers = {"Location": f"/{flavor}/generation/results/{job_id}", "Preference-Applied": RESPOND_ASYNC}
    return JSONResponse(body.model_dump(), status_code=202, headers=headers)


def _job_id(value: str) -> str:
    if not JOB_ID.match(value):
        raise InvalidRequest("id: must be a 64-character job id", param="id")
    return value


def add_job_routes(router: APIRouter, flavor: str) -> None:
    """Add the results, cancel and price routes to ``flavor``'s router (``v1``, ``v1beta``)."""
    errors = {code: {"model": Error} for code in (400, 401, 404, 409)}

    @router.get(
        "/generation/results/{id}",
        summary="Result of an asynchronous generation (stableserve extension)",
        responses={
            **errors,
            200: {
                "description": "The synchronous answer (JSON, or PNG with `Accept: image/png`).",
                "content": {
                    "application/json": {"schema": inline_schema(GenerationResponse)},
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            202: {"model": JobProgress, "description": "Still queued or running."},
        },
    )
    async def job_result(id: str, request: Request) -> Response:  # noqa: A002 - the wire name
        """Poll a job queued with `Prefer: respond-async`: 202 with its state and progress while
        unfinished, then the synchronous answer; its own error if it failed or was cancelled."""
        job_id = _job_id(id)
        principal = await authenticate(request)
        service = app_state(request).service
        artifacts = await service.fetch(principal, job_id)
        if artifacts is None:
            info = await service.status(principal, job_id)
            if info.done:  # finished meanwhile
                artifacts = await service.fetch(principal, job_id)
            if artifacts is None:
                state = "running" if info.done else info.state
                body = JobProgress(id=job_id, state=state, progress=info.progress)
                return JSONResponse(body.model_dump(), status_code=202)
        png = convert.wants_png(request.headers.get("accept"))
        if png and len(artifacts) > 1:
            raise InvalidRequest(
                "Sample count may only be greater than 1 when the accept header is set to `application/json`",
                code="invalid_samples",
                param="samples",
            )
        return convert.render(artifacts, png=png, bare_array=False)

    @router.delete(
        "/generation/results/{id}",
        status_code=202,
        response_model=CancelAccepted,
        responses=errors,
        summary="Cancel an asynchronous generation (stableserve extension)",
    )
    async def job_cancel(id: str, request: Request) -> CancelAccepted:  # noqa: A002 - the wire name
        """Cancel a queued or running job whichever server process runs it; it is not charged.
        409 `job_finished` once it has finished."""
        job_id = _job_id(id)
        principal = await authenticate(request)
        await app_state(request).service.cancel(principal, job_id)
        return CancelAccepted(id=job_id)

    @router.post(
        "/generation/{engine_id}/price",
        response_model=Quote,
        responses=errors,
        summary="Price of a generation (stableserve extension)",
        openapi_extra=json_body(TextToImageRequestBody),
    )
    async def price(engine_id: str, request: Request) -> Quote:
        """The credits a text-to-image request with this body would reserve (also the price of
        an image-to-image or inpainting of the same size, steps and samples); charges nothing."""
        await authenticate(request)
        body = convert.parse_model(TextToImageRequestBody, await read_json(request))
        credits = await app_state(request).service.quote(convert.text_to_image(engine_id, body))
        return Quote(credits=float(credits))
