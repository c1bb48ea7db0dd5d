"""The ``Executor`` seam: runs resolved generation requests somewhere and reports ``JobEvent``s.

An executor is built with an ``on_event(JobEvent)`` callback and calls it, from a thread of
its own, for every event of every job it was given (see ``stableserve.jobs.events`` for the
order). It knows nothing of the database, credits or the API: the ``JobClient`` does that.

Implementations: ``LocalExecutor`` (worker processes on this machine, ``jobs.local``) and
``RayExecutor`` (Ray Serve deployments, ``jobs.ray_executor``; ``jobs.factory`` picks one from
``settings.jobs.executor``), behind the same protocol and the same contract tests
(``tests/worker/test_executor_contract.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from stableserve.core.types import GenerationRequest
from stableserve.jobs.events import JobEvent

EventCallback = Callable[[JobEvent], None]
"""Receives every job event; must be quick and thread-safe (it is called from executor threads)."""


@runtime_checkable
class Executor(Protocol):
    """Runs jobs and reports their events to the ``on_event`` callback given at construction.

    Contract (every implementation):
    - ``start()`` before ``submit``; ``stop()`` ends all work: jobs not finished by then get
      ``Failed(code="server_shutdown")``; calling ``stop()`` twice is harmless.
    - ``submit(job_id, request)`` returns at once; ``request`` must already be resolved
      (``core.validation.resolve``). It emits ``Queued`` and later ``Started``, ``Progress``
      and exactly one terminal event. A job id is never submitted while it is unfinished in
      the executor; it may be submitted again after its terminal event (a retry: the
      ``JobClient``'s dispatcher leases a job again when its worker crashed).
    - ``capacity()`` is what the dispatcher asks before it leases a job for the executor:
      keep it honest (0 while nothing could start soon), so queued jobs wait in the database,
      where other processes can take them, not in the executor.
    - ``cancel(job_id)`` is best effort and returns at once: a queued job is never run and
      gets ``Cancelled``; a running one gets ``Cancelled`` at its next denoising step (or
      finishes first); an unknown or finished job is ignored.
    - A worker that dies fails its job with ``Failed(code="worker_crashed")``; the executor
      keeps serving.
    """

    def start(self) -> None:
        """Start workers (returns without waiting for models to load)."""
        ...

    def stop(self) -> None:
        """Stop workers and fail every unfinished job with ``server_shutdown``; idempotent."""
        ...

    def submit(self, job_id: str, request: GenerationRequest) -> None:
        """Queue a resolved request under ``job_id``; raises ``RuntimeError`` when not started."""
        ...

    def cancel(self, job_id: str) -> None:
        """Ask for ``job_id`` to be cancelled (best effort, see the class docstring)."""
        ...

    def capacity(self) -> int:
        """How many more jobs could start right now without waiting (idle slots minus queued jobs, >= 0)."""
        ...

    def health(self) -> dict[str, Any]:
        """A JSON-able status: at least ``{"kind": str, "ok": bool, "running": int, "queued": int}``."""
        ...


ExecutorFactory = Callable[[EventCallback], Executor]
"""Builds an executor around an event callback (what ``JobClient`` is given)."""
