"""Running a micro-batch of jobs on one ``Runner``: the body of a Ray Serve replica's batch
handler (``jobs.ray_deployment``), kept free of Ray so it can be tested on its own.

``run_jobs`` splits the jobs into groups: jobs with one common ``inference.batching.batch_key``
(same engine, text-to-image, size, steps, sampler, guidance scale) run together through
``run_batch`` (one pipeline call per ``settings.runner.max_batch`` samples); every other job
runs alone through ``jobs.worker.run_job``, exactly as in a LocalExecutor worker (same events,
same error codes). Groups run one after the other, in the order their first job arrived.

Events go to ``send``: per job ``Started``, rate-limited ``Progress``, ``WorkerStats`` and one
terminal event, as ``run_job`` sends them. A job whose ``is_cancelled(job_id)`` is true before
its group starts ends ``Cancelled`` without ``Started``; a running group stops at its next
denoising step once every job in it is cancelled (the others keep it going).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stableserve.core.types import GenerationRequest
from stableserve.jobs.events import Cancelled, JobEvent, Progress, Started, Succeeded
from stableserve.jobs.worker import PROGRESS_INTERVAL_S, run_job, worker_stats

log = logging.getLogger(__name__)

Send = Callable[[JobEvent], None]
IsCancelled = Callable[[str], bool]


@dataclass(frozen=True)
class Job:
    """One job of a batch: ``request_json`` is a resolved ``GenerationRequest`` as JSON."""

    job_id: str
    request_json: str


class GroupCancel:
    """``is_set()`` once every job of ``job_ids`` is cancelled (what the runner checks)."""

    def __init__(self, job_ids: Sequence[str], is_cancelled: IsCancelled):
        self.job_ids = tuple(job_ids)
        self._is_cancelled = is_cancelled

    def is_set(self) -> bool:
        """True when every job of the group is cancelled."""
        return all(self._is_cancelled(j) for j in self.job_ids)


class _Sink:
    """The ``events.send`` that ``run_job`` expects, forwarding to ``send`` (optionally
    without ``Started``, for a job whose group already announced it)."""

    def __init__(self, send: Send, skip_started: bool = False):
        self._send, self._skip_started = send, skip_started

    def send(self, event: JobEvent) -> None:
        if not (self._skip_started and isinstance(event, Started)):
            self._send(event)


def plan(runner: Any, jobs: Sequence[Job]) -> list[list[tuple[Job, GenerationRequest | None]]]:
    """Groups of ``(job, parsed request)``: jobs with one common batch key together, every other
    job alone (``None`` for a request that does not parse: ``run_job`` reports it)."""
    from stableserve.inference.batching import batch_key

    groups: dict[Any, list[tuple[Job, GenerationRequest | None]]] = {}
    for n, job in enumerate(jobs):
        key: Any = None
        request: GenerationRequest | None = None
        try:
            request = GenerationRequest.model_validate_json(job.request_json)
            key = batch_key(runner.registry.get(request.engine_id), request)
        except Exception:  # unknown engine, bad JSON, ...: alone, run_job reports it
            key = None
        groups.setdefault(("alone", n) if key is None else key, []).append((job, request))
    return list(groups.values())


def run_jobs(runner: Any, jobs: Sequence[Job], send: Send, is_cancelled: IsCancelled) -> int:
    """Run ``jobs`` on ``runner`` (see the module docstring); returns the number of runner
    calls made (one per job run alone, one per pipeline call of a batched group)."""
    calls = 0
    for group in plan(runner, jobs):
        if len(group) == 1:
            job = group[0][0]
            cancel = GroupCancel([job.job_id], is_cancelled)
            if not cancel.is_set():
                calls += 1
            send(run_job(runner, job.job_id, job.request_json, cancel, _Sink(send)))
        else:
            calls += _run_group(runner, group, send, is_cancelled)
    return calls


def _run_group(
    runner: Any, group: list[tuple[Job, GenerationRequest | None]], send: Send, is_cancelled: IsCancelled
) -> int:
    from stableserve.errors import GenerationCancelled
    from stableserve.inference.batching import run_batch

    live = []
    for job, request in group:
        if is_cancelled(job.job_id):
            send(Cancelled(job.job_id))
        else:
            live.append((job, request))
    if len(live) <= 1:
        return run_jobs(runner, [job for job, _ in live], send, is_cancelled)
    ids = [job.job_id for job, _ in live]
    for job_id in ids:
        send(Started(job_id, 1))
    last = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done >= total or now - last >= PROGRESS_INTERVAL_S:
            last = now
            for job_id in ids:
                if not is_cancelled(job_id):
                    send(Progress(job_id, done, total))

    cancel = GroupCancel(ids, is_cancelled)
    try:
        results, calls = run_batch(runner, [r for _, r in live], progress=progress, cancel=cancel)
    except GenerationCancelled:
        for job_id in ids:
            send(worker_stats(runner, job_id))
            send(Cancelled(job_id))
        return 1
    except Exception as exc:  # one bad request must not fail the others: run them one by one
        log.warning(
            "batch of %d jobs failed (%s: %s); running them one by one", len(ids), type(exc).__name__, exc
        )
        for job, _ in live:
            one = GroupCancel([job.job_id], is_cancelled)
            send(run_job(runner, job.job_id, job.request_json, one, _Sink(send, skip_started=True)))
        return 1 + len(live)
    for job_id, artifacts in zip(ids, results, strict=True):
        send(worker_stats(runner, job_id))
        send(Cancelled(job_id) if is_cancelled(job_id) else Succeeded(job_id, artifacts))
    return calls
