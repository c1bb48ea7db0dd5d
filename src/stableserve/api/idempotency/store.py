"""``IdempotencyStore``: idempotency keys and their stored responses in the database.

Every method is blocking (call it from a worker thread) and runs one short transaction, so
several server processes sharing the database agree: the UNIQUE(scope_hash,
idempotency_key) constraint decides which of two simultaneous requests claims a key. A key
whose ``expires_at`` has passed (a stored response older than ``ttl_s``, or a running claim
not renewed for ``lease_s``: its server died) is treated as absent and replaced; expired
rows are also deleted at most every ``purge_interval_s`` seconds per process.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from stableserve.db.base import utcnow
from stableserve.db.models import IdempotencyKey
from stableserve.errors import IdempotencyConflict

log = logging.getLogger("stableserve.api.idempotency")


@dataclass(frozen=True)
class Claimed:
    """This request holds the key now: run it, then ``complete`` or ``release`` ``row_id``."""

    row_id: int


@dataclass(frozen=True)
class Existing:
    """The key is taken (``state`` ``running`` or ``done``) by a request with ``fingerprint``.

    For ``done``: ``status`` and ``headers`` (``[(name, value), ...]``, latin-1 strings) of the
    stored response, and its ``body`` (``None``: it was too large to keep).
    """

    state: str
    fingerprint: str
    status: int | None = None
    headers: list[tuple[str, str]] | None = None
    body: bytes | None = None


class IdempotencyStore:
    """Claims, renews, completes and releases idempotency keys (see the module docstring).

    ``sessions``: a ``sessionmaker``; ``ttl_s``, ``lease_s``, ``purge_interval_s`` in seconds;
    ``clock``: aware UTC ``datetime`` now (tests pass a fake one).
    """

    def __init__(
        self,
        sessions: Any,
        *,
        ttl_s: float = 86_400.0,
        lease_s: float = 60.0,
        purge_interval_s: float = 600.0,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.sessions = sessions
        self.ttl = timedelta(seconds=ttl_s)
        self.lease = timedelta(seconds=lease_s)
        self.purge_interval = timedelta(seconds=purge_interval_s)
        self.clock = clock
        self._purge_lock = threading.Lock()
        self._last_purge: datetime | None = None

    def claim(self, scope_hash: str, key: str, fingerprint: str) -> Claimed | Existing:
        """Take ``key`` for this request (a ``running`` row with a lease) or report who has it.

        Raises ``IdempotencyConflict`` only if the key keeps changing hands under us (three
        tries); database errors propagate.
        """
        for _ in range(3):
            now = self.clock()
            try:
                with self.sessions.begin() as session:
                    row = session.scalar(
                        select(IdempotencyKey).where(
                            IdempotencyKey.scope_hash == scope_hash, IdempotencyKey.idempotency_key == key
                        )
                    )
                    if row is not None and row.expires_at > now:
                        return _existing(row)
                    if row is not None:  # expired: treated as absent
                        session.execute(
                            delete(IdempotencyKey).where(
                                IdempotencyKey.id == row.id, IdempotencyKey.expires_at <= now
                            )
                        )
                    claim = IdempotencyKey(
                        scope_hash=scope_hash,
                        idempotency_key=key,
                        fingerprint=fingerprint,
                        state="running",
                        created_at=now,
                        expires_at=now + self.lease,
                    )
                    session.add(claim)
                    session.flush()  # IntegrityError: a simultaneous request claimed it first
                    row_id = claim.id
            except IntegrityError:
                continue  # look again: the winner's row is there now
            self._maybe_purge(now)
            return Claimed(row_id)
        raise IdempotencyConflict("Idempotency-Key: the key is being claimed by another request; retry later")

    def renew(self, row_id: int) -> bool:
        """Extend a running claim's lease by ``lease_s`` from now; False if it is no longer ours."""
        with self.sessions.begin() as session:
            result = session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == row_id, IdempotencyKey.state == "running")
                .values(expires_at=self.clock() + self.lease)
            )
            return result.rowcount == 1

    def complete(self, row_id: int, status: int, headers: list[tuple[str, str]], body: bytes | None) -> bool:
        """Store the response of claim ``row_id`` (``body`` ``None``: too large to keep) for
        ``ttl_s`` from now. False when the claim was lost (its lease expired and another
        request took the key)."""
        with self.sessions.begin() as session:
            result = session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == row_id, IdempotencyKey.state == "running")
                .values(
                    state="done",
                    status_code=status,
                    response_headers=json.dumps([list(h) for h in headers]),
                    response_body=body,
                    expires_at=self.clock() + self.ttl,
                )
            )
            return result.rowcount == 1

    def release(self, row_id: int) -> None:
        """Forget claim ``row_id`` (nothing stored): the next request with the key runs."""
        with self.sessions.begin() as session:
            session.execute(
                delete(IdempotencyKey).where(IdempotencyKey.id == row_id, IdempotencyKey.state == "running")
            )

    def purge(self, now: datetime | None = None) -> int:
        """Delete every expired key (stored responses past ``ttl_s``, dead claims); returns how many."""
        now = now or self.clock()
        with self.sessions.begin() as session:
            return session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now)).rowcount

    def _maybe_purge(self, now: datetime) -> None:
        with self._purge_lock:
            if self._last_purge is not None and now - self._last_purge < self.purge_interval:
                return
            self._last_purge = now
        try:
            self.purge(now)
        except Exception:  # noqa: BLE001 - housekeeping only; the next claim tries again
            log.warning("purging expired idempotency keys failed", exc_info=True)


def _existing(row: IdempotencyKey) -> Existing:
    if row.state != "done":
        return Existing(state=row.state, fingerprint=row.fingerprint)
    headers = [(name, value) for name, value in json.loads(row.response_headers or "[]")]
    return Existing("done", row.fingerprint, row.status_code, headers, row.response_body)
