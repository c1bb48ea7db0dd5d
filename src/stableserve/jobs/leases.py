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
- **Recovery** (``reap``, every process, every heartbeat): an unfinished job whose lease
  ran out (or whose holder is known dead: same host and pid namespace, pid gone) is
  recovered: a ``running`` asynchronous job with ``attempt < jobs.max_attempts`` goes back to
  ``queued`` (retried by any process); anything else is ``failed`` with its credits released:
  ``worker_crashed`` for an asynchronous job out of attempts, ``server_restarted`` for a
  synchronous job (its caller died with its process).

Times come from the clocks of the processes: keep them synchronized (NTP) to well under
``lease_s``. Every function takes a session inside the caller's transaction unless it says
otherwise; none commits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, false, func, or_, select, true, update
from sqlalchemy.orm import Session, sessionmaker

from stableserve.accounts import ledger
from stableserve.db.base import utcnow
from stableserve.db.models import Job
from stableserve.jobs.state import ACTIVE_STATES

log = logging.getLogger(__name__)

RESTARTED_MESSAGE = "The server restarted before the job finished; no credits were charged."
CANCELLED_MESSAGE = "The job was cancelled; no credits were charged."
CRASHED_MESSAGE = "The job's worker stopped unexpectedly on every attempt; no credits were charged."
_CHUNK = 500  # ids per ... WHERE id IN (...)

# -- owner ids -------------------------------------------------------------------------------
_live_lock = threading.Lock()
_live_owners: set[str] = set()


def _pid_space() -> str | None:
    """8 hex chars naming this machine boot and pid namespace (Linux), else ``None``.

    Two owners with the same tag can check each other's pid; without it (another container,
    another boot, not Linux) only the lease's expiry tells that an owner died.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return hashlib.sha1(f"{boot}|{namespace}".encode()).hexdigest()[:8]


def _host() -> str:
    name = (socket.gethostname() or "localhost").replace(":", "_")[:80]
    tag = _pid_space()
    return f"{name}/{tag}" if tag else name


HOST = _host()
"""This process's host part of owner ids: the hostname, plus ``/`` and the pid-space tag
where one is known (see ``owner_alive``)."""


def owner_id() -> str:
    """A new owner id ``host:pid:random`` (at most 120 chars), one per ``JobClient``."""
    return f"{HOST}:{os.getpid()}:{secrets.token_hex(4)}"


def register_owner(owner: str) -> None:
    """Record that ``owner`` is a live ``JobClient`` of this process (see ``owner_alive``)."""
    with _live_lock:
        _live_owners.add(owner)


def unregister_owner(owner: str) -> None:
    """Forget ``owner`` (its ``JobClient`` stopped or was abandoned)."""
    with _live_lock:
        _live_owners.discard(owner)


def owner_alive(owner: str) -> bool | None:
    """Whether the process named by ``owner`` still runs: ``False`` only when that is certain
    (same host and pid namespace as this process, and its pid is gone, or it is this very
    process's pid but no live ``JobClient`` here has that id); ``True`` when its pid lives on
    this host; ``None`` when it cannot be told from here (another host or namespace)."""
    with _live_lock:
        if owner in _live_owners:
            return True
    try:
        host, pid_text, _token = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != HOST or "/" not in host or pid <= 0:
        return None
    if pid == os.getpid():
        return False  # not a live client of this process: a previous incarnation's
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists (another user's)
        return True
    return True


# -- leasing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lease:
    """A job this process leased: run ``attempt`` of ``job_id`` (of ``org_id``) now."""

    job_id: str
    org_id: str
    attempt: int
    store_result: bool


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _eligible(owner: str, exclude: Collection[str]) -> list[Any]:
    """Queued jobs ``owner`` may lease: asynchronous ones, and synchronous ones it accepted."""
    where = [Job.state == "queued", or_(Job.store_result == true(), Job.origin == owner)]
    if exclude:
        where.append(Job.id.not_in(list(exclude)))
    return where


def fair_order(heads: Iterable[tuple[str, Any]], served: Mapping[str, int]) -> list[str]:
    """Organizations with queued work, in the order they should be served: the one served
    least recently first (never served: first of all), ties by their oldest queued job.

    ``heads``: ``(org_id, oldest queued created_at)``; ``served``: org -> a counter value
    that grows each time the org is served (``Dispatcher`` keeps it)."""
    return [org for org, _ in sorted(heads, key=lambda h: (served.get(h[0], -1), h[1]))]


def lease_next(
    session: Session,
    owner: str,
    lease_s: float,
    *,
    served: Mapping[str, int] | None = None,
    exclude: Collection[str] = (),
) -> Lease | None:
    """Lease the next queued job ``owner`` may run, fairly across organizations; ``None`` when
    there is none. The oldest queued job of the first organization in ``fair_order`` whose
    job is not locked by a concurrent leaser wins; ``exclude``: job ids not to take (still
    in this process's executor). Commit right after: the lease counts from the commit.
    """
    where = _eligible(owner, exclude)
    heads = session.execute(
        select(Job.org_id, func.min(Job.created_at)).where(*where).group_by(Job.org_id)
    ).all()
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
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken == 1:
            return Lease(row.id, org_id, row.attempt + 1, bool(row.store_result))
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
    fenced like ``finish``. The credits stay reserved."""
    stmt = (
        update(Job)
        .where(*_fence(job_id, attempt, owner))
        .values(state="queued", lease_owner=None, lease_expires_at=None, heartbeat_at=None)
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
def renew(
    session: Session, owner: str, job_ids: Collection[str], lease_s: float
) -> dict[str, tuple[int, str]]:
    """Extend ``owner``'s leases of ``job_ids`` (jobs it runs, and its queued synchronous
    jobs) to now + ``lease_s``; returns ``{job_id: (attempt, state)}`` of those it still holds.
    A job missing from the answer, or with another attempt, was lost (recovered elsewhere)."""
    now = utcnow()
    held: dict[str, tuple[int, str]] = {}
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
        for row in session.execute(select(Job.id, Job.attempt, Job.state).where(*mine)):
            held[row.id] = (row.attempt, row.state)
    return held


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


# -- recovery --------------------------------------------------------------------------------
def _recoverable(now: datetime, dead: Collection[str]) -> Any:
    """Unfinished jobs whose holder is gone: lease run out, never set (rows of an earlier
    version), or held by a process known dead. Queued asynchronous jobs are nobody's: skip."""
    gone = [Job.lease_expires_at.is_(None), Job.lease_expires_at < now]
    if dead:
        gone.append(Job.lease_owner.in_(list(dead)))
    return and_(
        Job.state.in_(ACTIVE_STATES),
        or_(Job.state == "running", Job.store_result == false()),
        or_(*gone),
    )


def dead_owners(session: Session, me: str) -> set[str]:
    """Holders of unfinished jobs that ``owner_alive`` knows to be dead (not ``me``)."""
    owners = session.execute(
        select(Job.lease_owner)
        .where(Job.state.in_(ACTIVE_STATES), Job.lease_owner.is_not(None), Job.lease_owner != me)
        .distinct()
    ).scalars()
    return {o for o in owners if owner_alive(o) is False}


def reap(sessions: sessionmaker[Session], me: str, max_attempts: int) -> dict[str, str]:
    """Recover every job whose holder is gone (see the module docstring), one short
    transaction each; returns ``{job_id: "requeued" | "failed"}`` for the jobs this call
    recovered. Safe to run in every process at once (each change is conditional).
    Opens its own transactions."""
    now = utcnow()
    with sessions.begin() as session:
        dead = dead_owners(session, me)
        rows = session.execute(
            select(Job.id, Job.attempt, Job.state, Job.store_result, Job.lease_owner).where(
                _recoverable(now, dead)
            )
        ).all()
    done: dict[str, str] = {}
    for row in rows:
        try:
            with sessions.begin() as session:
                outcome = _recover_one(session, row, now, dead, max_attempts)
        except Exception:
            log.exception("could not recover job %s", row.id)
            continue
        if outcome is not None:
            done[row.id] = outcome
            log.warning(
                "job %s (attempt %d, %s, holder %s gone): %s",
                row.id,
                row.attempt,
                row.state,
                row.lease_owner,
                outcome,
            )
    return done


def _recover_one(
    session: Session, row: Any, now: datetime, dead: Collection[str], max_attempts: int
) -> str | None:
    owner = Job.lease_owner.is_(None) if row.lease_owner is None else Job.lease_owner == row.lease_owner
    same = [
        Job.id == row.id,
        Job.attempt == row.attempt,
        Job.state == row.state,
        owner,
        _recoverable(now, dead),
    ]
    if row.state == "running" and row.store_result and row.attempt < max_attempts:
        stmt = (
            update(Job)
            .where(*same)
            .values(state="queued", lease_owner=None, lease_expires_at=None, heartbeat_at=None)
        )
        taken = session.execute(stmt.execution_options(synchronize_session=False)).rowcount
        return "requeued" if taken == 1 else None
    code, message = (
        ("worker_crashed", CRASHED_MESSAGE) if row.store_result else ("server_restarted", RESTARTED_MESSAGE)
    )
    stmt = (
        update(Job)
        .where(*same)
        .values(
            state="failed", error_code=code, error_message=message, finished_at=now, lease_expires_at=None
        )
    )
    if session.execute(stmt.execution_options(synchronize_session=False)).rowcount != 1:
        return None
    ledger.release(session, row.id)
    return "failed"


def fail_held(
    sessions: sessionmaker[Session], owner: str, job_ids: Collection[str], code: str, message: str
) -> list[str]:
    """Fail the unfinished jobs of ``job_ids`` that ``owner`` holds (queued synchronous ones
    and running ones, any attempt) with ``code``, releasing their credits; returns their ids.
    For a shutting-down process: its waiting callers go away with it. Opens its own
    transactions (one per job)."""
    failed: list[str] = []
    for job_id in job_ids:
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.state.in_(ACTIVE_STATES))
            .values(
                state="failed",
                error_code=code,
                error_message=message,
                finished_at=utcnow(),
                lease_expires_at=None,
            )
            .execution_options(synchronize_session=False)
        )
        try:
            with sessions.begin() as session:
                if session.execute(stmt).rowcount == 1:
                    ledger.release(session, job_id)
                    failed.append(job_id)
        except Exception:
            log.exception("could not fail job %s (%s)", job_id, code)
    return failed
