"""The credits ledger: append-only entries per organization; the balance is their sum.

A job's credits move in two steps: ``reserve`` (amount -N, refused with
``InsufficientCredits`` when the balance is short) when it is accepted, then exactly one of
``capture`` (amount 0: the reservation becomes the charge) on success or ``release``
(amount +N: the reservation is given back) on failure/cancel. Both are idempotent.

Every function runs inside the caller's transaction (``with Session.begin() as session``);
nothing here commits. Amounts are ``Decimal`` credits with 6 decimals; ints, strs and floats
are accepted and rounded half-even to 6 decimals.

Concurrency: ``reserve``, ``capture`` and ``release`` lock the organization row
(``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite the session's ``BEGIN IMMEDIATE``
transaction already holds the database write lock), so concurrent reservations never
overdraw and a job is settled once. Use sessions from ``stableserve.db.session_factory``.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import BigInteger, ColumnElement, cast, func, literal_column, select
from sqlalchemy.orm import Session

from stableserve.db.base import to_credits
from stableserve.db.models import LedgerEntry, Organization
from stableserve.errors import InsufficientCredits, InvalidRequest, NotFound

_ZERO = to_credits(0)
_MICRO = 1_000_000


def _amount(value: Decimal | int | float | str, what: str = "amount") -> Decimal:
    try:
        return to_credits(value)
    except ValueError:
        raise InvalidRequest(f"{what}: not a number: {value!r}", param=what) from None


def _sum_amounts(session: Session, *where: ColumnElement[bool]) -> Decimal:
    """Exact sum of ``amount`` over the rows matching ``where`` (0 when none)."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite stores floats: add integer micro-credits, which is exact.
        micro = cast(func.round(LedgerEntry.amount * literal_column(str(_MICRO))), BigInteger)
        total = session.execute(select(func.sum(micro)).where(*where)).scalar()
        return to_credits(Decimal(int(total or 0)) / _MICRO)
    total = session.execute(select(func.sum(LedgerEntry.amount)).where(*where)).scalar()
    return _ZERO if total is None else to_credits(total)


def _lock_org(session: Session, org_id: str) -> None:
    stmt = select(Organization.id).where(Organization.id == org_id).with_for_update()
    if session.execute(stmt).scalar_one_or_none() is None:
        raise NotFound(f"organization {org_id} not found")


def balance(session: Session, org_id: str) -> Decimal:
    """Credits available to ``org_id`` now: the sum of its ledger amounts (grants minus open
    and captured reservations). ``Decimal`` with 6 decimals; 0 for an unknown organization."""
    return _sum_amounts(session, LedgerEntry.org_id == org_id)


def grant(session: Session, org_id: str, amount: Decimal | int | float | str, note: str = "") -> LedgerEntry:
    """Add ``amount`` (> 0) credits to ``org_id``; returns the new entry (flushed).

    Raises ``InvalidRequest`` for a non-positive or non-numeric amount, ``NotFound`` for an
    unknown organization.
    """
    value = _amount(amount)
    if value <= 0:
        raise InvalidRequest(f"amount: must be greater than 0, got {value}", param="amount")
    if session.get(Organization, org_id) is None:
        raise NotFound(f"organization {org_id} not found")
    entry = LedgerEntry(org_id=org_id, kind="grant", amount=value, note=note)
    session.add(entry)
    session.flush()
    return entry


def reserve(
    session: Session, org_id: str, amount: Decimal | int | float | str, job_id: str, note: str = ""
) -> LedgerEntry:
    """Hold ``amount`` (>= 0) credits of ``org_id`` for ``job_id``; returns the entry (flushed).

    Locks the organization, then checks the balance. Raises ``InsufficientCredits`` (with
    ``needed`` and ``balance``) when the balance is below ``amount``, ``InvalidRequest``
    (``code="conflict"``) when the job already has a reservation, ``InvalidRequest`` for a
    negative amount, ``NotFound`` for an unknown organization. Nothing is written on error,
    and the caller's transaction stays usable.
    """
    value = _amount(amount)
    if value < 0:
        raise InvalidRequest(f"amount: must not be negative, got {value}", param="amount")
    _lock_org(session, org_id)
    existing = session.execute(
        select(LedgerEntry.id).where(LedgerEntry.job_id == job_id, LedgerEntry.kind == "reserve")
    ).first()
    if existing is not None:
        raise InvalidRequest(f"job {job_id} already has a credit reservation", code="conflict")
    available = balance(session, org_id)
    if available < value:
        raise InsufficientCredits(
            f"Insufficient credits: this request costs {value.normalize():f} credits but the "
            f"organization's balance is {available.normalize():f} credits.",
            needed=float(value),
            balance=float(available),
        )
    entry = LedgerEntry(org_id=org_id, kind="reserve", amount=_ZERO - value, job_id=job_id, note=note)
    session.add(entry)
    session.flush()
    return entry


def _settle(session: Session, job_id: str, kind: str) -> bool:
    held = session.execute(
        select(LedgerEntry.org_id, LedgerEntry.amount).where(
            LedgerEntry.job_id == job_id, LedgerEntry.kind == "reserve"
        )
    ).first()
    if held is None:
        return False
    _lock_org(session, held.org_id)
    settled = session.execute(
        select(LedgerEntry.id).where(
            LedgerEntry.job_id == job_id, LedgerEntry.kind.in_(("capture", "release"))
        )
    ).first()
    if settled is not None:
        return False
    amount = _ZERO if kind == "capture" else _ZERO - held.amount
    session.add(LedgerEntry(org_id=held.org_id, kind=kind, amount=amount, job_id=job_id))
    session.flush()
    return True


def capture(session: Session, job_id: str) -> bool:
    """Make ``job_id``'s reservation final (the job is charged). Idempotent.

    Returns True when this call settled the job; False when it was already captured or
    released, or has no reservation. Of ``capture`` and ``release``, only the first ever
    takes effect for a job.
    """
    return _settle(session, job_id, "capture")


def release(session: Session, job_id: str) -> bool:
    """Give ``job_id``'s reserved credits back to its organization. Idempotent.

    Returns True when this call settled the job; False when it was already captured or
    released, or has no reservation.
    """
    return _settle(session, job_id, "release")


def summary(session: Session, org_id: str) -> dict[str, Decimal]:
    """Ledger totals of ``org_id``, all non-negative ``Decimal`` credits except ``balance``.

    Keys: ``granted`` (sum of grants), ``reserved`` (reservations still open: neither
    captured nor released), ``captured`` (charged), ``released`` (given back), ``balance``
    (= granted - reserved - captured).
    """
    owned = LedgerEntry.org_id == org_id
    granted = _sum_amounts(session, owned, LedgerEntry.kind == "grant")
    reserved_all = _ZERO - _sum_amounts(session, owned, LedgerEntry.kind == "reserve")
    released = _sum_amounts(session, owned, LedgerEntry.kind == "release")
    captured_jobs = select(LedgerEntry.job_id).where(owned, LedgerEntry.kind == "capture")
    captured = _ZERO - _sum_amounts(
        session, owned, LedgerEntry.kind == "reserve", LedgerEntry.job_id.in_(captured_jobs.scalar_subquery())
    )
    return {
        "granted": granted,
        "reserved": reserved_all - captured - released,
        "captured": captured,
        "released": released,
        "balance": balance(session, org_id),
    }
