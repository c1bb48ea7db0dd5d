"""``/health`` (the process is alive), ``/ready`` (database reachable, default engine ready)
and ``/metrics`` (Prometheus text format, ``observability.metrics``). No API key: put them
behind your network's access rules."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from stableserve.api.deps import app_state


def build_health_router() -> APIRouter:
    """The operational routes (mounted at the root)."""
    router = APIRouter(tags=["Operations"])

    @router.get("/health", summary="Liveness")
    async def health() -> dict:
        """200 while the process serves requests."""
        return {"status": "ok"}

    @router.get("/ready", summary="Readiness")
    async def ready(request: Request) -> JSONResponse:
        """200 when the database answers and the default engine's weights are present, else 503
        with the reason of each check."""
        from stableserve.inference.loading import readiness

        state = app_state(request)

        def checks() -> dict:
            result = {}
            try:
                with state.sessions() as session:
                    session.execute(text("SELECT 1"))
                result["database"] = "ok"
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                result["database"] = f"unreachable: {type(exc).__name__}"
            engine_id = state.settings.openai.default_model
            try:
                r = readiness(state.registry.get(engine_id), state.settings)
                result["engine"] = "ok" if r.ready else f"{engine_id}: {r.reason}"
            except Exception as exc:  # noqa: BLE001
                result["engine"] = f"{engine_id}: {exc}"
            return result

        result = await run_in_threadpool(checks)
        ok = all(v == "ok" for v in result.values())
        return JSONResponse({"status": "ok" if ok else "not ready", **result}, status_code=200 if ok else 503)

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus text exposition."""
        body = await run_in_threadpool(app_state(request).metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
