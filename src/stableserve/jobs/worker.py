"""The worker-process side of the ``LocalExecutor``: build a ``Runner``, run one job at a time.

A worker receives ``(job_id, request_json)`` tuples (``None`` = stop) on its job pipe and
sends ``READY``, ``(FATAL, message)`` or ``JobEvent`` objects (``Started``, rate-limited
``Progress``, one terminal event) on its event pipe. torch and diffusers are imported here,
in the worker, never in the server process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from stableserve.core.types import GenerationRequest
from stableserve.jobs.events import (
    SERVER_ERROR_MESSAGE,
    Cancelled,
    Failed,
    JobEvent,
    Progress,
    Started,
    Succeeded,
    WorkerStats,
)
from stableserve.settings import Settings

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.1
"""Minimum seconds between two ``Progress`` events of one job (the last step always goes)."""

READY = "ready"
"""Sent once by a worker whose Runner is built."""
FATAL = "fatal"
"""Tag of ``(FATAL, message)``: the worker could not start and exits."""


# -- worker process --------------------------------------------------------------------------


class _WorkerName(logging.Filter):
    """Prefixes the logger name of each record with ``worker-N``."""

    def __init__(self, index: int):
        super().__init__()
        self.prefix = f"worker-{index}."

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            record.name = self.prefix + record.name
        return True


def worker_main(
    index: int,
    settings: Settings,
    registry_spec: str,
    jobs: Connection,
    events: Connection,
    cancel: Any,
) -> None:
    """Worker process entry point: build a ``Runner``, then run jobs from ``jobs`` one at a time.

    Receives ``(job_id, request_json)`` tuples or ``None`` (stop); sends ``"ready"``,
    ``("fatal", message)`` or ``JobEvent`` objects on ``events``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if not logging.getLogger().handlers:  # a spawned process: the server's format, named per worker
        from stableserve.observability.logs import configure_logging

        configure_logging("info", settings.logs.format)
        logging.getLogger().handlers[0].addFilter(_WorkerName(index))
    try:
        from stableserve.core.engines import load_registry

        registry = load_registry(registry_spec)  # first: a bad registry fails before torch loads
        from stableserve.inference.loading import quiet_libraries

        quiet_libraries()  # before the runner's imports: importing diffusers logs warnings
        _share_cpu_threads(settings.jobs.workers)
        from stableserve.inference.runner import Runner

        runner = Runner(registry, settings)
    except BaseException as exc:  # report, then exit: the parent logs it and backs off
        with contextlib.suppress(OSError):
            events.send((FATAL, f"{type(exc).__name__}: {exc}"))
        return
    events.send(READY)
    while True:
        try:
            message = jobs.recv()
        except (EOFError, OSError):  # the parent went away
            return
        if message is None:
            return
        job_id, request_json = message
        try:
            events.send(run_job(runner, job_id, request_json, cancel, events))
        except (BrokenPipeError, OSError):
            return


def _share_cpu_threads(workers: int) -> None:
    """Give each of ``workers`` processes an equal share of the CPU cores for torch's intra-op
    threads (at least 1), unless ``OMP_NUM_THREADS`` says otherwise: N workers that each use
    every core thrash (measured: 2 workers on 2 cores ran 8 demo jobs in 63 s instead of 2.5 s)."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, workers)))


def run_job(runner: Any, job_id: str, request_json: str, cancel: Any, events: Connection) -> JobEvent:
    """Run one job in the worker and return its terminal event (Started/Progress are sent here)."""
    from stableserve.errors import EngineNotReady, GenerationCancelled, InvalidRequest, NotFound

    if cancel.is_set():
        return Cancelled(job_id)
    events.send(Started(job_id, 1))
    last = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done >= total or now - last >= PROGRESS_INTERVAL_S:
            last = now
            events.send(Progress(job_id, done, total))

    try:
        request = GenerationRequest.model_validate_json(request_json)
        return Succeeded(job_id, runner.run(request, progress=progress, cancel=cancel))
    except GenerationCancelled:
        return Cancelled(job_id)
    except (InvalidRequest, EngineNotReady, NotFound) as exc:
        return Failed.from_error(job_id, exc)
    except Exception:
        log.exception("job %s failed", job_id)
        return Failed(job_id, "server_error", SERVER_ERROR_MESSAGE)
    finally:
        events.send(worker_stats(runner, job_id))  # before the terminal event


def worker_stats(runner: Any, job_id: str) -> WorkerStats:
    """The ``WorkerStats`` of the job just run: the runner's engine loads since the last call
    and, when CUDA is in use, torch's allocated / reserved device memory in bytes."""
    import torch

    cache = getattr(runner, "cache", None)
    loads = tuple(cache.drain_loads()) if cache is not None and hasattr(cache, "drain_loads") else ()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        index = torch.cuda.current_device()
        return WorkerStats(
            job_id,
            loads,
            f"cuda:{index}",
            torch.cuda.memory_allocated(index),
            torch.cuda.memory_reserved(index),
        )
    return WorkerStats(job_id, loads)
