"""``Settlement``: writes what a run reports to its job row, fenced by the run's attempt.

The ``JobClient`` calls it on executor threads for the jobs its process holds:

- ``started``: ``started_at``.
- ``progress``: the running attempt's progress (0..1), at most once per
  ``PROGRESS_WRITE_S`` seconds per job (and always the last step), so a poll that reaches
  any server process can show it.
- ``terminal``: the row's final state and, in the same transaction, the capture (success) or
  release (failure, cancel) of the credits; a ``store_result`` job's artifacts are written
  to the ``ArtifactStore`` first; a crashed asynchronous attempt with attempts left goes back
  to the queue instead (unless a cancel was asked for).

Every write is fenced on ``id + attempt + running + owner`` (``jobs.leases``), so a stale
attempt can neither move the row nor touch the credits.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from stableserve.db.base import utcnow
from stableserve.db.models import Job
from stableserve.jobs import leases
from stableserve.jobs.dispatcher import Held
from stableserve.jobs.events import SERVER_ERROR_MESSAGE, Failed, JobEvent, Progress, Succeeded
from stableserve.jobs.leases import CANCELLED_MESSAGE
from stableserve.jobs.results import StoredResults
from stableserve.jobs.state import artifact_metadata
from stableserve.settings import Settings
from stableserve.storage.artifacts import ArtifactStore

log = logging.getLogger(__name__)

PROGRESS_WRITE_S = 1.0
"""Least seconds between two progress writes of one job."""


class Settlement:
    """Fenced writes of one ``JobClient``'s runs (see the module docstring).

    ``owner``: the client's lease owner id; ``results``: its ``StoredResults`` (expiry,
    discard); ``store``: where ``store_result`` artifacts go. Thread-safe.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        owner: str,
        store: ArtifactStore,
        results: StoredResults,
    ):
        self.settings = settings
        self.owner = owner
        self.store = store
        self._sessions = sessions
        self._results = results
        self._lock = threading.Lock()
        self._last_progress: dict[str, float] = {}  # job_id -> monotonic time of its last write

    def started(self, job_id: str, held: Held) -> None:
        """Record that ``held``'s attempt of ``job_id`` began (``started_at``); errors are logged."""
        try:
            with self._sessions.begin() as session:
                leases.mark_started(session, job_id, held.attempt, self.owner)
        except Exception:
            log.exception("could not record Started for job %s", job_id)

    def progress(self, event: Progress, held: Held) -> None:
        """Store ``event.done / event.total`` as the job's progress, unless the job's last write
        was less than ``PROGRESS_WRITE_S`` ago (the last step is always written); errors are
        logged."""
        now = time.monotonic()
        last_step = event.total > 0 and event.done >= event.total
        with self._lock:
            last = self._last_progress.get(event.job_id)
            if last is not None and now - last < PROGRESS_WRITE_S and not last_step:
                return
            self._last_progress[event.job_id] = now
        fraction = event.done / event.total if event.total > 0 else 0.0
        try:
            with self._sessions.begin() as session:
                leases.record_progress(session, event.job_id, held.attempt, self.owner, fraction)
        except Exception:
            log.exception("could not record the progress of job %s", event.job_id)

    def terminal(self, event: JobEvent, held: Held) -> tuple[JobEvent | None, bool]:
        """Settle the row and credits for the terminal ``event`` of ``held``'s attempt; returns
        the event to deliver (``None``: nothing to deliver: the attempt was stale, or the job
        went back to the queue) and whether its artifacts were written to the store.

        For a ``store_result`` job the artifacts are written first, outside the transaction
        (after checking that the attempt still holds the job); a failed write turns the
        outcome into ``Failed(server_error)`` (credits released).
        """
        job_id, attempt, owner = event.job_id, held.attempt, self.owner
        with self._lock:
            self._last_progress.pop(job_id, None)
        if (
            isinstance(event, Failed)
            and event.code == "worker_crashed"
            and held.lease.store_result
            and attempt < self.settings.jobs.max_attempts
        ):
            with self._sessions.begin() as session:
                requeued = leases.requeue(session, job_id, attempt, owner)
            if requeued:
                log.warning("job %s: worker crashed on attempt %d; queued again", job_id, attempt)
                return None, False
            # not requeued: stale (the finish below is fenced too) or a cancel was asked for
        stored = False
        if isinstance(event, Succeeded) and held.lease.store_result:
            with self._sessions.begin() as session:
                if not leases.holds(session, job_id, attempt, owner):
                    return None, False  # never write over the result of the attempt that counts
            try:
                self.store.put(job_id, event.artifacts)
                stored = True
            except Exception:
                log.exception("could not store the result of job %s; failing it", job_id)
                event = Failed(job_id, "server_error", SERVER_ERROR_MESSAGE)
        try:
            with self._sessions.begin() as session:
                if isinstance(event, Succeeded):
                    now = utcnow()
                    settled = leases.finish(
                        session,
                        job_id,
                        attempt,
                        owner,
                        "succeeded",
                        result_json=json.dumps([artifact_metadata(a) for a in event.artifacts]),
                        expires_at=self._results.expires_at(now) if stored else None,
                        finished_at=now,
                    )
                elif isinstance(event, Failed):
                    settled = leases.finish(
                        session,
                        job_id,
                        attempt,
                        owner,
                        "failed",
                        error_code=event.code,
                        error_message=event.message,
                    )
                else:
                    settled = leases.finish(
                        session,
                        job_id,
                        attempt,
                        owner,
                        "cancelled",
                        error_code="cancelled",
                        error_message=CANCELLED_MESSAGE,
                    )
                state = (
                    None
                    if settled or not stored
                    else session.execute(select(Job.state).where(Job.id == job_id)).scalar_one_or_none()
                )
        except Exception:
            if stored:
                self._results.discard(job_id)
            raise
        if not settled:
            if stored and state != "succeeded":
                self._results.discard(job_id)  # the job ended otherwise meanwhile
            log.info("dropped %s of job %s attempt %d: stale", type(event).__name__, job_id, attempt)
            return None, False
        return event, stored
