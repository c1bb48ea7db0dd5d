"""``LocalExecutor``: worker processes on this machine, one job at a time each.

Shape::

    JobClient ─ submit/cancel ─▶ LocalExecutor (parent)          worker process i (spawn)
                                  supervisor thread ─ job pipe ─▶  Runner(load_registry(spec))
                  on_event ◀───── (single emitter)  ◀─ event pipe ─ Started/Progress/terminal

- ``settings.jobs.workers`` processes from the ``spawn`` start method; each imports torch and
  diffusers itself and keeps its own model cache (the parent never imports them).
- The parent keeps a queue (short: under a ``JobClient`` the dispatcher only leases jobs
  while ``capacity()`` is positive; the job table is the real queue). A job goes to a worker
  only when that worker is idle and has reported ready, so the parent always knows which job
  each worker runs; a job cancelled while queued is simply dropped (``Cancelled``) and never
  runs.
- Cancelling a running job sets the worker's ``multiprocessing.Event``; the runner checks it
  between two denoising steps and the job ends ``Cancelled``.
- A worker that dies (killed, segfault, out of memory) fails its job with
  ``Failed(code="worker_crashed")`` and is restarted (with a back-off when it keeps dying
  young); the other workers keep serving. The ``JobClient`` then queues an asynchronous job
  again for one more attempt (``jobs.max_attempts``) and fails a synchronous one. A job id
  may be submitted again once its terminal event was sent.
- Every ``on_event`` call happens on the supervisor thread, in order per job.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from stableserve.core.types import GenerationRequest
from stableserve.jobs.events import (
    SERVER_ERROR_MESSAGE,
    Cancelled,
    Failed,
    JobEvent,
    Queued,
    is_terminal,
)
from stableserve.jobs.executor import EventCallback, ExecutorFactory
from stableserve.jobs.worker import FATAL, READY, worker_main
from stableserve.settings import Settings

log = logging.getLogger(__name__)

_YOUNG_S = 10.0  # a worker dying sooner than this after its start counts toward the back-off
_MAX_BACKOFF_S = 30.0

SHUTDOWN_MESSAGE = "The server shut down before the job finished, please try again."
CRASH_MESSAGE = "The worker running this job stopped unexpectedly, please try again."


# -- parent side -----------------------------------------------------------------------------
@dataclass
class _Worker:
    """Parent-side handle of one worker process."""

    index: int
    process: Any
    jobs: Connection
    events: Connection
    cancel: Any
    born: float = field(default_factory=time.monotonic)
    ready: bool = False
    eof: bool = False
    stop_sent: bool = False
    job_id: str | None = None

    @property
    def idle(self) -> bool:
        return self.ready and not self.eof and not self.stop_sent and self.job_id is None


class LocalExecutor:
    """Runs jobs in ``settings.jobs.workers`` spawned worker processes (see the module docstring).

    ``registry_spec``: what ``core.engines.load_registry`` takes (``demo``, ``public`` or a
    YAML path); each worker loads it itself. ``on_event`` receives every ``JobEvent`` on the
    supervisor thread. ``workers`` overrides ``settings.jobs.workers``; ``stop_grace_s`` is how
    long ``stop()`` waits for running jobs to notice their cancellation before killing workers.
    """

    def __init__(
        self,
        settings: Settings,
        registry_spec: str,
        on_event: EventCallback,
        *,
        workers: int | None = None,
        stop_grace_s: float = 10.0,
    ):
        self.settings = settings
        self.registry_spec = registry_spec
        self._on_event = on_event
        self._n = workers or settings.jobs.workers
        self._grace = stop_grace_s
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, str] = OrderedDict()  # job_id -> request json
        self._outbox: deque[JobEvent] = deque()
        self._workers: list[_Worker | None] = [None] * self._n
        self._restart_at: list[float] = [0.0] * self._n
        self._young_deaths: list[int] = [0] * self._n
        self._shutdown_jobs: set[str] = set()
        self._state = "new"  # new -> running -> stopping -> stopped
        self._stop_deadline = 0.0
        self._restarts = 0
        self._last_error: str | None = None
        self._failing = False  # a worker could not start and none has started since
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._thread: threading.Thread | None = None

    @classmethod
    def factory(cls, settings: Settings, registry_spec: str | None = None, **kwargs: Any) -> ExecutorFactory:
        """An ``ExecutorFactory`` for ``JobClient``: ``on_event -> LocalExecutor(...)``.

        ``registry_spec`` defaults to ``settings.engines``; ``kwargs`` go to the constructor.
        """
        spec = registry_spec or settings.engines
        return lambda on_event: cls(settings, spec, on_event, **kwargs)

    # -- public API --------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the workers and the supervisor thread; returns before models load. Idempotent."""
        with self._lock:
            if self._state != "new":
                return
            self._state = "running"
            for i in range(self._n):
                self._workers[i] = self._spawn(i)
        self._thread = threading.Thread(target=self._supervise, name="local-executor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Fail queued jobs (``server_shutdown``), cancel running ones, stop the workers and wait.

        Workers still busy after ``stop_grace_s`` seconds are killed. Idempotent; blocks up to
        about ``stop_grace_s`` + 5 seconds.
        """
        with self._lock:
            if self._state == "new":
                self._state = "stopped"
                return
            if self._state == "running":
                self._state = "stopping"
                self._stop_deadline = time.monotonic() + self._grace
                for job_id in self._pending:
                    self._outbox.append(Failed(job_id, "server_shutdown", SHUTDOWN_MESSAGE))
                self._pending.clear()
                for w in self._workers:
                    if w is not None and w.job_id is not None:
                        self._shutdown_jobs.add(w.job_id)
                        w.cancel.set()
            self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self._grace + 5.0)

    def submit(self, job_id: str, request: GenerationRequest) -> None:
        """Queue a resolved ``request`` as ``job_id``; ``Queued`` and the rest come from the supervisor.

        Raises ``RuntimeError`` when the executor is not running or ``job_id`` is already live.
        """
        payload = request.model_dump_json()
        with self._lock:
            if self._state != "running":
                raise RuntimeError(f"LocalExecutor is {self._state}, not accepting jobs")
            if job_id in self._pending or any(w and w.job_id == job_id for w in self._workers):
                raise RuntimeError(f"job {job_id} was already submitted")
            self._outbox.append(Queued(job_id))
            self._pending[job_id] = payload
            self._wake()

    def cancel(self, job_id: str) -> None:
        """Cancel ``job_id``: dropped if queued, interrupted between steps if running; else no-op."""
        with self._lock:
            if self._pending.pop(job_id, None) is not None:
                self._outbox.append(Cancelled(job_id))
                self._wake()
                return
            for w in self._workers:
                if w is not None and w.job_id == job_id:
                    w.cancel.set()

    def capacity(self) -> int:
        """Idle ready workers minus queued jobs (>= 0): jobs that would start right now."""
        with self._lock:
            idle = sum(1 for w in self._workers if w is not None and w.idle)
            return max(0, idle - len(self._pending))

    def health(self) -> dict[str, Any]:
        """``{"kind": "local", "ok", "state", "workers", "ready", "running", "queued", "restarts",
        "last_error", "fatal"}``; ``ok`` is true while running with at least one live worker;
        ``fatal`` while no worker is ready and the last one to start could not (a broken
        install or registry): the dispatcher then fails the synchronous jobs waiting here."""
        with self._lock:
            live = [w for w in self._workers if w is not None and w.process.is_alive()]
            return {
                "kind": "local",
                "ok": self._state == "running" and bool(live),
                "state": self._state,
                "workers": self._n,
                "ready": sum(1 for w in live if w.ready),
                "running": sum(1 for w in self._workers if w is not None and w.job_id is not None),
                "queued": len(self._pending),
                "restarts": self._restarts,
                "last_error": self._last_error,
                "fatal": self._failing and not any(w.ready for w in live),
            }

    def pid_of(self, job_id: str) -> int | None:
        """PID of the worker process running ``job_id`` now, else ``None`` (diagnostics, tests)."""
        with self._lock:
            for w in self._workers:
                if w is not None and w.job_id == job_id:
                    return w.process.pid
        return None

    def worker_pids(self) -> list[tuple[int, int, bool, str | None]]:
        """``(index, pid, ready, job_id or None)`` of each live worker process (diagnostics,
        tests: e.g. to kill one)."""
        with self._lock:
            return [
                (w.index, w.process.pid, w.ready, w.job_id)
                for w in self._workers
                if w is not None and not w.eof and w.process.pid is not None
            ]

    # -- internals (the supervisor thread owns the workers' pipes) ---------------------------
    def _wake(self) -> None:
        """Wake the supervisor thread (call with the lock held)."""
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"")

    def _spawn(self, index: int) -> _Worker:
        jobs_r, jobs_w = self._ctx.Pipe(duplex=False)
        events_r, events_w = self._ctx.Pipe(duplex=False)
        cancel = self._ctx.Event()
        process = self._ctx.Process(
            target=worker_main,
            args=(index, self.settings, self.registry_spec, jobs_r, events_w, cancel),
            name=f"stableserve-worker-{index}",
            daemon=True,
        )
        process.start()
        jobs_r.close()  # the child's ends: closing ours lets EOF/EPIPE tell us when it dies
        events_w.close()
        log.info("worker %d started (pid %s)", index, process.pid)
        return _Worker(index, process, jobs_w, events_r, cancel)

    def _emit(self, event: JobEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("on_event callback failed for %r", event)

    def _flush_outbox(self) -> None:
        while True:
            with self._lock:
                if not self._outbox:
                    return
                event = self._outbox.popleft()
            self._emit(event)

    def _supervise(self) -> None:
        try:
            while True:
                self._flush_outbox()
                if self._step_state():
                    break
                self._dispatch()
                self._flush_outbox()
                waitables, by_conn, by_sentinel = self._waitables()
                for ready in wait(waitables, timeout=self._wait_timeout()):
                    if ready is self._wake_r:
                        self._drain_wake()
                    elif ready in by_conn:
                        self._read_events(by_conn[ready])
                    elif ready in by_sentinel:
                        self._reap(by_sentinel[ready])
        except Exception:  # never die silently: report and fail what is in flight
            log.exception("LocalExecutor supervisor crashed")
            with self._lock:
                self._state = "stopping"
                self._stop_deadline = time.monotonic()
            while not self._step_state():  # kill the workers, fail what they ran (<= ~5 s)
                time.sleep(0.05)
        finally:
            self._flush_outbox()
            with self._lock:
                self._state = "stopped"
                for conn in (self._wake_r, self._wake_w):
                    conn.close()

    def _waitables(self) -> tuple[list[Any], dict[Any, _Worker], dict[int, _Worker]]:
        with self._lock:
            workers = [w for w in self._workers if w is not None]
        by_conn = {w.events: w for w in workers if not w.eof}
        by_sentinel = {w.process.sentinel: w for w in workers}
        return [self._wake_r, *by_conn, *by_sentinel], by_conn, by_sentinel

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        with self._lock:
            pending = [t - now for i, t in enumerate(self._restart_at) if self._workers[i] is None]
            if self._state == "stopping":
                pending.append(self._stop_deadline - now)
        return max(0.01, min([1.0, *pending]))

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            while self._wake_r.poll():
                self._wake_r.recv_bytes()

    def _step_state(self) -> bool:
        """Restart dead workers, or drive a shutdown; True when the supervisor should exit."""
        now = time.monotonic()
        with self._lock:
            if self._state == "running":
                for i, w in enumerate(self._workers):
                    if w is None and now >= self._restart_at[i]:
                        self._workers[i] = self._spawn(i)
                        self._restarts += 1
                return False
            for w in self._workers:
                if w is None or not w.process.is_alive():
                    continue
                if w.job_id is None and w.ready and not w.stop_sent:
                    w.stop_sent = True
                    with contextlib.suppress(OSError):
                        w.jobs.send(None)
                elif not w.ready or now >= self._stop_deadline:
                    w.process.kill()
            alive = [w for w in self._workers if w is not None and w.process.is_alive()]
            if alive and now < self._stop_deadline + 5.0:
                return False
            for i, w in enumerate(self._workers):
                if w is not None:
                    if w.job_id is not None:
                        self._outbox.append(Failed(w.job_id, "server_shutdown", SHUTDOWN_MESSAGE))
                        w.job_id = None
                    self._close(w)
                    self._workers[i] = None
        return True

    def _dispatch(self) -> None:
        """Hand queued jobs to idle workers (sends happen outside the lock: payloads can be MBs)."""
        with self._lock:
            if self._state != "running":
                return
            assigned: list[tuple[_Worker, str, str]] = []
            for w in self._workers:
                if not self._pending:
                    break
                if w is not None and w.idle:
                    job_id, payload = self._pending.popitem(last=False)
                    w.cancel.clear()  # the worker is idle: nobody reads the event right now
                    w.job_id = job_id
                    assigned.append((w, job_id, payload))
        for w, job_id, payload in assigned:
            try:
                w.jobs.send((job_id, payload))
            except OSError:  # died before taking it: the job never ran, so queue it again
                with self._lock:
                    w.eof, w.job_id = True, None
                    if w.cancel.is_set():
                        self._outbox.append(Cancelled(job_id))
                    else:
                        self._pending[job_id] = payload
                        self._pending.move_to_end(job_id, last=False)

    def _read_events(self, w: _Worker) -> None:
        try:
            while w.events.poll():
                self._handle(w, w.events.recv())
        except (EOFError, OSError):
            w.eof = True  # the process is gone or going; its sentinel tells us the rest
        except Exception:
            log.exception("unreadable message from worker %d", w.index)
            w.eof = True

    def _handle(self, w: _Worker, message: Any) -> None:
        if message == READY:
            with self._lock:
                w.ready = True
                self._young_deaths[w.index] = 0
                self._failing = False
            return
        if isinstance(message, tuple) and message and message[0] == FATAL:
            self._fatal(w, message[1])
            return
        event: JobEvent = message
        with self._lock:
            if event.job_id != w.job_id:
                log.warning("worker %d sent %s for job %s it does not run", w.index, event, event.job_id)
                return
            if is_terminal(event):
                w.job_id = None
                if event.job_id in self._shutdown_jobs:
                    self._shutdown_jobs.discard(event.job_id)
                    if isinstance(event, Cancelled):
                        event = Failed(event.job_id, "server_shutdown", SHUTDOWN_MESSAGE)
        self._emit(event)

    def _fatal(self, w: _Worker, detail: str) -> None:
        """A worker could not start (bad registry, broken install): fail queued jobs, back off."""
        log.error("worker %d could not start: %s", w.index, detail)
        with self._lock:
            self._last_error = detail
            self._failing = True
            for job_id in self._pending:
                self._outbox.append(Failed(job_id, "server_error", SERVER_ERROR_MESSAGE))
            self._pending.clear()

    def _reap(self, w: _Worker) -> None:
        """Handle a worker process that exited: fail its job, schedule a restart."""
        if not w.eof:
            self._read_events(w)  # a terminal event may have made it out before the exit
        w.process.join(1.0)
        code = w.process.exitcode
        with self._lock:
            job_id, w.job_id = w.job_id, None
            if self._state == "running":
                log.warning("worker %d (pid %s) exited with code %s", w.index, w.process.pid, code)
                young = time.monotonic() - w.born < _YOUNG_S
                self._young_deaths[w.index] = self._young_deaths[w.index] + 1 if young else 0
                n = self._young_deaths[w.index]
                delay = 0.0 if n <= 1 else min(_MAX_BACKOFF_S, 0.5 * 2 ** (n - 1))
                self._restart_at[w.index] = time.monotonic() + delay
                if job_id is not None:
                    self._last_error = f"worker {w.index} exited with code {code} while running a job"
                    self._outbox.append(Failed(job_id, "worker_crashed", CRASH_MESSAGE))
            elif job_id is not None:
                self._shutdown_jobs.discard(job_id)
                self._outbox.append(Failed(job_id, "server_shutdown", SHUTDOWN_MESSAGE))
            self._close(w)
            if self._workers[w.index] is w:
                self._workers[w.index] = None

    @staticmethod
    def _close(w: _Worker) -> None:
        for conn in (w.jobs, w.events):
            with contextlib.suppress(OSError):
                conn.close()
        if not w.process.is_alive():
            with contextlib.suppress(ValueError):
                w.process.close()
