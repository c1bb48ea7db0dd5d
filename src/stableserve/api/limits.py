"""``BodyLimit``: refuse oversized request bodies before they are read into memory.

REST v2beta caps a request body at 10 MiB and answers 413 ``payload_too_large`` (CONTRACT.md
§3.1); stableserve applies the same cap to every HTTP protocol (v1 family and OpenAI answer
413 in their own error bodies). A declared ``Content-Length`` over the cap is refused at once,
without reading the body; a body without one (chunked) is counted as it streams in and the request fails with
``PayloadTooLarge`` as soon as the count passes the cap, so at most the cap is ever buffered.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.responses import Response

from stableserve.errors import PayloadTooLarge

MAX_BODY_BYTES = 10 * 1024 * 1024
"""10 MiB, the v2beta limit (every HTTP route; gRPC messages have the same cap)."""


class BodyLimit:
    """Pure ASGI middleware limiting request bodies on paths starting with one of ``prefixes``.

    ``render(scope, exc) -> Response`` builds the 413 answer for a declared oversize body
    (the protocol's error shape); a streamed oversize body raises ``PayloadTooLarge`` from
    ``receive`` for the app's exception handlers to render.
    """

    def __init__(
        self,
        app,
        *,
        render: Callable[[dict, PayloadTooLarge], Response],
        prefixes: tuple[str, ...],
        max_bytes: int = MAX_BODY_BYTES,
    ):
        self.app = app
        self.render = render
        self.prefixes = prefixes
        self.max_bytes = max_bytes

    def _error(self) -> PayloadTooLarge:
        size = f"{self.max_bytes // 2**20}MiB" if self.max_bytes % 2**20 == 0 else f"{self.max_bytes} bytes"
        return PayloadTooLarge(f"body: payloads cannot be larger than {size} in size", param="body")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self.render(scope, self._error())(scope, receive, send)
            return
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._error()
            return message

        await self.app(scope, counted_receive, send)
