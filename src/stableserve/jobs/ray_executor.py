"""``RayExecutor``: jobs run on Ray Serve deployments, one per model family (``jobs.ray_deployment``).

Shape::

    JobClient ─ submit/cancel ─▶ RayExecutor (API process)                 Ray cluster
                                  queue (FIFO, per-family slots)           app <prefix>-<family>
                                  event-loop thread ── handle.run(job) ──▶  replicas (multiplexed
                  on_event ◀───── (single emitter)  ◀── event stream ────   by engine, batched)

- Ray is imported only here and in ``ray_deployment`` (``pip install 'stableserve[ray]'``);
  ``start()`` joins ``settings.ray.address`` (``auto``, ``HOST:6379``) or, with no address,
  starts a private local Ray, unless Ray is already initialized in this process.
- A family's application is deployed on its first job (or a running one of the same name is
  used as it is). The executor keeps the queue: a family gets at most ``slots`` jobs at once,
  its running replicas (at least one) times ``max_ongoing_requests``, so Ray's own queue stays
  short and the order of the rest stays ours; a job cancelled while queued here never runs.
- Events: ``Queued`` on submit; the replica streams ``Started``, ``Progress``, ``WorkerStats``
  and the terminal event (same codes as the LocalExecutor). A replica that dies mid-job fails
  it with ``worker_crashed``; Serve replaces the replica and the executor keeps serving.
- Cancelling a running job cancels its Ray request (``response.cancel()``): the job ends
  ``Cancelled`` at once, the replica stops the pipeline at its next denoising step.
- ``capacity()`` counts free slots of the families deployed so far (before the first one:
  one replica's worth): a family not deployed yet gets a job when any slot is free.
- Every ``on_event`` call happens on the executor's event-loop thread, in order per job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from stableserve.core.engines import load_registry
from stableserve.core.types import GenerationRequest
from stableserve.errors import NotFound, StableServeError
from stableserve.jobs.events import (
    SERVER_ERROR_MESSAGE,
    Cancelled,
    Failed,
    JobEvent,
    Queued,
    is_terminal,
)
from stableserve.jobs.executor import EventCallback, ExecutorFactory
from stableserve.jobs.ray_deployment import app_name, family_app, family_setting
from stableserve.settings import Settings

log = logging.getLogger(__name__)

SHUTDOWN_MESSAGE = "The server shut down before the job finished, please try again."
CRASH_MESSAGE = "The worker running this job stopped unexpectedly, please try again."
STATUS_INTERVAL_S = 2.0
"""How often the running replicas of each deployed family are counted (``serve.status()``)."""
_SERVE_LOCK = threading.Lock()
"""Held around this process's Serve client calls that build Serve config objects:
``serve.status()`` (it parses every deployment's config) and a family's deploy (the
application built, then ``serve.run``). Each such object briefly registers Serve's request
router module with cloudpickle's global pickle-by-value registry and unregisters it; two at
once on different threads (the first jobs of two families, or a deploy beside the status
watcher) race there, and the loser fails with ``ValueError: <module ...> is not registered
for pickle by value``, which failed the deploy and its job (``server_error``). A later
family's first job so waits for the deploy of an earlier one."""


@dataclass
class _Job:
    """Executor-side state of one live job."""

    job_id: str
    family: str
    engine_id: str
    payload: str
    response: Any = None
    cancel_requested: bool = False
    shutdown: bool = False
    finished: bool = False


class _DeployFailed(Exception):
    """A family's Serve application could not be deployed (message for the logs)."""


def _crash_errors() -> tuple[type[BaseException], ...]:
    """Ray errors that mean the replica (or its node) died under a request."""
    import ray.exceptions as rex
    from ray.serve.exceptions import ReplicaUnavailableError

    return (
        rex.RayActorError,
        rex.WorkerCrashedError,
        rex.NodeDiedError,
        rex.LocalRayletDiedError,
        rex.OutOfMemoryError,
        rex.ObjectLostError,
        ReplicaUnavailableError,
    )


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """For a ``HOST:PORT`` address, raise ``OSError`` at once when nothing listens there
    (``ray.init`` would keep retrying for minutes); other forms (``auto``) pass."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
        pass


def _token_auth_like_ray_start() -> None:
    """Before joining a cluster: use Ray's token authentication when ``RAY_AUTH_MODE`` is unset
    and a token is at hand (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN``), as ``ray start`` does
    (``ray.init(address=...)`` does not, and a head started by ``ray start --head`` wants one)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    with contextlib.suppress(Exception):
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


class RayExecutor:
    """Runs jobs on Ray Serve (see the module docstring).

    ``registry_spec``: what ``core.engines.load_registry`` takes (``demo``, ``public`` or a
    YAML path); the executor maps engine ids to families with it and every replica loads it
    itself. ``on_event`` receives every ``JobEvent`` on the executor thread. ``stop_grace_s``:
    how long ``stop()`` waits for cancelled running jobs to end before failing them.
    """

    def __init__(
        self,
        settings: Settings,
        registry_spec: str,
        on_event: EventCallback,
        *,
        stop_grace_s: float = 10.0,
    ):
        self.settings = settings
        self.registry_spec = registry_spec
        self.registry = load_registry(registry_spec)  # no torch: engine id -> family here
        self._on_event = on_event
        self._grace = stop_grace_s
        self._lock = threading.Lock()
        self._state = "new"  # new -> running -> stopping -> stopped
        self._jobs: dict[str, _Job] = {}
        self._pending: OrderedDict[str, _Job] = OrderedDict()
        self._inflight: dict[str, int] = {}  # family -> jobs handed to Ray
        self._replicas: dict[str, int] = {}  # family -> running replicas (last status)
        self._app_status: dict[str, str] = {}
        self._handles: dict[str, Any] = {}  # family -> DeploymentHandle (deployed or adopted)
        self._deploying: dict[str, asyncio.Future] = {}
        self._owned: set[str] = set()  # applications this executor deployed
        self._owns_ray = False
        self._last_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._status_task: concurrent.futures.Future | None = None

    @classmethod
    def factory(cls, settings: Settings, registry_spec: str | None = None, **kwargs: Any) -> ExecutorFactory:
        """An ``ExecutorFactory`` for ``JobClient``: ``on_event -> RayExecutor(...)``.

        ``registry_spec`` defaults to ``settings.engines``; ``kwargs`` go to the constructor.
        """
        spec = registry_spec or settings.engines
        return lambda on_event: cls(settings, spec, on_event, **kwargs)

    # -- public API --------------------------------------------------------------------------
    def start(self) -> None:
        """Join (or start) Ray and Serve and start the event-loop thread; deploys nothing yet
        (a family deploys on its first job). Blocks while Ray connects. Idempotent. Raises
        ``StableServeError`` when Ray cannot be joined or started."""
        with self._lock:
            if self._state != "new":
                return
        import ray
        from ray import serve

        if not ray.is_initialized():
            rs = self.settings.ray
            try:
                if rs.address is None:  # "local": never join a `ray start` cluster of this machine
                    ray.init(address="local", num_cpus=rs.num_cpus, include_dashboard=False)
                else:
                    _check_reachable(rs.address)
                    _token_auth_like_ray_start()
                    ray.init(address=rs.address)
            except Exception as exc:
                what = f"join the Ray cluster at {rs.address}" if rs.address else "start a local Ray"
                raise StableServeError(f"could not {what}: {type(exc).__name__}: {exc}") from exc
            self._owns_ray = True
        serve.start(proxy_location="Disabled")  # calls come through handles; a running Serve is kept
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ray-executor", daemon=True)
        self._thread.start()
        with self._lock:
            self._state = "running"
        self._status_task = asyncio.run_coroutine_threadsafe(self._watch_status(), self._loop)

    def stop(self) -> None:
        """Fail queued jobs (``server_shutdown``), cancel running ones (they end
        ``server_shutdown`` unless they finish first), then delete the applications this
        executor deployed (unless ``ray.keep_deployments``) and leave Ray if it joined it.
        Idempotent; blocks up to about ``stop_grace_s`` plus Serve's own shutdown time."""
        with self._lock:
            if self._state == "new":
                self._state = "stopped"
                return
            if self._state != "running":
                return
            self._state = "stopping"
            pending = list(self._pending.values())
            self._pending.clear()
            running = list(self._jobs.values())
            for job in pending:
                self._jobs.pop(job.job_id, None)
            for job in running:
                job.shutdown = job.cancel_requested = True
        for job in pending:
            self._post(self._finish, job, Failed(job.job_id, "server_shutdown", SHUTDOWN_MESSAGE))
        for job in running:
            self._post(self._cancel_remote, job)
        deadline = time.monotonic() + self._grace
        while time.monotonic() < deadline:
            with self._lock:
                if not self._jobs:
                    break
            time.sleep(0.05)
        with self._lock:
            stuck = list(self._jobs.values())
            self._jobs.clear()
        for job in stuck:  # e.g. waiting for a deployment that never came up
            self._post(self._finish, job, Failed(job.job_id, "server_shutdown", SHUTDOWN_MESSAGE))
        if self._status_task is not None:
            self._status_task.cancel()
        self._shutdown_ray()
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():  # end what is left on the loop (the status watcher)
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()
        with self._lock:
            self._state = "stopped"

    def submit(self, job_id: str, request: GenerationRequest) -> None:
        """Queue a resolved ``request`` as ``job_id``; ``Queued`` and the rest follow on the
        executor thread (an unknown engine: ``Queued`` then ``Failed(not_found)``).

        Raises ``RuntimeError`` when the executor is not running or ``job_id`` is already live.
        """
        payload = request.model_dump_json()
        error: NotFound | None = None
        try:
            family = self.registry.get(request.engine_id).family.value
        except NotFound as exc:
            family, error = "", exc
        with self._lock:
            if self._state != "running":
                raise RuntimeError(f"RayExecutor is {self._state}, not accepting jobs")
            if job_id in self._jobs:
                raise RuntimeError(f"job {job_id} was already submitted")
            job = _Job(job_id, family, request.engine_id, payload)
            if error is None:
                self._jobs[job_id] = job
                self._pending[job_id] = job
        self._post(self._emit, Queued(job_id))
        if error is not None:
            self._post(self._finish, job, Failed.from_error(job_id, error))
        else:
            self._post(self._pump)

    def cancel(self, job_id: str) -> None:
        """Cancel ``job_id``: dropped if queued here, its Ray request cancelled if running;
        unknown or finished jobs are ignored."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.cancel_requested:
                return
            job.cancel_requested = True
            queued = self._pending.pop(job_id, None) is not None
            if queued:
                self._jobs.pop(job_id, None)
        if queued:
            self._post(self._finish, job, Cancelled(job_id))
        else:
            self._post(self._cancel_remote, job)

    def capacity(self) -> int:
        """Free slots of the deployed families minus jobs queued here (>= 0); before any family
        is deployed, one replica's ``max_ongoing_requests``."""
        with self._lock:
            if self._state != "running":
                return 0
            families = set(self._handles) | set(self._deploying)
            if not families:
                return max(0, self.settings.ray.max_ongoing_requests - len(self._pending))
            queued: dict[str, int] = {}
            for job in self._pending.values():
                queued[job.family] = queued.get(job.family, 0) + 1
            free = sum(max(0, self._slots(f) - self._inflight.get(f, 0) - queued.get(f, 0)) for f in families)
            return max(0, free - sum(n for f, n in queued.items() if f not in families))

    def health(self) -> dict[str, Any]:
        """``{"kind": "ray", "ok", "state", "address", "running", "queued", "families",
        "last_error"}``; ``families`` maps each deployed family to its application, status,
        running replicas, slots and jobs in flight. ``ok`` is true while running and connected."""
        connected = False
        with contextlib.suppress(ImportError):
            import ray

            connected = ray.is_initialized()
        with self._lock:
            families = {
                f: {
                    "app": app_name(self.settings, f),
                    "status": self._app_status.get(f, "DEPLOYING"),
                    "replicas": self._replicas.get(f, 0),
                    "slots": self._slots(f),
                    "running": self._inflight.get(f, 0),
                }
                for f in sorted(set(self._handles) | set(self._deploying))
            }
            return {
                "kind": "ray",
                "ok": self._state == "running" and connected,
                "state": self._state,
                "address": self.settings.ray.address,
                "running": sum(self._inflight.values()),
                "queued": len(self._pending),
                "families": families,
                "last_error": self._last_error,
            }

    def info(self, family: str) -> dict[str, Any]:
        """``ReplicaState.info()`` of one replica of ``family`` (diagnostics, tests)."""
        handle = self._handles[family]
        return handle.info.remote().result(timeout_s=60)

    # -- internals (the event-loop thread owns responses and emits events) ------------------
    def _slots(self, family: str) -> int:
        """Jobs ``family`` may hold at once (call with the lock held)."""
        per_replica = family_setting(self.settings, family, "max_ongoing_requests")
        return max(1, self._replicas.get(family, 0)) * per_replica

    def _post(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    def _emit(self, event: JobEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("on_event callback failed for %r", event)

    def _finish(self, job: _Job, event: JobEvent) -> None:
        """Emit ``job``'s terminal event once (a shutdown turns ``Cancelled`` into
        ``server_shutdown``); the job id is free for a new submission from then on."""
        if job.finished:
            return
        job.finished = True
        with self._lock:
            if self._jobs.get(job.job_id) is job:
                del self._jobs[job.job_id]
        if job.shutdown and isinstance(event, Cancelled):
            event = Failed(job.job_id, "server_shutdown", SHUTDOWN_MESSAGE)
        self._emit(event)

    def _cancel_remote(self, job: _Job) -> None:
        if job.response is not None:
            with contextlib.suppress(Exception):
                job.response.cancel()

    def _pump(self) -> None:
        """Hand queued jobs to Ray while their family has free slots (FIFO per family)."""
        assert self._loop is not None
        started: list[_Job] = []
        with self._lock:
            if self._state != "running":
                return
            for job in list(self._pending.values()):
                if self._inflight.get(job.family, 0) < self._slots(job.family):
                    del self._pending[job.job_id]
                    self._inflight[job.family] = self._inflight.get(job.family, 0) + 1
                    started.append(job)
        for job in started:
            self._loop.create_task(self._follow(job))

    async def _follow(self, job: _Job) -> None:
        """Run one job on its family's deployment and turn its stream into events."""
        from ray.serve.exceptions import RequestCancelledError

        try:
            handle = await self._handle(job.family)
            if job.cancel_requested:
                self._finish(job, Cancelled(job.job_id))
                return
            job.response = handle.options(stream=True, multiplexed_model_id=job.engine_id).run.remote(
                (job.job_id, job.engine_id, job.payload)
            )
            async for event in job.response:
                if is_terminal(event):
                    self._finish(job, event)
                    break
                if not job.finished:
                    self._emit(event)
            if not job.finished:
                log.error("job %s: the replica's stream ended without a result", job.job_id)
                self._finish(job, Failed(job.job_id, "server_error", SERVER_ERROR_MESSAGE))
        except (RequestCancelledError, asyncio.CancelledError):
            self._finish(job, Cancelled(job.job_id))
        except _crash_errors() as exc:
            with self._lock:
                self._last_error = f"replica of {job.family} died while running a job: {type(exc).__name__}"
            log.warning("job %s: %s", job.job_id, self._last_error)
            self._finish(job, Failed(job.job_id, "worker_crashed", CRASH_MESSAGE))
        except _DeployFailed as exc:
            self._finish(job, Failed(job.job_id, "server_error", SERVER_ERROR_MESSAGE))
            log.error("job %s: %s", job.job_id, exc)
        except Exception:
            log.exception("job %s failed in the Ray executor", job.job_id)
            self._finish(job, Failed(job.job_id, "server_error", SERVER_ERROR_MESSAGE))
        finally:
            with self._lock:
                if self._jobs.get(job.job_id) is job:
                    del self._jobs[job.job_id]
                self._inflight[job.family] -= 1
            self._pump()

    async def _handle(self, family: str) -> Any:
        """The handle of ``family``'s application: deployed on first use, or an application of
        that name already running on the cluster. Raises ``_DeployFailed``."""
        handle = self._handles.get(family)
        if handle is not None:
            return handle
        pending = self._deploying.get(family)
        if pending is None:
            assert self._loop is not None
            with self._lock:
                pending = self._deploying[family] = self._loop.create_future()
            try:
                handle = await asyncio.to_thread(self._deploy, family)
            except Exception as exc:
                message = f"could not deploy family {family}: {type(exc).__name__}: {exc}"
                with self._lock:
                    self._last_error = message
                    del self._deploying[family]
                pending.set_exception(_DeployFailed(message))
                pending.exception()  # retrieved here: other waiters re-raise it
                raise _DeployFailed(message) from exc
            with self._lock:
                self._handles[family] = handle
                del self._deploying[family]
            pending.set_result(handle)
            self._pump()  # the family's replica count may let more jobs go
            return handle
        return await asyncio.shield(pending)

    def _deploy(self, family: str) -> Any:
        """Deploy (or adopt) ``family``'s application and wait until it runs (blocking)."""
        from ray import serve

        name = app_name(self.settings, family)
        with contextlib.suppress(Exception):
            with _SERVE_LOCK:
                current = serve.status().applications.get(name)
            if current is not None and current.status in ("RUNNING", "DEPLOYING", "UNHEALTHY"):
                log.info("using the running Serve application %s", name)
                return serve.get_app_handle(name)
        log.info("deploying Serve application %s", name)
        with _SERVE_LOCK:  # one deploy at a time, never beside serve.status() (see _SERVE_LOCK)
            app = family_app(self.settings, self.registry_spec, family)
            with self._lock:
                self._owned.add(name)
            handle = serve.run(app, name=name, route_prefix=None)
        self._refresh_status()
        return handle

    async def _watch_status(self) -> None:
        """Count running replicas of each deployed family every ``STATUS_INTERVAL_S`` seconds."""
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            if self._handles:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._refresh_status)
                self._pump()

    def _refresh_status(self) -> None:
        from ray import serve

        with _SERVE_LOCK:
            apps = serve.status().applications
        with self._lock:
            families = set(self._handles) | set(self._deploying)
        replicas: dict[str, int] = {}
        status: dict[str, str] = {}
        for family in families:
            app = apps.get(app_name(self.settings, family))
            if app is None:
                continue
            status[family] = str(getattr(app.status, "value", app.status))
            replicas[family] = sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())
        with self._lock:
            self._replicas.update(replicas)
            self._app_status.update(status)

    def _shutdown_ray(self) -> None:
        """Delete the applications this executor deployed (unless kept) and leave a Ray it joined."""
        try:
            from ray import serve

            if not self.settings.ray.keep_deployments:
                for name in sorted(self._owned):
                    with contextlib.suppress(Exception):
                        serve.delete(name)
            if self._owns_ray:
                import ray

                if self.settings.ray.address is None:
                    with contextlib.suppress(Exception):
                        serve.shutdown()
                ray.shutdown()
        except Exception:
            log.exception("RayExecutor: error while leaving Ray")
