"""Job leases in the job table: who may run a job, for how long, and which attempt counts.

Several server processes may share one database. Each ``JobClient`` has an owner id
(``owner_id()``: ``host:pid:random``) and, through its ``Dispatcher``, takes jobs by lease:

- **Lease** (``lease_next``): a ``queued`` job becomes ``running`` with ``attempt + 1``,
  ``lease_owner`` = the process and ``lease_expires_at`` = now + ``jobs.lease_s``, in one
  short transaction. PostgreSQL: the candidate row is locked with ``SELECT ... FOR UPDATE
  SKIP LOCKED`` (concurrent leasers skip each other's rows); SQLite: the transaction holds
  the write lock (``BEGIN IMMEDIATE``) and the conditional ``UPDATE ... WHERE state='queued'``
  decides by its rowcount. An asynchronous (``store_result``) job may be leased by any
  process; a synchronous one only by its ``origin``, where its caller waits for in-memory
  artifacts. Organizations take turns (``fair_order``).
- **Fencing**: ``attempt`` is the fencing token. Every outcome an executor reports is written
  with ``UPDATE ... WHERE id = :id AND attempt = :attempt AND state = 'running' AND
  lease_owner = :owner`` (``finish``, ``requeue``, ``mark_started``) in the same transaction
  as the ledger's capture/release, so an attempt that lost its lease can neither move the
  row nor touch the credits.
- **Heartbeat** (``renew``): the holder pushes ``lease_expires_at`` forward every
  ``jobs.heartbeat_s`` for the jobs it really holds, and learns which leases it lost.
- **Cancel from anywhere** (``request_cancel``): a queued job is cancelled at once (credits
  released); a running one gets ``cancel_requested``, which its holder reads in ``renew``
  and acts on (its run stops; the terminal event settles the row).
- **Progress** (``record_progress``): the holder writes the running attempt's progress, so
  a poll reaching any process can show it.
- **Recovery**: ``jobs.recovery`` (owner ids, ``reap``).

Times come from the clocks of the processes: keep them synchronized (NTP) to well under
``lease_s``. Every function takes a session inside the caller's transaction unless it says
otherwise; none commits.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import false, func, or_, select, true, update
from sqlalchemy.orm import Session

from stableserve.accounts import ledger
from stableserve.db.base import utcnow
from stableserve.db.models import Job, Organization, Plan
from stableserve.errors import JobFinished, NotFound
from stableserve.jobs.state import ACTIVE_STATES

log = logging.getLogger(__name__)

CANCELLED_MESSAGE = "The job was cancelled; no credits were charged."
_CHUNK = 500  # ids per ... WHERE id IN (...)

# -- leasing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lease:
    """A job this process leased: run ``attempt`` of ``job_id`` (of ``org_id``) now."""

    job_id: str
    org_id: str
    attempt: int
    store_result: bool
    weight: int = 1
    """The weight of the organization's plan (1 without a plan)."""


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _eligible(owner: str, exclude: Collection[str]) -> list[Any]:
    """Queued jobs ``owner`` may lease: asynchronous ones, and synchronous ones it accepted."""
    where = [Job.state == "queued", or_(Job.store_result == true(), Job.origin == owner)]
    if exclude:
        where.append(Job.id.not_in(list(exclude)))
    return where


def fair_order(heads: Iterable[tuple[str, Any]], served: Mapping[str, float]) -> list[str]:
    """Organizations with queued work, in the order they should be served: the lowest pass
    first (never served: first of all), ties by their oldest queued job.

    ``heads``: ``(org_id, oldest queued created_at)``; ``served``: org -> its pass (``FairShare``
    keeps them: it grows by ``1 / weight`` each time the org is served)."""
    return [org for org, _ in sorted(heads, key=lambda h: (served.get(h[0], -1.0), h[1]))]


class FairShare:
    """Weighted round robin across organizations (stride scheduling, Waldspurger & Weihl 1995).

    Each organization has a *pass*; the one with the lowest pass is served next and its pass
    grows by ``1 / weight`` (its plan's ``weight``, 1..100). While several organizations have
    queued jobs, each is served in proportion to its weight; with equal weights this is plain
    round robin. An organization that comes back after being idle starts at the pass of the
    last one served (``vtime``), so idleness earns no burst. Not thread-safe: one dispatch
    thread uses it.
    """

    def __init__(self) -> None:
        self.passes: dict[str, float] = {}
        """org_id -> pass (what ``fair_order`` sorts by)."""
        self.vtime = 0.0
        """The pass of the organization served last."""

    def served(self, org_id: str, weight: int = 1) -> None:
        """Record that ``org_id`` (whose plan has ``weight``) was just served."""
        start = max(self.passes.get(org_id, self.vtime), self.vtime)
        self.vtime = start
        self.passes[org_id] = start + 1.0 / max(1, weight)


def lease_next(
    session: Session,
    owner: str,
    lease_s: float,
    *,
    served: Mapping[str, float] | None = None,
    exclude: Collection[str] = (),
) -> Lease | None:
    """Lease the next queued job ``owner`` may run, fairly across organizations; ``None`` when
    there is none. The oldest queued job of the first organization in ``fair_order`` (by
    ``served``, a ``FairShare``'s passes; the lease carries the org's plan weight) whose
    job is not locked by a concurrent leaser wins; ``exclude``: job ids not to take (still
    in this process's executor). Commit right after: the lease counts from the commit.
    """
    where = _eligible(owner, exclude)
    heads = session.execute(
        select(Job.org_id, func.min(Job.created_at), func.max(func.coalesce(Plan.weight, 1)))
        .join(Organization, Organization.id == Job.org_id)
        .outerjoin(Plan, Plan.id == Organization.plan_id)
        .where(*where)
        .group_by(Job.org_id)
    ).all()
    weights = {h[0]: int(h[2]) for h in heads}
    postgresql = _is_postgresql(session)
    for org_id in fair_order([(h[0], h[1]) for h in heads], served or {}):
        stmt = (
            select(Job.id, Job.attempt, Job.store_result)
            .where(*where, Job.org_id == org_id)
            .order_by(Job.created_at, Job.id)
            .limit(1)
        )
        if postgresql:
            stmt = stmt.with_for_update(skip_locked=True)
        row = session.execute(stmt).first()
        if row is None:
            continue
        now = utcnow()
        taken = session.execute(
            update(Job)
            .where(Job.id == row.id, Job.state == "queued", Job.attempt == row.attempt)
            .values(
                state="running",
                attempt=row.attempt + 1,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_s),
                heartbeat_at=now,
                progress=None,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken == 1:
            return Lease(row.id, org_id, row.attempt + 1, bool(row.store_result), weights[org_id])
    return None


def _fence(job_id: str, attempt: int, owner: str) -> list[Any]:
    return [Job.id == job_id, Job.attempt == attempt, Job.state == "running", Job.lease_owner == owner]


def holds(session: Session, job_id: str, attempt: int, owner: str) -> bool:
    """True while ``owner`` holds ``attempt`` of the running ``job_id``."""
    found = session.execute(select(Job.id).where(*_fence(job_id, attempt, owner))).first()
    return found is not None


def mark_started(session: Session, job_id: str, attempt: int, owner: str) -> bool:
    """Set ``started_at`` (a worker began ``attempt``); False when the attempt is stale."""
    stmt = update(Job).where(*_fence(job_id, attempt, owner)).values(started_at=utcnow())
    return session.execute(stmt.execution_options(synchronize_session=False)).rowcount == 1


def finish(
    session: Session,
    job_id: str,
    attempt: int,
    owner: str,
    state: str,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
    result_json: str | None = None,
    expires_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> bool:
    """End ``attempt`` of ``job_id`` as ``state`` (``succeeded``: capture the credits; else
    release them), fenced: False, and nothing written, when ``owner`` no longer holds that
    attempt of the running job."""
    values: dict[str, Any] = {
        "state": state,
        "finished_at": finished_at or utcnow(),
        "lease_expires_at": None,
        "error_code": error_code,
        "error_message": error_message,
    }
    if state == "succeeded":
        values.update(result_json=result_json, expires_at=expires_at)
    stmt = update(Job).where(*_fence(job_id, attempt, owner)).values(**values)
    if session.execute(stmt.execution_options(synchronize_session=False)).rowcount != 1:
        return False
    if state == "succeeded":
        ledger.capture(session, job_id)
    else:
        ledger.release(session, job_id)
    return True


def requeue(session: Session, job_id: str, attempt: int, owner: str) -> bool:
    """Put ``attempt`` of ``job_id`` back in the queue (for another attempt, by any process);
    fenced like ``finish``, and not when a cancel was asked for (False: finish it instead).
    The credits stay reserved."""
    stmt = (
        update(Job)
        .where(*_fence(job_id, attempt, owner), Job.cancel_requested == false())
        .values(state="queued", lease_owner=None, lease_expires_at=None, heartbeat_at=None, progress=None)
    )
    return session.execute(stmt.execution_options(synchronize_session=False)).rowcount == 1


def cancel_queued(session: Session, job_id: str) -> bool:
    """Cancel ``job_id`` if it is still ``queued`` (it never runs), releasing its credits;
    False when it is not queued (running, finished or unknown)."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.state == "queued")
        .values(
            state="cancelled",
            error_code="cancelled",
            error_message=CANCELLED_MESSAGE,
            finished_at=utcnow(),
            lease_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    if session.execute(stmt).rowcount != 1:
        return False
    ledger.release(session, job_id)
    return True


def unlease(session: Session, job_id: str, attempt: int, owner: str) -> bool:
    """Undo a lease whose job never reached an executor (``attempt`` does not count): back to
    ``queued`` with ``attempt - 1``; a synchronous job stays held by its origin."""
    row = session.execute(select(Job.store_result).where(*_fence(job_id, attempt, owner))).first()
    if row is None:
        return False
    values: dict[str, Any] = {"state": "queued", "attempt": attempt - 1}
    if row.store_result:
        values.update(lease_owner=None, lease_expires_at=None, heartbeat_at=None)
    stmt = update(Job).where(*_fence(job_id, attempt, owner)).values(**values)
    return session.execute(stmt.execution_options(synchronize_session=False)).rowcount == 1


# -- heartbeats ------------------------------------------------------------------------------
class Renewed(NamedTuple):
    """A lease ``renew`` found still held: the row's ``attempt``, ``state`` and whether a
    cancel was asked for (``request_cancel``)."""

    attempt: int
    state: str
    cancel_requested: bool


def renew(session: Session, owner: str, job_ids: Collection[str], lease_s: float) -> dict[str, Renewed]:
    """Extend ``owner``'s leases of ``job_ids`` (jobs it runs, and its queued synchronous
    jobs) to now + ``lease_s``; returns ``{job_id: Renewed}`` of those it still holds.
    A job missing from the answer, or with another attempt, was lost (recovered elsewhere)."""
    now = utcnow()
    held: dict[str, Renewed] = {}
    ids = list(job_ids)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        mine = [Job.id.in_(chunk), Job.lease_owner == owner, Job.state.in_(ACTIVE_STATES)]
        session.execute(
            update(Job)
            .where(*mine)
            .values(lease_expires_at=now + timedelta(seconds=lease_s), heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
        rows = session.execute(select(Job.id, Job.attempt, Job.state, Job.cancel_requested).where(*mine))
        for row in rows:
            held[row.id] = Renewed(row.attempt, row.state, bool(row.cancel_requested))
    return held


def request_cancel(session: Session, job_id: str, org_id: str | None = None) -> str:
    """Ask for ``job_id`` to be cancelled, from any process: ``"cancelled"`` when it was still
    queued (it is cancelled now, credits released); ``"requested"`` when it runs (its holder
    stops it at its next lease renewal, within ``jobs.heartbeat_s``; the terminal event
    settles the row). Raises ``NotFound`` when unknown or, with ``org_id``, another
    organization's; ``JobFinished`` when it already finished."""
    job = session.execute(select(Job.org_id, Job.state).where(Job.id == job_id)).first()
    if job is None or (org_id is not None and job.org_id != org_id):
        raise NotFound(f"job {job_id} not found", param="id")
    if job.state == "queued" and cancel_queued(session, job_id):
        return "cancelled"
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.state == "running")
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    if session.execute(stmt).rowcount == 1:
        return "requested"
    if cancel_queued(session, job_id):  # went back to the queue meanwhile (a retry)
        return "cancelled"
    raise JobFinished(f"job {job_id} already finished", param="id")


def record_progress(session: Session, job_id: str, attempt: int, owner: str, fraction: float) -> bool:
    """Store ``fraction`` (0..1) as the progress of ``attempt`` of ``job_id``; fenced like
    ``finish`` (False when stale)."""
    value = min(1.0, max(0.0, float(fraction)))
    stmt = update(Job).where(*_fence(job_id, attempt, owner)).values(progress=value)
    return session.execute(stmt.execution_options(synchronize_session=False)).rowcount == 1


def terminal_of(session: Session, job_ids: Collection[str]) -> dict[str, str]:
    """``{job_id: state}`` of those of ``job_ids`` that are finished."""
    ids = list(job_ids)
    found: dict[str, str] = {}
    for start in range(0, len(ids), _CHUNK):
        stmt = select(Job.id, Job.state).where(
            Job.id.in_(ids[start : start + _CHUNK]), Job.state.not_in(ACTIVE_STATES)
        )
        found.update({row.id: row.state for row in session.execute(stmt)})
    return found
