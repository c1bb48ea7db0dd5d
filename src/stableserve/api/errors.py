"""Request ids and the mapping of domain errors to HTTP statuses, shared by every HTTP adapter.

Each protocol renders the body in its own shape (v1: ``{id, name, message}``, v2:
``{id, name, errors}``); the status and the error *name* come from here so a feature's
errors are decided once. Names follow CONTRACT.md §2.6 / §3.1.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from stableserve import errors as e

V1_400_NAMES = frozenset(
    {
        "bad_request",
        "invalid_samples",
        "invalid_height_or_width",
        "invalid_file_size",
        "invalid_mime_type",
        "invalid_image_dimensions",
        "invalid_mask_image",
        "invalid_prompts",
        "invalid_pixel_count",
        "invalid_sdxl_v222_dimensions",
        "invalid_sdxl_v1_dimensions",
    }
)
"""The 400 names of the v1 contract; any other InvalidRequest code is reported as ``bad_request``."""

SERVER_ERROR_MESSAGE = "An unexpected server error occurred, please try again."


def new_request_id() -> str:
    """A fresh error/request id: 32 lowercase hex characters (as Stability's live ids)."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class HttpError:
    """What an adapter needs to answer an error: HTTP ``status``, error ``name``, ``message``,
    and extra response ``headers`` (e.g. ``Retry-After``)."""

    status: int
    name: str
    message: str
    headers: dict[str, str] | None = None
    param: str | None = None
    code: str | None = None


def http_error(exc: Exception) -> HttpError:
    """Map a domain error (or anything else) to status, name and message.

    InvalidRequest 400 (its code when the contract knows it, else ``bad_request``), Unauthorized
    401, PermissionDenied 403, NotFound 404, InsufficientCredits 402 ``insufficient_credits``,
    EngineNotReady 503 ``engine_not_ready``, Overloaded 503 ``overloaded`` (Retry-After 5),
    RateLimited 429 ``rate_limit_exceeded`` (Retry-After), PayloadTooLarge 413
    ``payload_too_large``, ContentModerated 403 ``content_moderation`` (the v2 contract; see
    ``v1_error`` for v1), GenerationCancelled 499-like 400 ``cancelled``, IdempotencyConflict
    409 ``idempotency_key_in_use``, JobFinished 409 ``job_finished``, IdempotencyMismatch 422
    ``idempotency_key_mismatch``, anything else 500 ``server_error`` with a generic message
    (the details only go to the log).
    """
    exc = e.as_domain_error(exc)  # a bound of a core type (pydantic) is a 400
    err = _http_error(exc)
    if isinstance(exc, e.StableServeError):  # the field and machine code, for protocols that show them
        return HttpError(err.status, err.name, err.message, err.headers, exc.param, exc.code)
    return err


def _http_error(exc: Exception) -> HttpError:
    if isinstance(exc, e.InvalidRequest):
        name = exc.code if exc.code in V1_400_NAMES else "bad_request"
        return HttpError(400, name, exc.message)
    if isinstance(exc, e.Unauthorized):
        return HttpError(401, "unauthorized", exc.message)
    if isinstance(exc, e.ContentModerated):
        return HttpError(403, "content_moderation", exc.message)
    if isinstance(exc, e.PermissionDenied):
        return HttpError(403, "permission_denied", exc.message)
    if isinstance(exc, e.NotFound):
        return HttpError(404, "not_found", exc.message)
    if isinstance(exc, e.InsufficientCredits):
        return HttpError(402, "insufficient_credits", exc.message)
    if isinstance(exc, e.EngineNotReady):
        return HttpError(503, "engine_not_ready", exc.message, {"Retry-After": "60"})
    if isinstance(exc, e.Overloaded):
        return HttpError(503, "overloaded", exc.message, {"Retry-After": "5"})
    if isinstance(exc, e.RateLimited):
        return HttpError(429, "rate_limit_exceeded", exc.message, {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, e.PayloadTooLarge):
        return HttpError(413, "payload_too_large", exc.message)
    if isinstance(exc, e.IdempotencyConflict):
        return HttpError(409, "idempotency_key_in_use", exc.message)
    if isinstance(exc, e.JobFinished):
        return HttpError(409, "job_finished", exc.message)
    if isinstance(exc, e.IdempotencyMismatch):
        return HttpError(422, "idempotency_key_mismatch", exc.message)
    if isinstance(exc, e.GenerationCancelled):
        return HttpError(400, "cancelled", exc.message)
    return HttpError(500, "server_error", SERVER_ERROR_MESSAGE)


V1_FILTERED_MESSAGE = (
    "One or more of the prompts contains filtered words; your request was denied and you were not charged."
)


def v1_error(err: HttpError) -> HttpError:
    """``err`` as the REST v1 family answers it: a flagged prompt is 400 ``invalid_prompts``
    ("One or more of the prompts contains filtered words", the v1 OpenAPI's 400 name), not
    v2's 403 ``content_moderation``; everything else unchanged."""
    if err.code == "content_moderation":
        return HttpError(400, "invalid_prompts", V1_FILTERED_MESSAGE, err.headers, err.param, err.code)
    return err
