"""REST v2beta error bodies: ``{"id", "name", "errors": [...]}`` (CONTRACT.md §3.1).

The status comes from ``api.errors.http_error`` like every protocol; the v2 *name* and
message follow Stability's v2 examples: every 400 is ``bad_request`` with a message that
starts with the field (``"prompt: is required"``), 401 ``unauthorized``, 402
``payment_required``, 404 on a result ``generation_not_found``, 413 ``payload_too_large``,
500 ``internal_error``.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from stableserve.api.errors import HttpError

V2_PREFIXES = ("/v2beta/", "/v2alpha/")
"""Paths whose errors use the v2 body."""

NOT_FOUND_MESSAGE = "id: the generation either does not exist or has expired."
UNAUTHORIZED_MESSAGE = "authorization: invalid or missing header value"
INTERNAL_MESSAGE = "An unexpected server error has occurred, please try again later."
TOO_LARGE_MESSAGE = "body: payloads cannot be larger than 10MiB in size"


def is_v2_path(path: str) -> bool:
    """True for the REST v2beta / v2alpha paths."""
    return path.startswith(V2_PREFIXES)


def _is_result_path(path: str) -> bool:
    return path.startswith("/v2beta/results/") or "/result/" in path


def v2_error(err: HttpError, path: str) -> HttpError:
    """``err`` (as mapped for every protocol) renamed and reworded for the v2 wire."""
    status, name, message = err.status, err.name, err.message
    if status == 400:
        name = "bad_request"
    elif status == 401:
        name, message = "unauthorized", UNAUTHORIZED_MESSAGE
    elif status == 402:
        name = "payment_required"
    elif status == 404 and _is_result_path(path):
        name, message = "generation_not_found", NOT_FOUND_MESSAGE
    elif status == 413:
        name, message = "payload_too_large", TOO_LARGE_MESSAGE
    elif status == 500:
        name, message = "internal_error", INTERNAL_MESSAGE
    return HttpError(status, name, message, err.headers)


def v2_body(request_id: str, err: HttpError, path: str) -> JSONResponse:
    """The v2 error response for ``err`` on ``path``, with ``x-request-id`` = ``request_id``."""
    err = v2_error(err, path)
    headers = {"x-request-id": request_id, **(err.headers or {})}
    return JSONResponse(
        {"id": request_id, "name": err.name, "errors": [err.message]}, status_code=err.status, headers=headers
    )
