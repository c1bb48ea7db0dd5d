"""``Idempotency``: pure ASGI middleware for the ``Idempotency-Key`` header on POST requests.

A client that sends ``Idempotency-Key: <1..255 printable ASCII characters>`` with a POST
may retry it safely (a lost connection, a timeout) without being charged twice:

- The first request with a key claims it (a database row; several server processes agree)
  and runs normally.
- A **2xx** response is stored with the key for ``idempotency.ttl_s`` (24 h): a retry with
  the same key and the same request (see ``fingerprint``) gets the stored status, headers and
  body again, without running or charging anything, plus ``Idempotent-Replayed: true`` and a
  fresh ``x-request-id``. The caller must still hold a valid key (a revoked key gets 401) and
  the replay counts against its rate limit.
- **Nothing else is stored**: every 4xx and 5xx, a request cancelled or abandoned by its
  client (a cancelled job is a 400 ``cancelled``), an exception. None of these charged any
  credits, so the key is released and a retry runs again: it may now succeed (a topped-up
  balance, a lifted rate limit, 503 overload over, a failed worker replaced). A route can also
  opt a success out with ``skip_storage(request)`` (e.g. a response carrying a new secret).
- The same key with a different request (body, path, query, media type or ``Accept``):
  422 ``idempotency_key_mismatch``. The same key while its first request still runs: 409
  ``idempotency_key_in_use``. A success whose body exceeded ``max_response_bytes`` is
  remembered without its body: retries get 409 (use a new key to run it again).
- A malformed key (empty, too long, non-printable, sent twice): 400 ``bad_request``.

Keys are scoped by caller (API key + ``Organization`` header, hashed): two API keys never
share one. The request body is buffered (at most ``max_body_bytes``, else 413) to fingerprint
it, then handed to the app unchanged; afterwards ``receive`` is the server's own, so the app
still notices a client that disconnects. While the first request runs, its claim is renewed
every ``lease_s / 3`` seconds; a claim whose server died lapses ``lease_s`` later. Errors are
rendered by ``render(scope, exc)`` in the protocol's body (this runs outside FastAPI's
exception handlers). Other methods, requests without the header and requests without an
``Authorization`` header (401 anyway) pass straight through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from stableserve.api.idempotency.fingerprint import fingerprint, scope_hash
from stableserve.api.idempotency.store import Existing, IdempotencyStore
from stableserve.api.limits import MAX_BODY_BYTES
from stableserve.errors import (
    IdempotencyConflict,
    IdempotencyMismatch,
    InvalidRequest,
    PayloadTooLarge,
    StableServeError,
)

log = logging.getLogger("stableserve.api.idempotency")

HEADER = "idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"
MAX_KEY_LENGTH = 255
#: Response headers never stored (per request or added around this middleware).
_NOT_STORED = frozenset(
    {
        "x-request-id",
        "date",
        "server",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        REPLAYED_HEADER,
    }
)
_NO_STORE_FLAG = "idempotency_no_store"


def skip_storage(request: Request) -> None:
    """Do not store this request's response under its ``Idempotency-Key`` (its key is
    released; a retry runs again). For responses that must not sit in the database."""
    setattr(request.state, _NO_STORE_FLAG, True)


def parse_key(values: list[str]) -> str:
    """The idempotency key of the header ``values``; ``InvalidRequest`` (400) unless exactly one
    value of 1..255 printable ASCII characters (space to ``~``)."""
    if len(values) != 1:
        raise InvalidRequest("Idempotency-Key: must be sent once", param="Idempotency-Key")
    key = values[0].strip()
    if not 1 <= len(key) <= MAX_KEY_LENGTH or any(not " " <= ch <= "~" for ch in key):
        raise InvalidRequest(
            f"Idempotency-Key: must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            param="Idempotency-Key",
        )
    return key


class Idempotency:
    """The middleware (see the module docstring).

    ``store``: an ``IdempotencyStore``; ``secret``: server secret (bytes) keying the caller
    hash; ``render(scope, exc) -> Response``: the protocol's error response; ``check(scope)``:
    awaited before answering from the store (replay, 409, 422), raises ``StableServeError``
    (e.g. ``Unauthorized``) to refuse; ``lease_s``: claim lease in seconds;
    ``max_body_bytes`` / ``max_response_bytes``: buffering and storage caps in bytes.
    """

    def __init__(
        self,
        app,
        *,
        store: IdempotencyStore,
        secret: bytes,
        render: Callable[[dict, Exception], Response],
        check: Callable[[dict], Awaitable[None]] | None = None,
        lease_s: float = 60.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_response_bytes: int = 64 * 1024 * 1024,
    ):
        self.app = app
        self.store = store
        self.secret = secret
        self.render = render
        self.check = check
        self.lease_s = lease_s
        self.max_body_bytes = max_body_bytes
        self.max_response_bytes = max_response_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        values = headers.getlist(HEADER)
        if not values or "authorization" not in headers:  # no caller: the app answers 401
            await self.app(scope, receive, send)
            return
        try:
            key = parse_key(values)
            body = await self._read_body(receive)
            if body is None:  # the client left before sending its body
                return
            fp = fingerprint(scope["method"], scope["path"], scope.get("query_string", b""), headers, body)
            outcome = await run_in_threadpool(self.store.claim, scope_hash(self.secret, headers), key, fp)
            if isinstance(outcome, Existing):
                await self._check_existing(scope, outcome, fp)
        except Exception as exc:  # noqa: BLE001 - every failure here is answered in the protocol's body
            if not isinstance(exc, StableServeError):
                log.error("idempotency: %s %s failed", scope["method"], scope["path"], exc_info=True)
            await self.render(scope, exc)(scope, receive, send)
            return
        if isinstance(outcome, Existing):
            await self._replay(send, outcome)
        else:
            await self._run(scope, body, receive, send, outcome.row_id)

    async def _read_body(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(
                    f"body: payloads cannot be larger than {self.max_body_bytes} bytes", param="body"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _check_existing(self, scope, existing: Existing, fp: str) -> None:
        """Raise unless ``existing`` may be replayed to this caller for request ``fp``."""
        if self.check is not None:
            await self.check(scope)
        if existing.fingerprint != fp:
            raise IdempotencyMismatch(
                "Idempotency-Key: this key was already used with a different request; "
                "send a new key with a new request"
            )
        if existing.state != "done":
            raise IdempotencyConflict(
                "Idempotency-Key: a request with this key is still in progress; retry after it finishes"
            )
        if existing.body is None:
            raise IdempotencyConflict(
                "Idempotency-Key: the request with this key succeeded but its response was too large "
                "to keep; send a new key to run it again"
            )

    @staticmethod
    async def _replay(send, existing: Existing) -> None:
        raw = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in existing.headers or []]
        raw.append((REPLAYED_HEADER.encode(), b"true"))
        await send({"type": "http.response.start", "status": existing.status, "headers": raw})
        await send({"type": "http.response.body", "body": existing.body, "more_body": False})

    async def _run(self, scope, body: bytes, receive, send, row_id: int) -> None:
        delivered = False

        async def replay_receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the server's: disconnects still reach the app

        captured: dict[str, Any] = {"status": None, "headers": [], "chunks": [], "size": 0, "done": False}

        async def capture_send(message):
            kind = message["type"]
            if kind == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = [
                    (n.decode("latin-1"), v.decode("latin-1"))
                    for n, v in message.get("headers", [])
                    if n.decode("latin-1").lower() not in _NOT_STORED
                ]
            elif kind == "http.response.body":
                chunk = message.get("body", b"")
                captured["size"] += len(chunk)
                if captured["chunks"] is not None and captured["size"] <= self.max_response_bytes:
                    captured["chunks"].append(chunk)
                else:
                    captured["chunks"] = None  # too large (or not replayable): keep no body
                captured["done"] = not message.get("more_body", False)
            else:  # e.g. a pathsend extension: cannot be replayed
                captured["chunks"], captured["done"] = None, True
            await send(message)

        renewer = asyncio.create_task(self._renew(row_id))
        try:
            await self.app(scope, replay_receive, capture_send)
        finally:
            renewer.cancel()
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
                await run_in_threadpool(self._finish, row_id, scope, captured)

    async def _renew(self, row_id: int) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                if not await run_in_threadpool(self.store.renew, row_id):
                    return
            except Exception:  # noqa: BLE001 - try again at the next beat
                log.warning("idempotency: renewing claim %s failed", row_id, exc_info=True)

    def _finish(self, row_id: int, scope, captured: dict[str, Any]) -> None:
        """Store a complete 2xx response under the claim, else release it. Blocking."""
        status = captured["status"]
        keep = (
            status is not None
            and 200 <= status < 300
            and captured["done"]
            and not scope.get("state", {}).get(_NO_STORE_FLAG)
        )
        try:
            if keep:
                chunks = captured["chunks"]
                stored_body = b"".join(chunks) if chunks is not None else None
                if not self.store.complete(row_id, status, captured["headers"], stored_body):
                    log.warning("idempotency: claim %s lapsed before its response was stored", row_id)
            else:
                self.store.release(row_id)
        except Exception:  # noqa: BLE001 - the response is already sent; the claim lapses after its lease
            log.error("idempotency: finishing claim %s failed", row_id, exc_info=True)
