"""Domain errors raised by the core and the worker; protocol adapters map them to wire bodies.

Every error carries a stable ``code`` (the Stability v1 error name where the contract has
one, CONTRACT.md §2.6) and, for request errors, the ``param`` it concerns. Adapters choose
the status code and body shape for their protocol; nothing here knows a wire format.
"""

from __future__ import annotations


class StableServeError(Exception):
    """Base class. ``code`` is a machine name, ``str(err)`` a human message."""

    code = "server_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param


class InvalidRequest(StableServeError):
    """The request is malformed or out of range (HTTP 400). ``code`` e.g. ``invalid_pixel_count``."""

    code = "bad_request"


class NotFound(StableServeError):
    """An engine, job or artifact does not exist (HTTP 404)."""

    code = "not_found"


class EngineNotReady(StableServeError):
    """The engine exists but its weights are not available locally (HTTP 503-like)."""

    code = "engine_not_ready"


class RegistryError(StableServeError):
    """The engine registry file is invalid; the message names the file, engine and field."""

    code = "invalid_registry"


class GenerationCancelled(StableServeError):
    """The job was cancelled between two denoising steps."""

    code = "cancelled"


class GenerationFailed(StableServeError):
    """The pipeline raised while generating (HTTP 500 ``server_error``); no credit is charged."""

    code = "server_error"


class Unauthorized(StableServeError):
    """Missing, unknown or revoked API key (HTTP 401 ``unauthorized``)."""

    code = "unauthorized"


class PermissionDenied(StableServeError):
    """The key may not act for the requested organization (HTTP 403 ``permission_denied``)."""

    code = "permission_denied"


class InsufficientCredits(StableServeError):
    """The organization's balance does not cover the request's price; raised before any work.

    ``needed`` and ``balance`` are credits.
    """

    code = "insufficient_credits"

    def __init__(self, message: str, *, needed: float = 0.0, balance: float = 0.0):
        super().__init__(message)
        self.needed = needed
        self.balance = balance


class Overloaded(StableServeError):
    """Admission control refused new work (queue full); retry later (HTTP 503)."""

    code = "overloaded"


class PayloadTooLarge(StableServeError):
    """The request body exceeds the protocol's limit (HTTP 413 ``payload_too_large``; REST v2beta:
    10 MiB, CONTRACT.md §3.1). Raised before the body is read into memory."""

    code = "payload_too_large"


class RateLimited(StableServeError):
    """The API key exceeded its request limit and is timed out (HTTP 429 ``rate_limit_exceeded``,
    gRPC RESOURCE_EXHAUSTED). ``retry_after`` in seconds."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int = 60):
        super().__init__(message)
        self.retry_after = retry_after


class ContentModerated(StableServeError):
    """The organization's ``ModerationPolicy`` flagged a prompt; raised before any work or
    charge (v2 403 ``content_moderation``, v1 400 ``invalid_prompts``, OpenAI 400
    ``content_policy_violation``, gRPC an ``ARTIFACT_TEXT`` answer with ``finish_reason=FILTER``).

    ``field``: which request field was flagged (``prompts``, ``negative_prompts``,
    ``mask_prompt``); ``text``: the flagged text, for the gRPC answer only (never logged).
    """

    code = "content_moderation"

    def __init__(self, message: str, *, field: str = "prompts", text: str = ""):
        super().__init__(message, param=field)
        self.field = field
        self.text = text


class IdempotencyConflict(StableServeError):
    """The ``Idempotency-Key`` cannot be used now (HTTP 409 ``idempotency_key_in_use``): a
    request with it is still running, or its first response was too large to keep."""

    code = "idempotency_key_in_use"


class JobFinished(StableServeError):
    """The job already finished, so it cannot be cancelled any more (HTTP 409 ``job_finished``)."""

    code = "job_finished"


class IdempotencyMismatch(StableServeError):
    """The ``Idempotency-Key`` was already used with a different request (another body, path,
    query or Accept) within its lifetime (HTTP 422 ``idempotency_key_mismatch``)."""

    code = "idempotency_key_mismatch"


def as_domain_error(exc: Exception) -> Exception:
    """``exc``, or an ``InvalidRequest`` when it is a pydantic ``ValidationError`` raised while
    an adapter built a core value (``GenerationRequest``, ``WeightedPrompt``, ...) from wire
    input: the first error's location and message, e.g. ``text: String should have at most
    10000 characters``. Every adapter's error mapping calls this, so a bound declared on a core
    type is a 400 (gRPC INVALID_ARGUMENT) on every protocol, never a 500."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError) or not exc.errors():
        return exc
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ())) or "body"
    return InvalidRequest(f"{field}: {first.get('msg', 'invalid value')}", param=field)
