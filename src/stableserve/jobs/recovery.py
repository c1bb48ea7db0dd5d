"""Who is gone, and what becomes of their jobs: lease owner ids and recovery.

- **Owner ids** (``owner_id``): ``host:pid:random``, one per ``JobClient``. ``owner_alive``
  tells a holder that is certainly dead (same host and pid namespace, pid gone) from one that
  cannot be judged from here (another host: only its lease expiry tells).
- **Recovery** (``reap``, every process, every heartbeat): an unfinished job whose lease ran
  out (or whose holder is known dead) is recovered: a ``running`` asynchronous job with
  ``attempt < jobs.max_attempts`` goes back to ``queued`` (retried by any process), unless a
  cancel was asked for; anything else is ``failed`` with its credits released:
  ``worker_crashed`` for an asynchronous job out of attempts, ``server_restarted`` for a
  synchronous job (its caller died with its process), ``cancelled`` when a cancel was asked.
- ``fail_held``: a shutting-down process fails the jobs it holds.

Every change is conditional on the row still being what was read, so every process may run
``reap`` at once. Functions open their own transactions (one short one per job).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import and_, false, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from stableserve.accounts import ledger
from stableserve.db.base import utcnow
from stableserve.db.models import Job
from stableserve.jobs.leases import CANCELLED_MESSAGE
from stableserve.jobs.state import ACTIVE_STATES

__all__ = ["CANCELLED_MESSAGE", "CRASHED_MESSAGE", "RESTARTED_MESSAGE"]

log = logging.getLogger(__name__)

RESTARTED_MESSAGE = "The server restarted before the job finished; no credits were charged."
CRASHED_MESSAGE = "The job's worker stopped unexpectedly on every attempt; no credits were charged."
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
    transaction each; returns ``{job_id: "requeued" | "failed" | "cancelled"}`` for the jobs this call
    recovered. Safe to run in every process at once (each change is conditional).
    Opens its own transactions."""
    now = utcnow()
    with sessions.begin() as session:
        dead = dead_owners(session, me)
        rows = session.execute(
            select(
                Job.id, Job.attempt, Job.state, Job.store_result, Job.lease_owner, Job.cancel_requested
            ).where(
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
        Job.cancel_requested == bool(row.cancel_requested),
        _recoverable(now, dead),
    ]
    retry = row.store_result and row.attempt < max_attempts and not row.cancel_requested
    if row.state == "running" and retry:
        stmt = (
            update(Job)
            .where(*same)
            .values(state="queued", lease_owner=None, lease_expires_at=None, heartbeat_at=None, progress=None)
        )
        taken = session.execute(stmt.execution_options(synchronize_session=False)).rowcount
        return "requeued" if taken == 1 else None
    state, code, message = "failed", "worker_crashed", CRASHED_MESSAGE
    if row.cancel_requested:
        state, code, message = "cancelled", "cancelled", CANCELLED_MESSAGE
    elif not row.store_result:
        code, message = "server_restarted", RESTARTED_MESSAGE
    stmt = (
        update(Job)
        .where(*same)
        .values(state=state, error_code=code, error_message=message, finished_at=now, lease_expires_at=None)
    )
    if session.execute(stmt.execution_options(synchronize_session=False)).rowcount != 1:
        return None
    ledger.release(session, row.id)
    return state


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
