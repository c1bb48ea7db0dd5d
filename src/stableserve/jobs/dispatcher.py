"""The ``Dispatcher``: one per ``JobClient``; leases queued jobs for its executor and keeps
its leases alive.

Two daemon threads:

- **dispatch** (``stableserve-dispatcher``): whenever it is woken (a job was submitted or
  finished here) and at least every ``jobs.poll_s`` seconds (jobs queued by other
  processes), it first settles cancel requests, then, while ``executor.capacity() > 0``,
  leases the next job fairly across organizations (``leases.lease_next``: the organization
  served least recently by this dispatcher first) and hands it to ``executor.submit``. It is
  the only thread that creates leases, so a job id is never in this process's executor twice.
- **keeper** (``stableserve-lease-keeper``): every ``jobs.heartbeat_s`` seconds it renews
  the leases of the jobs this process holds (``leases.renew``): those its executor runs and
  the queued synchronous jobs whose callers wait here. A lease found lost (recovered by
  another process after it expired) is marked ``lost`` and its run cancelled; whatever that
  run reports later is dropped by the ``JobClient`` (and fenced in the database anyway). A
  run whose row says ``cancel_requested`` (a cancel asked through another process) is
  cancelled in the executor. Then it recovers jobs whose holders are gone
  (``recovery.reap``) and tells the ``JobClient`` about jobs it waits for that finished
  elsewhere (``DispatchHost.settled_elsewhere``).

Fairness is per dispatcher (per process): each process serves organizations by weighted
round robin (``leases.FairShare``; the weight is the organization's plan's ``weight``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from stableserve.core.types import GenerationRequest
from stableserve.db.models import Job
from stableserve.jobs import leases, recovery
from stableserve.jobs.events import SERVER_ERROR_MESSAGE
from stableserve.jobs.executor import Executor
from stableserve.jobs.leases import Lease
from stableserve.settings import Settings

log = logging.getLogger(__name__)

_ERROR_BACKOFF_S = 1.0  # after a database error, the dispatch thread waits at least this long


@dataclass
class Held:
    """A job this process leased and handed to its executor. ``lost``: the lease was taken
    away (expired and recovered elsewhere); the run goes on here until its terminal event,
    which must then be ignored."""

    lease: Lease
    lost: bool = False
    cancelled: bool = False
    """A cancel was passed to the executor already (``cancel_requested`` seen)."""

    @property
    def attempt(self) -> int:
        """The fencing token of this run."""
        return self.lease.attempt


class DispatchHost(Protocol):
    """What the ``Dispatcher`` needs from its ``JobClient``."""

    def unheld_jobs(self) -> list[tuple[str, bool]]:
        """``(job_id, store_result)`` of unfinished jobs waited for in this process that it
        does not run now (queued, or run elsewhere)."""
        ...

    def request_for(self, job_id: str) -> GenerationRequest | None:
        """The request of ``job_id`` if this process still has it in memory (else it is read
        from the job row)."""
        ...

    def settled_elsewhere(self, states: dict[str, str]) -> None:
        """Jobs of ``unheld_jobs`` found finished (``{job_id: state}``): deliver their outcome."""
        ...

    def cancelled_queued(self, job_id: str) -> None:
        """``job_id`` was cancelled while queued (row and credits settled): deliver it."""
        ...

    def fail_waiting(self, job_ids: list[str], code: str, message: str) -> None:
        """Fail the jobs of ``job_ids`` this process holds (credits released) and deliver it."""
        ...


class Dispatcher:
    """Leases jobs for ``executor`` as ``owner`` and keeps the leases alive (module docstring).

    ``settings.jobs``: ``lease_s``, ``heartbeat_s``, ``max_attempts``, ``poll_s``.
    ``sessions``: the ``JobClient``'s ``sessionmaker``. Thread-safe.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        owner: str,
        executor: Executor,
        host: DispatchHost,
    ):
        self.settings = settings
        self.owner = owner
        self.executor = executor
        self._sessions = sessions
        self._host = host
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._held: dict[str, Held] = {}
        self._cancels: list[str] = []  # user cancels, in order
        self._lost: list[str] = []  # runs whose lease was lost: cancel them
        self._fair = leases.FairShare()
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._leasing = True
        self._round = threading.Lock()  # held during a dispatch round
        # Held around the leasing and the renewing transactions: the renewal writes this
        # process's queued synchronous rows, which SKIP LOCKED would otherwise skip (unfairly).
        self._db = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.leased = 0
        """Leases taken so far (diagnostics)."""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the dispatch and keeper threads (daemons). Call once."""
        for target, name in (
            (self._dispatch_loop, "stableserve-dispatcher"),
            (self._keep_loop, "stableserve-lease-keeper"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.wake()

    def stop_leasing(self) -> None:
        """Take no new leases (a dispatch round in progress finishes first). Cancels are still
        settled and leases still renewed."""
        self._leasing = False
        with self._round:
            pass

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no job is held here; True when none is."""
        deadline = time.monotonic() + timeout
        with self._drained:
            while self._held:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._drained.wait(left)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both threads (waits up to ``timeout`` seconds for each); writes nothing."""
        self._leasing = False
        self._halt.set()
        self._wake.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    # -- what the JobClient calls -----------------------------------------------------------
    def wake(self) -> None:
        """Look for work now (a job was queued, or capacity freed up)."""
        self._wake.set()

    def held(self, job_id: str) -> Held | None:
        """The run of ``job_id`` this process's executor has, else ``None``."""
        with self._lock:
            return self._held.get(job_id)

    def held_ids(self) -> list[str]:
        """Ids of the jobs held here now."""
        with self._lock:
            return list(self._held)

    def done(self, job_id: str, held: Held) -> None:
        """``held``'s run reported its terminal event: forget it, wake the dispatch thread."""
        with self._drained:
            if self._held.get(job_id) is held:
                del self._held[job_id]
            self._drained.notify_all()
        self.wake()

    def request_cancel(self, job_id: str) -> None:
        """Cancel ``job_id`` on the dispatch thread: in the executor when it runs here, in the
        database when it is still queued (it then never runs); returns at once."""
        with self._lock:
            self._cancels.append(job_id)
        self.wake()

    def settle_cancels(self) -> None:
        """Settle the pending cancel requests and cancel runs whose lease was lost (the dispatch
        thread does this on every round; ``JobClient.stop`` once more)."""
        with self._lock:
            cancels, self._cancels = self._cancels, []
            lost, self._lost = self._lost, []
        for job_id in lost:
            with self._lock:
                held = self._held.get(job_id)
            if held is not None and held.lost:
                self._executor_cancel(job_id)
        for job_id in cancels:
            with self._lock:
                held = self._held.get(job_id)
            if held is not None:
                if not held.lost:
                    self._executor_cancel(job_id)
                continue
            try:
                with self._sessions.begin() as session:
                    cancelled = leases.cancel_queued(session, job_id)
            except Exception:
                log.exception("could not cancel queued job %s", job_id)
                continue
            if cancelled:
                self._host.cancelled_queued(job_id)

    def health(self) -> dict[str, Any]:
        """``{"owner": str, "held": int, "leased": int, "leasing": bool}``."""
        with self._lock:
            return {
                "owner": self.owner,
                "held": len(self._held),
                "leased": self.leased,
                "leasing": self._leasing,
            }

    # -- dispatching -------------------------------------------------------------------------
    def _executor_cancel(self, job_id: str) -> None:
        try:
            self.executor.cancel(job_id)
        except Exception:
            log.exception("executor could not cancel job %s", job_id)

    def _dispatch_loop(self) -> None:
        poll = self.settings.jobs.poll_s
        while not self._halt.is_set():
            self._wake.wait(poll)
            self._wake.clear()
            if self._halt.is_set():
                break
            try:
                self.settle_cancels()
                with self._round:
                    if self._leasing:
                        self.dispatch()
                self._fail_fast_if_broken()
            except Exception:
                log.exception("dispatching jobs failed")
                self._halt.wait(_ERROR_BACKOFF_S)

    def _fail_fast_if_broken(self) -> None:
        """While the executor reports ``fatal`` (its workers cannot start), fail the synchronous
        jobs waiting in this process (``server_error``, credits released) rather than leaving
        their callers waiting; asynchronous jobs stay queued for a healthy process."""
        try:
            fatal = bool(self.executor.health().get("fatal"))
        except Exception:
            fatal = False
        if fatal:
            waiting = [job_id for job_id, store_result in self._host.unheld_jobs() if not store_result]
            self._host.fail_waiting(waiting, "server_error", SERVER_ERROR_MESSAGE)

    def dispatch(self) -> int:
        """Lease jobs and hand them to the executor while it has capacity; returns how many.
        (The dispatch thread calls this; call it directly only when that thread is not
        running.)"""
        started = 0
        while self._leasing and self.executor.capacity() > 0:
            with self._lock:
                exclude: Collection[str] = set(self._held) | set(self._cancels)
            with self._db, self._sessions.begin() as session:
                lease = leases.lease_next(
                    session, self.owner, self.settings.jobs.lease_s, served=self._fair.passes, exclude=exclude
                )
            if lease is None:
                break
            self._fair.served(lease.org_id, lease.weight)
            if not self._hand_over(lease):
                break
            started += 1
        return started

    def _hand_over(self, lease: Lease) -> bool:
        """Give a fresh lease to the executor; False when the executor refused it (the lease is
        undone and this round ends)."""
        request = self._host.request_for(lease.job_id)
        if request is None:
            try:
                with self._sessions.begin() as session:
                    payload = session.execute(
                        select(Job.request_json).where(Job.id == lease.job_id)
                    ).scalar_one()
                request = GenerationRequest.model_validate_json(payload)
            except Exception:
                log.exception("job %s has an unreadable request; failing it", lease.job_id)
                with self._sessions.begin() as session:
                    leases.finish(
                        session,
                        lease.job_id,
                        lease.attempt,
                        self.owner,
                        "failed",
                        error_code="server_error",
                        error_message=SERVER_ERROR_MESSAGE,
                    )
                return True
        held = Held(lease)
        with self._lock:
            self._held[lease.job_id] = held
            self.leased += 1
        try:
            self.executor.submit(lease.job_id, request)
        except Exception:
            log.exception("executor refused job %s; putting it back in the queue", lease.job_id)
            with self._drained:
                self._held.pop(lease.job_id, None)
                self._drained.notify_all()
            with self._sessions.begin() as session:
                leases.unlease(session, lease.job_id, lease.attempt, self.owner)
            return False
        log.debug("job %s attempt %d leased by %s", lease.job_id, lease.attempt, self.owner)
        return True

    # -- heartbeats and recovery -------------------------------------------------------------
    def _keep_loop(self) -> None:
        while not self._halt.wait(self.settings.jobs.heartbeat_s):
            try:
                self.heartbeat()
            except Exception:
                log.exception("renewing job leases failed")

    def heartbeat(self) -> None:
        """One keeper round: renew held leases (marking lost ones and cancelling their runs),
        recover jobs whose holders are gone, report waited-for jobs that finished elsewhere."""
        jobs = self.settings.jobs
        with self._lock:
            held = dict(self._held)
        unheld = self._host.unheld_jobs()
        renew = [*held, *(job_id for job_id, store_result in unheld if not store_result)]
        with self._db, self._sessions.begin() as session:
            kept = leases.renew(session, self.owner, renew, jobs.lease_s) if renew else {}
        lost, cancel = [], []
        with self._lock:
            for job_id, h in held.items():
                renewed = kept.get(job_id)
                if h.lost:
                    continue
                if renewed is not None and (renewed.attempt, renewed.state) == (h.attempt, "running"):
                    if renewed.cancel_requested and not h.cancelled:
                        h.cancelled = True
                        cancel.append(job_id)
                    continue
                if self._held.get(job_id) is h:
                    h.lost = True
                    self._lost.append(job_id)
                    lost.append(job_id)
        for job_id in cancel:
            log.info("job %s: cancel requested through another process", job_id)
            self._executor_cancel(job_id)
        if lost:
            log.warning("lost the lease of %d job(s) (recovered elsewhere): %s", len(lost), ", ".join(lost))
            self.wake()
        recovery.reap(self._sessions, self.owner, jobs.max_attempts)
        if unheld:
            with self._sessions.begin() as session:
                states = leases.terminal_of(session, [job_id for job_id, _ in unheld])
            if states:
                self._host.settled_elsewhere(states)
