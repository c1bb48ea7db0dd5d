"""The web playground: a browser UI served by stableserve itself (``GET /``).

Plain ES modules, one stylesheet and system fonts under ``static/`` (no build step, no CDN:
the server may run with no network). The page talks to this server's public API only, with
the API key the user pastes (kept in the browser's session storage), so it is also a living
example of the API. ``GET /`` answers ``index.html``; its assets are under ``/playground/``.
Nothing is mounted at ``/`` itself, so unknown API paths keep their JSON 404s.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
"""The playground's files (shipped as package data)."""

ASSETS_PREFIX = "/playground"
"""Where the assets are served (``/playground/app.js`` ...)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob:; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
"""Only this server's scripts, styles and API; images also from ``data:`` and ``blob:`` URLs
(generated images, masks, downloads)."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",  # revalidate (ETag): an upgraded server serves its new page
}
"""Headers of the page and of every asset."""


class _Assets(StaticFiles):
    """``StaticFiles`` that adds ``SECURITY_HEADERS`` to every answer."""

    def file_response(self, *args, **kwargs):
        """The file's response, with the security headers."""
        response = super().file_response(*args, **kwargs)
        response.headers.update(SECURITY_HEADERS)
        return response


def add_playground(app: FastAPI) -> None:
    """Serve the playground: ``GET /`` (the page, not in the OpenAPI document) and the assets
    under ``ASSETS_PREFIX``."""

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        """The playground page."""
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)

    app.mount(ASSETS_PREFIX, _Assets(directory=STATIC_DIR), name="playground")
