"""The Ray Serve side of the ``RayExecutor``: one deployment per model family.

Shape of one replica (an actor of the family's deployment)::

    run(job)  ──▶ @serve.batch _batch(jobs)  ──▶ runner thread: jobs.replica.run_jobs
      ▲ stream of JobEvents       │ @serve.multiplexed engine(engine_id): load into the ModelCache
      └───────────────────────────┘ (rows: one event for one job of the batch at a time)

- ``run((job_id, engine_id, request_json))`` is a streaming method: it yields the job's
  ``Started``, ``Progress``, ``WorkerStats`` and terminal event. The executor calls it with
  ``multiplexed_model_id=engine_id``, so Ray routes it to a replica that already holds the
  engine; ``max_num_models_per_replica`` engines stay loaded per replica, the least recently
  used is unloaded by Ray (``EngineRef.__del__`` drops it from the ``ModelCache``).
- ``@serve.batch`` gathers up to ``batch_max_size`` requests (waiting at most
  ``batch_wait_timeout_s``); Ray splits a batch by engine id, ``run_jobs`` runs the compatible
  ones of each part in shared pipeline calls and the rest one after the other.
- All model work runs on one thread per replica, so one device never runs two pipelines at
  once; the replica's event loop stays free for Ray (health checks, cancellation).
- Cancellation: Ray cancels the ``run`` call of a cancelled request (``response.cancel()``
  in the executor); the replica marks the job cancelled, which the runner sees at its next
  denoising step (a batch stops when all its jobs are cancelled).

Ray is imported inside ``family_app`` only: this module is importable without Ray.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stableserve.jobs.events import SERVER_ERROR_MESSAGE, Failed, JobEvent, is_terminal
from stableserve.jobs.replica import Job, run_jobs
from stableserve.settings import RayFamilySettings, Settings

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 5.0
"""How long Serve lets a stopping replica finish its requests (the executor cancels them first)."""

_CANCELLED_KEPT = 4096  # cancelled job ids a replica remembers (a cancelled job may never reach it)


def app_name(settings: Settings, family: str) -> str:
    """The Serve application serving ``family``: ``<ray.app_prefix>-<family>``."""
    return f"{settings.ray.app_prefix}-{family}"


def family_setting(settings: Settings, family: str, name: str) -> Any:
    """``settings.ray.<name>`` with the override of ``settings.ray.families[family]``, if any."""
    override = settings.ray.families.get(family, RayFamilySettings())
    value = getattr(override, name, None)
    return getattr(settings.ray, name) if value is None else value


def deployment_options(settings: Settings, family: str) -> dict[str, Any]:
    """Keyword arguments of ``serve.deployment`` for ``family`` (replicas or autoscaling,
    ``max_ongoing_requests``, CPUs/GPUs per replica, health checks). Raises ``ValueError``
    when ``min_replicas > max_replicas``."""
    low, high = (
        family_setting(settings, family, "min_replicas"),
        family_setting(settings, family, "max_replicas"),
    )
    if low > high:
        raise ValueError(f"ray settings of family {family}: min_replicas {low} > max_replicas {high}")
    options: dict[str, Any] = {
        "max_ongoing_requests": family_setting(settings, family, "max_ongoing_requests"),
        "ray_actor_options": {
            "num_cpus": family_setting(settings, family, "num_cpus_per_replica"),
            "num_gpus": family_setting(settings, family, "num_gpus"),
        },
        "health_check_period_s": settings.ray.health_check_period_s,
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
    }
    if low == high:
        options["num_replicas"] = high
    else:
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": max(low, 1),
            "target_ongoing_requests": settings.ray.target_ongoing_requests,
        }
    return options


class EngineRef:
    """What ``@serve.multiplexed`` keeps per loaded engine; unloading it (Ray's LRU calls
    ``__del__``) drops the engine from the replica's ``ModelCache``."""

    def __init__(self, cache: Any, engine_id: str):
        self.cache, self.engine_id = cache, engine_id

    def __del__(self) -> None:
        cache = getattr(self, "cache", None)
        if cache is not None:
            self.cache = None
            cache.evict(self.engine_id)


class ReplicaState:
    """Everything a replica holds: the ``Runner`` (built here: imports torch and diffusers),
    its thread, the cancelled job ids and counters for ``info()``."""

    def __init__(self, settings: Settings, registry_spec: str):
        from stableserve.core.engines import load_registry

        registry = load_registry(registry_spec)
        from stableserve.inference.loading import quiet_libraries

        quiet_libraries()
        from stableserve.inference.runner import Runner

        self.runner = Runner(registry, settings)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="stableserve-runner")
        self.cancelled: OrderedDict[str, None] = OrderedDict()
        self.runner_calls = 0
        self.jobs = 0
        self.batch_sizes: list[int] = []

    def cancel(self, job_id: str) -> None:
        """Mark ``job_id`` cancelled (thread-safe enough: set-item on a dict under the GIL)."""
        self.cancelled[job_id] = None
        while len(self.cancelled) > _CANCELLED_KEPT:
            self.cancelled.popitem(last=False)

    async def load(self, engine_id: str) -> EngineRef:
        """Load ``engine_id`` into the model cache on the runner thread (``NotFound`` /
        ``EngineNotReady`` as the cache raises them)."""
        engine = self.runner.registry.get(engine_id)
        await asyncio.get_running_loop().run_in_executor(self.pool, self.runner.cache.get, engine)
        return EngineRef(self.runner.cache, engine_id)

    def info(self) -> dict[str, Any]:
        """``{"pid", "loaded", "runner_calls", "jobs", "batch_sizes"}`` (diagnostics, tests)."""
        import os

        return {
            "pid": os.getpid(),
            "loaded": self.runner.cache.loaded_ids(),
            "runner_calls": self.runner_calls,
            "jobs": self.jobs,
            "batch_sizes": list(self.batch_sizes[-100:]),
        }

    async def run_batch(
        self, batch: list[tuple[str, str, str]], load: Callable[[str], Awaitable[Any]]
    ) -> AsyncIterator[list[JobEvent | None]]:
        """Run one ``@serve.batch`` batch of ``(job_id, engine_id, request_json)``; yields rows
        of ``len(batch)`` entries, each row one event for one job (``None`` elsewhere)."""
        index = {job_id: i for i, (job_id, _, _) in enumerate(batch)}
        self.batch_sizes.append(len(batch))
        self.jobs += len(batch)
        try:
            await load(batch[0][1])  # Ray's multiplexing bookkeeping (routing, LRU unloads)
        except Exception:  # an engine that cannot load fails each job properly in the runner
            log.debug("engine %s did not load", batch[0][1], exc_info=True)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[JobEvent | None] = asyncio.Queue()

        def send(event: JobEvent) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        def work() -> int:
            jobs = [Job(job_id, request_json) for job_id, _, request_json in batch]
            return run_jobs(self.runner, jobs, send, lambda job_id: job_id in self.cancelled)

        future = loop.run_in_executor(self.pool, work)
        future.add_done_callback(lambda _: queue.put_nowait(None))
        finished: set[str] = set()
        while (event := await queue.get()) is not None:
            if event.job_id not in index:
                continue
            if is_terminal(event):
                finished.add(event.job_id)
            row: list[JobEvent | None] = [None] * len(batch)
            row[index[event.job_id]] = event
            yield row
        try:
            self.runner_calls += future.result()
        except Exception:
            log.exception("replica batch of %d jobs failed", len(batch))
        for job_id, i in index.items():
            if job_id not in finished:
                row = [None] * len(batch)
                row[i] = Failed(job_id, "server_error", SERVER_ERROR_MESSAGE)
                yield row


def family_app(settings: Settings, registry_spec: str, family: str) -> Any:
    """The Serve application (``Deployment.bind()``) serving the engines of ``family`` with
    ``settings.ray`` (see the module docstring). Imports Ray."""
    from ray import serve

    options = deployment_options(settings, family)
    batch_size = min(settings.ray.batch_max_size, options["max_ongoing_requests"])
    max_models = family_setting(settings, family, "max_models_per_replica")

    @serve.deployment(name=f"family-{family}", **options)
    class FamilyReplica:
        """One replica: a ``ReplicaState`` behind Serve's multiplexing and batching."""

        def __init__(self) -> None:
            self.state = ReplicaState(settings, registry_spec)

        @serve.multiplexed(max_num_models_per_replica=max_models)
        async def engine(self, engine_id: str) -> EngineRef:
            return await self.state.load(engine_id)

        @serve.batch(max_batch_size=batch_size, batch_wait_timeout_s=settings.ray.batch_wait_timeout_s)
        async def _batch(self, jobs: list[tuple[str, str, str]]) -> AsyncIterator[list[JobEvent | None]]:
            async for row in self.state.run_batch(jobs, self.engine):
                yield row

        async def run(self, job: tuple[str, str, str]) -> AsyncIterator[JobEvent]:
            """Stream the events of one job ``(job_id, engine_id, request_json)``."""
            try:
                async for event in self._batch(job):
                    if event is not None:
                        yield event
                        if is_terminal(event):
                            break
            except asyncio.CancelledError:
                self.state.cancel(job[0])
                raise

        async def info(self) -> dict[str, Any]:
            """Diagnostics of this replica (``ReplicaState.info``)."""
            return self.state.info()

    return FamilyReplica.bind()
