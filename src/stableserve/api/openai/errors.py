"""OpenAI's error body ``{"error": {"message", "type", "param", "code"}}`` with OpenAI's statuses.

The status and message come from ``api.errors.http_error`` like every protocol; types follow
OpenAI: ``invalid_request_error`` (400, 404; 401 with code ``invalid_api_key``),
``insufficient_quota`` (out of credits: 429, as OpenAI answers an exhausted quota),
``rate_limit_exceeded`` (429), ``server_error`` (500, 503); a prompt refused by content
moderation is OpenAI's 400 ``invalid_request_error`` with code ``content_policy_violation``.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from stableserve.api.errors import HttpError

OPENAI_PREFIXES = ("/v1/images/", "/v1/models")
"""Paths whose errors use OpenAI's body."""


def is_openai_path(path: str) -> bool:
    """True for the OpenAI-compatible paths."""
    return path.startswith(OPENAI_PREFIXES)


def openai_body(request_id: str, err: HttpError) -> JSONResponse:
    """The OpenAI error response for ``err``, with ``x-request-id``."""
    status, kind, code = err.status, "invalid_request_error", err.code
    param = "size" if err.param in ("width", "height") else err.param  # OpenAI's one size field
    if status == 401:
        code = "invalid_api_key"
    elif code == "content_moderation":  # OpenAI refuses flagged prompts with a 400
        status, code, param = 400, "content_policy_violation", None
    elif status == 402:
        status, kind, code = 429, "insufficient_quota", "insufficient_quota"
    elif status == 429:
        kind, code = "requests", "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    elif status == 400 and code in (None, "bad_request"):
        code = None
    body = {"error": {"message": err.message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers={"x-request-id": request_id, **(err.headers or {})})
