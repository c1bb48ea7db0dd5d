"""Idempotent retries of POST requests (the ``Idempotency-Key`` header).

- ``middleware``: the ASGI middleware and the storage rules (read its docstring first).
- ``fingerprint``: the caller scope and request fingerprint hashes.
- ``store``: the ``idempotency_keys`` table's claims and stored responses.

``middleware_options(state, render)`` wires the middleware to a running app's ``AppState``.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import Response

from stableserve.api.idempotency.middleware import Idempotency, parse_key, skip_storage
from stableserve.api.idempotency.store import IdempotencyStore

__all__ = ["Idempotency", "IdempotencyStore", "middleware_options", "parse_key", "skip_storage"]


def middleware_options(state, render: Callable[[dict, Exception], Response]) -> dict:
    """Keyword arguments for ``app.add_middleware(Idempotency, ...)`` from ``state`` (an
    ``api.deps.AppState``): a store on its database with ``settings.idempotency``'s limits,
    its server secret, and a check that authenticates the caller (and counts the request
    against its rate limit, adding the rate headers) before a stored answer is given."""
    from stableserve.api.deps import bearer_or_raw, principal_for_key

    conf = state.settings.idempotency

    async def check(scope: dict) -> None:
        headers = Headers(scope=scope)
        raw = bearer_or_raw(headers.get("authorization"))  # Unauthorized when missing
        principal = await run_in_threadpool(principal_for_key, state, raw, headers.get("organization"))
        if principal.rate is not None:
            scope.setdefault("state", {})["rate_headers"] = principal.rate.headers()

    return {
        "store": IdempotencyStore(
            state.sessions, ttl_s=conf.ttl_s, lease_s=conf.lease_s, purge_interval_s=conf.purge_interval_s
        ),
        "secret": state.secret,
        "render": render,
        "check": check,
        "lease_s": conf.lease_s,
        "max_response_bytes": conf.max_response_bytes,
    }
