"""``build_app(settings)``: the FastAPI application with every protocol router, error handlers and lifespan.

Errors are rendered in the shape of the protocol a path belongs to (REST v1 family:
``{"id", "name", "message"}``; REST v2beta/v2alpha: ``{"id", "name", "errors"}``); the ``id``
is unique per request and appears in the server's log line for that request (and in the
``x-request-id`` response header).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from stableserve import __version__
from stableserve.api.admin import PREFIX as ADMIN_PREFIX
from stableserve.api.admin import build_admin_router
from stableserve.api.deps import AppState
from stableserve.api.errors import HttpError, http_error, new_request_id, v1_error
from stableserve.api.health import build_health_router
from stableserve.api.idempotency import Idempotency
from stableserve.api.idempotency import middleware_options as idempotency_options
from stableserve.api.limits import BodyLimit
from stableserve.api.moderation import Moderator
from stableserve.api.openai.errors import is_openai_path, openai_body
from stableserve.api.openai.images import build_images_router
from stableserve.api.openai.models import build_models_router
from stableserve.api.rest_v1.router import build_router
from stableserve.api.rest_v2beta.errors import is_v2_path, v2_body
from stableserve.api.rest_v2beta.router import build_router as build_v2beta_router
from stableserve.api.service import GenerationService
from stableserve.core.engines import EngineRegistry, load_registry
from stableserve.errors import PayloadTooLarge, StableServeError
from stableserve.observability.logs import request_id_var
from stableserve.observability.metrics import Metrics
from stableserve.ratelimit import RateLimiter
from stableserve.settings import Settings

log = logging.getLogger("stableserve.api")


def _body_for_path(rid: str, path: str, err: HttpError) -> JSONResponse:
    """``err`` in the body shape of the protocol ``path`` belongs to (see ``render_error``)."""
    if is_v2_path(path):
        return v2_body(rid, err, path)
    if is_openai_path(path):
        return openai_body(rid, err)
    err = v1_error(err)  # REST v1 family: a flagged prompt is 400 invalid_prompts
    headers = {"x-request-id": rid, **(err.headers or {})}
    return JSONResponse(
        {"id": rid, "name": err.name, "message": err.message}, status_code=err.status, headers=headers
    )


def render_error(request: Request, err: HttpError) -> JSONResponse:
    """The error response for ``request``'s protocol: v2 paths the v2 body, OpenAI paths
    (``/v1/images``, ``/v1/models``) OpenAI's body, else the v1 body."""
    rid = getattr(request.state, "request_id", None) or new_request_id()
    return _body_for_path(rid, request.url.path, err)


def _render_too_large(scope, exc: PayloadTooLarge) -> JSONResponse:
    rid = scope.get("state", {}).get("request_id") or new_request_id()
    return _body_for_path(rid, scope["path"], http_error(exc))


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(StableServeError)
    async def domain_error(request: Request, exc: StableServeError):
        err = http_error(exc)
        log.info(
            "request %s %s -> %s %s: %s",
            getattr(request.state, "request_id", "-"),
            request.url.path,
            err.status,
            err.name,
            err.message,
        )
        return render_error(request, err)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p not in ("body", "path", "query", "header"))
        return render_error(request, HttpError(400, "bad_request", f"{field or 'body'}: {first['msg']}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_exception(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return render_error(request, HttpError(404, "not_found", f"{request.url.path}: not found"))
        if exc.status_code == 405:
            return render_error(
                request, HttpError(405, "bad_request", f"method {request.method} not allowed")
            )
        return render_error(request, HttpError(exc.status_code, "bad_request", str(exc.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.error(
            "request %s %s failed: %s",
            getattr(request.state, "request_id", "-"),
            request.url.path,
            "".join(traceback.format_exception(exc)),
        )
        return render_error(request, http_error(exc))


def _route_template(scope) -> str:
    """The request path with each path parameter's value replaced by ``{name}``
    (``/v1/generation/{engine_id}/text-to-image``): a bounded metrics label."""
    values = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    return "/".join(f"{{{values[part]}}}" if part in values else part for part in scope["path"].split("/"))


class RequestContext:
    """Pure ASGI middleware: a request id per HTTP request (``request.state.request_id``, the
    ``x-request-id`` response header) and one log line per request.

    Pure ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware hides the
    client's disconnect from ``request.is_disconnected()``, which cancels abandoned jobs.
    """

    def __init__(self, app, metrics=None):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        rid_token = request_id_var.set(rid)  # every log line of this request carries it
        status = {"code": 0}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers.append("x-request-id", rid)
                for name, value in scope["state"].get("rate_headers", {}).items():
                    headers[name] = value
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.metrics is not None:
                route = _route_template(scope) if scope.get("route") is not None else "unmatched"
                self.metrics.observe_request(
                    scope["method"], route, status["code"], time.perf_counter() - start
                )
            hdrs = Headers(scope=scope)
            client, version = hdrs.get("stability-client-id"), hdrs.get("stability-client-version")
            log.info(
                "request %s %s %s -> %d in %.1f ms%s",
                rid,
                scope["method"],
                scope["path"],
                status["code"],
                (time.perf_counter() - start) * 1000,
                f" client={client}/{version or '-'}" if client or version else "",
            )
            request_id_var.reset(rid_token)


def build_app(settings: Settings, *, registry: EngineRegistry | None = None, job_client=None) -> FastAPI:
    """The application. ``registry`` defaults to ``settings.engines``; ``job_client`` to a
    ``JobClient`` over the executor of ``settings.jobs.executor`` (``LocalExecutor`` by
    default, ``RayExecutor`` for ``ray``; started and stopped with the app's lifespan). The
    gRPC servers of ``settings.grpc`` (if any port is set) start and stop with it too, as does
    the thread applying plans' monthly grants (``settings.plans``)."""
    from stableserve.accounts.keys import server_secret
    from stableserve.db.session import session_factory

    registry = registry or load_registry(settings.engines)
    sessions = session_factory(settings)
    if job_client is None:
        from stableserve.jobs.client import JobClient
        from stableserve.jobs.factory import executor_factory

        job_client = JobClient(settings, sessions, executor_factory(settings))
    metrics = Metrics(sessions)
    if hasattr(job_client, "observers"):  # engine load times and GPU memory from the workers
        job_client.observers.append(metrics.observe_worker)
    moderator = Moderator(settings, sessions)  # a bad classifier plugin fails here
    state = AppState(
        settings=settings,
        registry=registry,
        sessions=sessions,
        secret=server_secret(settings),
        jobs=job_client,
        service=GenerationService(settings, registry, job_client, metrics=metrics, moderator=moderator),
        limiter=RateLimiter(settings),
        metrics=metrics,
    )

    serve_grpc = settings.grpc.port is not None or settings.grpc.insecure_port is not None
    if serve_grpc:
        from stableserve.api.grpc.server import build_grpc_servers, check_grpc_settings

        check_grpc_settings(settings.grpc)  # a bad configuration fails here, not at startup
    from stableserve.accounts.plans import GrantScheduler

    grants = GrantScheduler(settings, sessions)  # plans' monthly credits, on a schedule

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await job_client.start()
        grpc_servers = []
        try:
            grants.start()
            # grpc.aio servers bind to the running loop: built here, they share it with the app.
            # Inside the try: a port that cannot be bound still stops the job client.
            grpc_servers = build_grpc_servers(state, settings.grpc) if serve_grpc else []
            for server in grpc_servers:
                await server.start()
            yield
        finally:
            for server in grpc_servers:
                await server.stop(grace=5)
            await asyncio.to_thread(grants.stop)
            await job_client.stop()

    app = FastAPI(
        title="stableserve",
        version=__version__,
        description="Self-hosted Stability AI Platform API (REST v1, v2beta) on open diffusion models.",
        lifespan=lifespan,
    )
    app.state.stableserve = state
    _install_handlers(app)
    if settings.idempotency.enabled:  # inside BodyLimit: it buffers bodies already capped
        app.add_middleware(Idempotency, **idempotency_options(state, render=_render_too_large))
    app.add_middleware(BodyLimit, render=_render_too_large, prefixes=("/",))  # every protocol
    app.add_middleware(RequestContext, metrics=metrics)  # outermost: every answer has a request id
    for flavor in ("v1", "v1beta", "v1alpha"):
        app.include_router(build_router(flavor), prefix=f"/{flavor}")
    app.include_router(build_v2beta_router(), prefix="/v2beta")
    app.include_router(build_images_router(), prefix="/v1")
    app.include_router(build_models_router(), prefix="/v1")
    app.include_router(build_health_router())
    app.include_router(build_admin_router(), prefix=ADMIN_PREFIX)
    if settings.playground:  # the web UI at / (assets under /playground/)
        from stableserve.web import add_playground

        add_playground(app)
    return app
