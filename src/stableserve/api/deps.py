"""Shared request plumbing for HTTP adapters: app state, authentication, form reading limits.

``Authorization: Bearer <key>`` and the bare key both work (CONTRACT.md §1.2); the
``Organization`` header picks another organization the key's user belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from stableserve.api.service import GenerationService, Principal
from stableserve.core.engines import EngineRegistry
from stableserve.errors import InvalidRequest, StableServeError, Unauthorized
from stableserve.settings import Settings

MAX_FORM_FILES = 4
MAX_FORM_FIELDS = 200


@dataclass
class AppState:
    """What every route needs, built once by ``build_app``: settings, registry, database
    sessions, the server secret (API key hashing), the job client and the generation service."""

    settings: Settings
    registry: EngineRegistry
    sessions: Any
    secret: bytes
    jobs: Any
    service: GenerationService
    limiter: Any = None
    """``ratelimit.RateLimiter`` counting every authenticated request (None: no limits)."""
    metrics: Any = None
    """``observability.metrics.Metrics`` of this app (None: not collected)."""


def app_state(request: Request) -> AppState:
    """The ``AppState`` of the running app."""
    return request.app.state.stableserve


def bearer_or_raw(header: str | None) -> str:
    """The API key from an Authorization header value (``Bearer <k>``, any case, or ``<k>``).

    Raises ``Unauthorized("missing authorization header")`` when absent or empty.
    """
    value = (header or "").strip()
    if value[:7].lower() == "bearer " or value.lower() == "bearer":  # "Bearer " with an empty key
        value = value[7:].strip()
    if not value:
        raise Unauthorized("missing authorization header")
    return value


def mask_key(key: str) -> str:
    """A key shortened for messages and logs: its first 7 characters and an ellipsis."""
    return key[:7] + "..." if len(key) > 7 else key


def principal_for_key(state: AppState, raw: str, org_header: str | None = None) -> Principal:
    """The ``Principal`` of API key ``raw`` (optionally acting for ``org_header``). Blocking.

    Raises ``Unauthorized`` (unknown or revoked key; the message shows only the key's start),
    ``PermissionDenied`` (an organization the key's user is not in) and ``RateLimited`` (the
    key's request limit, counted here: its organization's plan's limit, else the server's).
    Every protocol authenticates through this.
    """
    from stableserve.accounts import keys as keys_mod
    from stableserve.accounts import orgs as orgs_mod
    from stableserve.accounts import plans as plans_mod

    with state.sessions() as session, session.begin():
        try:
            auth = keys_mod.authenticate(session, raw, state.secret)
        except Unauthorized:
            raise Unauthorized(
                f"Incorrect API key provided: {mask_key(raw)}. Ask your stableserve operator for a key."
            ) from None
        org_id = orgs_mod.resolve_org(session, auth, org_header) if org_header else auth.org_id
        counting = state.limiter is not None and getattr(state.limiter, "enabled", True)
        limit = plans_mod.rate_limit_for(session, auth.org_id) if counting else None
    rate = state.limiter.hit(auth.key_id, limit) if state.limiter is not None else None  # RateLimited
    return Principal(auth.key_id, auth.user_id, auth.user_email, org_id, rate=rate, is_admin=auth.is_admin)


async def authenticate(request: Request, *, use_org_header: bool = True) -> Principal:
    """Authenticate the request's API key; raises ``Unauthorized`` / ``PermissionDenied``."""
    state = app_state(request)
    raw = bearer_or_raw(request.headers.get("authorization"))
    org_header = request.headers.get("organization") if use_org_header else None
    principal = await run_in_threadpool(principal_for_key, state, raw, org_header)
    request.state.principal = principal
    if principal.rate is not None:
        request.state.rate_headers = principal.rate.headers()  # added by RequestContext
    return principal


async def read_form(request: Request) -> FormData:
    """The multipart body, with caps on parts; ``bad_request`` for any other content type."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise InvalidRequest("content-type: must be multipart/form-data", param="content-type")
    try:
        return await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
    except StableServeError:  # e.g. PayloadTooLarge from the body limit
        raise
    except Exception as exc:  # starlette raises MultiPartException / HTTPException for bad bodies
        raise InvalidRequest(f"body: malformed multipart/form-data ({exc})", param="body") from None


async def read_json(request: Request) -> Any:
    """The JSON body; ``bad_request`` when the content type or the JSON is wrong."""
    import json

    ctype = request.headers.get("content-type", "")
    if "json" not in ctype.lower():
        raise InvalidRequest("content-type: must be application/json", param="content-type")
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidRequest("body: must be a JSON object", param="body") from None
