"""Stored results of asynchronous jobs (v2beta ``/v2beta/results/{id}``, CONTRACT.md §3.2).

A job submitted with ``store_result=True`` has its artifacts written to an ``ArtifactStore``
when it succeeds (``JobClient`` does that before it commits ``succeeded``), and its row gets
``expires_at = finished_at + settings.results.retention_s`` (24 h by default). This module
reads them back and deletes them when they expire:

- ``StoredResults.fetch``: what a poll of the job answers (``None`` while in progress, the
  artifacts, the job's domain error, or ``NotFound``).
- ``StoredResults.purge_expired``: deletes expired results from the store and clears their
  rows' ``expires_at`` (a succeeded ``store_result`` job with a NULL ``expires_at`` has no
  stored result any more); ``start_purger`` runs it every ``results.purge_interval_s``.
- ``stored_outcome``: the terminal event of a failed/cancelled job rebuilt from its row.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from stableserve.core.types import Artifact
from stableserve.db.base import utcnow
from stableserve.db.models import Job
from stableserve.errors import NotFound
from stableserve.jobs.events import SERVER_ERROR_MESSAGE, Cancelled, Failed
from stableserve.settings import Settings
from stableserve.storage.artifacts import ArtifactStore, is_job_id

log = logging.getLogger(__name__)

# Codes of failures that are the server's fault (GenerationFailed) when rebuilt from a row.
SERVER_CODES = frozenset(
    {"server_error", "worker_crashed", "server_restarted", "server_shutdown", "internal_error"}
)
#: Store folders older than retention + this are deleted even without a row saying so
#: (orphans: a write whose commit failed, a row deleted by hand). The margin keeps the
#: purge from racing a result whose ``expires_at`` is a moment later than its ``stored_at``.
ORPHAN_GRACE = timedelta(hours=1)
_CHUNK = 500  # ids per UPDATE ... WHERE id IN (...)


def stored_outcome(
    job_id: str, state: str, code: str | None, message: str | None
) -> Failed | Cancelled | None:
    """The terminal event of a ``failed``/``cancelled`` job rebuilt from its row (else ``None``).

    ``Failed.error`` is chosen from ``code``: server-side codes give ``GenerationFailed``,
    ``engine_not_ready`` ``EngineNotReady``, ``not_found`` ``NotFound``, anything else
    ``InvalidRequest``; ``to_error()`` on the result gives the domain error to raise.
    """
    if state == "cancelled":
        return Cancelled(job_id)
    if state == "failed":
        code = code or "server_error"
        kinds = {"engine_not_ready": "EngineNotReady", "not_found": "NotFound"}
        kind = "GenerationFailed" if code in SERVER_CODES else kinds.get(code, "InvalidRequest")
        return Failed(job_id, code, message or SERVER_ERROR_MESSAGE, None, kind)
    return None


class StoredResults:
    """Reads and expires the stored results of ``store_result`` jobs (see the module docstring).

    ``settings.results.retention_s`` sets how long a finished job stays fetchable and
    ``settings.results.purge_interval_s`` how often ``start_purger`` purges.
    """

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], store: ArtifactStore):
        self.settings = settings
        self.store = store
        self._sessions = sessions
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def retention(self) -> timedelta:
        """How long a finished result stays fetchable (``settings.results.retention_s``)."""
        return timedelta(seconds=self.settings.results.retention_s)

    def expires_at(self, finished_at: datetime) -> datetime:
        """When a result finished at ``finished_at`` expires."""
        return finished_at + self.retention

    # -- reading -----------------------------------------------------------------------------
    def fetch(self, job_id: str, *, org_id: str) -> list[Artifact] | None:
        """The stored result of ``org_id``'s ``store_result`` job ``job_id``. Blocking.

        - ``None`` while the job is ``queued`` or ``running``;
        - its artifacts (with bytes, ``index`` order) when ``succeeded``; fetching again
          returns them again until they expire;
        - raises the job's domain error when it ``failed`` (``GenerationFailed`` with the
          job's code, ``InvalidRequest``, ``EngineNotReady``, ``NotFound``) or was
          ``cancelled`` (``GenerationCancelled``), until ``retention_s`` after it finished;
        - raises ``NotFound(param="id")`` when the id is malformed or unknown, the job belongs
          to another organization (the same error: indistinguishable), was not submitted with
          ``store_result=True``, or its result expired (``expires_at`` passed, or the bytes
          are gone from the store). An expired result is deleted from the store right away.

        Database errors and store read errors (``OSError``; ``ValueError`` for a corrupt
        entry) propagate.
        """
        shown = f"generation {job_id}" if is_job_id(job_id) else "generation"  # never echo junk
        not_found = NotFound(f"{shown} not found (unknown, expired or not yours)", param="id")
        if not is_job_id(job_id):
            raise not_found
        now = utcnow()
        with self._sessions.begin() as session:
            job = session.get(Job, job_id)
            if job is None or job.org_id != org_id or not job.store_result:
                raise not_found
            state, expires_at, finished_at = job.state, job.expires_at, job.finished_at
            code, message = job.error_code, job.error_message
        if state in ("queued", "running"):
            return None
        if state != "succeeded":
            if finished_at is not None and finished_at + self.retention <= now:
                raise not_found
            outcome = stored_outcome(job_id, state, code, message)
            if outcome is None:  # an unknown state: never report it as a result
                raise not_found
            raise outcome.to_error()
        artifacts = self.store.get(job_id) if expires_at is not None and expires_at > now else None
        if artifacts is None:
            self._expire([job_id])
            raise not_found
        return artifacts

    # -- expiring ----------------------------------------------------------------------------
    def discard(self, job_id: str) -> None:
        """Best-effort delete of a stored result no row points to (errors are logged; the
        purge deletes what is missed)."""
        try:
            self.store.delete(job_id)
        except Exception:
            log.exception("could not delete the orphaned stored result of job %s", job_id)

    def purge_expired(self) -> int:
        """Delete every result past its ``expires_at`` from the store and clear those rows'
        ``expires_at``; also delete store entries older than ``retention + 1 h`` that no row
        accounts for. Returns how many stored results were deleted. Blocking."""
        now = utcnow()
        with self._sessions.begin() as session:
            expired = (
                session.execute(select(Job.id).where(Job.expires_at.is_not(None), Job.expires_at <= now))
                .scalars()
                .all()
            )
        deleted = self._expire(expired)
        deleted += self.store.purge(now - self.retention - ORPHAN_GRACE)
        if deleted:
            log.info("purged %d expired job result(s)", deleted)
        return deleted

    def _expire(self, job_ids: Sequence[str]) -> int:
        """Delete ``job_ids``' results from the store, then clear their rows' ``expires_at``.

        Rows are cleared only for results the store no longer holds, so a failed delete is
        retried by the next purge (the row's past ``expires_at`` already hides it from
        ``fetch``). Returns how many were deleted from the store.
        """
        deleted, gone = 0, []
        for job_id in job_ids:
            try:
                deleted += self.store.delete(job_id)
            except Exception:
                log.exception("could not delete the stored result of job %s", job_id)
                continue
            gone.append(job_id)
        for start in range(0, len(gone), _CHUNK):
            with self._sessions.begin() as session:
                session.execute(
                    update(Job)
                    .where(Job.id.in_(gone[start : start + _CHUNK]), Job.expires_at.is_not(None))
                    .values(expires_at=None)
                )
        return deleted

    # -- the periodic purge ------------------------------------------------------------------
    def start_purger(self) -> None:
        """Run ``purge_expired`` every ``results.purge_interval_s`` seconds on a daemon thread
        (errors are logged, the thread goes on). Idempotent while running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        thread = threading.Thread(target=self._purge_loop, name="stableserve-result-purger", daemon=True)
        self._thread = thread
        thread.start()

    def stop_purger(self, timeout: float = 10.0) -> None:
        """Stop the purge thread (waits for a purge in progress, at most ``timeout`` s); idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _purge_loop(self) -> None:
        interval = self.settings.results.purge_interval_s
        while not self._stop.wait(interval):
            try:
                self.purge_expired()
            except Exception:
                log.exception("purging expired job results failed")
