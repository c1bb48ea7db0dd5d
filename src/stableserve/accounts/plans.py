"""Plans and their monthly credit grants.

A ``Plan`` has the shape of Stability's published tiers: ``monthly_credits`` granted to each
organization on it once per calendar month (UTC) and a rate limit (``rate_limit_requests``
per ``rate_limit_window_s`` seconds) for the organization's API keys. Migration 0003 seeds
``free`` (25 credits a month), ``creator``, ``pro`` and ``enterprise``; those numbers are
defaults an operator edits (``update_plan``, ``PATCH /admin/v1/plans/{id}``).

An organization without a plan (``plan_id`` NULL) gets no monthly grant and the server's
``settings.rate_limit``. ``apply_monthly_grants`` grants what is due for the month of ``now``:
each organization on a plan with ``monthly_credits`` > 0 gets at most one grant per month
(``plan_grants``' primary key (org_id, period)), so running it again, from any number of
processes, grants nothing twice. Grants add to the balance; unused credits do not expire. An
organization that joins or changes plan mid-month gets the plan's grant for that month at the
next run if it had none yet that month. ``GrantScheduler`` runs it in the server.

Functions take a ``Session`` and run in the caller's transaction (nothing here commits).
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from stableserve.accounts import ledger
from stableserve.db.base import utcnow
from stableserve.db.models import Organization, Plan, PlanGrant
from stableserve.errors import InvalidRequest, NotFound
from stableserve.settings import Settings

log = logging.getLogger("stableserve.plans")

PLAN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
#: Bounds of a plan's numbers (credits per month, requests per window, window seconds).
MAX_MONTHLY_CREDITS = Decimal(1_000_000_000)
MAX_REQUESTS = 1_000_000
MAX_WINDOW_S = 86_400
MAX_WEIGHT = 100
_FIELDS = ("name", "description", "monthly_credits", "rate_limit_requests", "rate_limit_window_s", "weight")
_LIMITS = {"rate_limit_requests": MAX_REQUESTS, "rate_limit_window_s": MAX_WINDOW_S, "weight": MAX_WEIGHT}


def list_plans(session: Session) -> list[Plan]:
    """Every plan, by monthly credits then id."""
    return list(session.execute(select(Plan).order_by(Plan.monthly_credits, Plan.id)).scalars())


def get_plan(session: Session, plan_id: str) -> Plan:
    """The plan ``plan_id``. Raises ``NotFound``."""
    plan = session.get(Plan, plan_id) if isinstance(plan_id, str) and PLAN_ID.match(plan_id) else None
    if plan is None:
        raise NotFound(f"plan {plan_id} not found", param="plan_id")
    return plan


def _check(field: str, value: object) -> object:
    """``value`` checked (and normalized) for plan field ``field``; ``InvalidRequest`` if bad."""
    if field == "name":
        text = str(value).strip()
        if not 1 <= len(text) <= 100:
            raise InvalidRequest("name: must be 1 to 100 characters", param="name")
        return text
    if field == "description":
        return str(value)
    if field == "monthly_credits":
        amount = ledger._amount(value, "monthly_credits")  # type: ignore[arg-type]
        if not 0 <= amount <= MAX_MONTHLY_CREDITS:
            raise InvalidRequest(
                f"monthly_credits: must be 0 to {MAX_MONTHLY_CREDITS}", param="monthly_credits"
            )
        return amount
    top = _LIMITS[field]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise InvalidRequest(f"{field}: must be an integer from 1 to {top}", param=field)
    return value


def create_plan(
    session: Session,
    plan_id: str,
    *,
    name: str,
    monthly_credits: Decimal | int | float | str,
    rate_limit_requests: int,
    rate_limit_window_s: int,
    description: str = "",
    weight: int = 1,
) -> Plan:
    """Create plan ``plan_id`` (a slug: lowercase letters, digits and ``-``, 1..32 chars).

    ``monthly_credits`` 0..1e9; ``rate_limit_requests`` 1..1e6 per ``rate_limit_window_s``
    1..86400 seconds; ``weight`` 1..100, the plan's share when the dispatcher takes turns
    across organizations with queued jobs (``jobs.leases.FairShare``). Raises
    ``InvalidRequest`` for a bad value or (``code="conflict"``) an existing id.
    """
    if not isinstance(plan_id, str) or not PLAN_ID.match(plan_id):
        raise InvalidRequest("id: must be 1 to 32 lowercase letters, digits or '-'", param="id")
    if session.get(Plan, plan_id) is not None:
        raise InvalidRequest(f"a plan with id {plan_id!r} already exists", code="conflict", param="id")
    values = {
        "name": name,
        "description": description,
        "monthly_credits": monthly_credits,
        "rate_limit_requests": rate_limit_requests,
        "rate_limit_window_s": rate_limit_window_s,
        "weight": weight,
    }
    plan = Plan(id=plan_id, **{k: _check(k, v) for k, v in values.items()})
    session.add(plan)
    session.flush()
    return plan


def update_plan(session: Session, plan_id: str, **changes: object) -> Plan:
    """Change plan ``plan_id``'s ``name``, ``description``, ``monthly_credits``,
    ``rate_limit_requests``, ``rate_limit_window_s`` or ``weight`` (others are refused; ``None`` values
    are ignored). New limits apply to the next request; a new ``monthly_credits`` to the next
    month's grants. Raises ``NotFound``, ``InvalidRequest``."""
    plan = get_plan(session, plan_id)
    for field, value in changes.items():
        if field not in _FIELDS:
            raise InvalidRequest(f"{field}: not a plan field", param=field)
        if value is not None:
            setattr(plan, field, _check(field, value))
    session.flush()
    return plan


def set_org_plan(session: Session, org_id: str, plan_id: str | None) -> Organization:
    """Put organization ``org_id`` on plan ``plan_id`` (``None``: no plan). Raises
    ``NotFound`` for an unknown organization or plan."""
    org = session.get(Organization, org_id)
    if org is None:
        raise NotFound(f"organization {org_id} not found", param="org_id")
    org.plan_id = None if plan_id is None else get_plan(session, plan_id).id
    session.flush()
    return org


def rate_limit_for(session: Session, org_id: str) -> tuple[int, int] | None:
    """``(requests, window_s)`` of ``org_id``'s plan, or ``None`` (no plan: the server's
    default). One indexed query."""
    row = session.execute(
        select(Plan.rate_limit_requests, Plan.rate_limit_window_s)
        .join(Organization, Organization.plan_id == Plan.id)
        .where(Organization.id == org_id)
    ).first()
    return None if row is None else (int(row[0]), int(row[1]))


def period_of(now: datetime) -> str:
    """The grant period of ``now`` (timezone-aware): its UTC month as ``YYYY-MM``.
    Raises ``ValueError`` for a naive datetime."""
    if now.tzinfo is None:
        raise ValueError("naive datetime: use timezone-aware UTC datetimes")
    return now.astimezone(UTC).strftime("%Y-%m")


def apply_monthly_grants(session: Session, now: datetime | None = None) -> int:
    """Grant every organization on a plan its ``monthly_credits`` for the month of ``now``
    (default: the current time; aware datetime) unless it already had that month's grant.
    Returns the number of grants applied (0 when nothing was due). Each grant is a ledger
    ``grant`` entry (note ``plan <id> monthly credits YYYY-MM``) plus a ``plan_grants`` row;
    a grant another process applied concurrently is skipped."""
    period = period_of(now or utcnow())
    done = exists().where(PlanGrant.org_id == Organization.id, PlanGrant.period == period)
    due = session.execute(
        select(Organization.id, Plan.id, Plan.monthly_credits)
        .join(Plan, Organization.plan_id == Plan.id)
        .where(Plan.monthly_credits > 0, ~done)
        .order_by(Organization.id)
    ).all()
    applied = 0
    for org_id, plan_id, amount in due:
        try:
            with session.begin_nested():
                entry = ledger.grant(session, org_id, amount, note=f"plan {plan_id} monthly credits {period}")
                session.add(
                    PlanGrant(
                        org_id=org_id, period=period, plan_id=plan_id, amount=amount, ledger_entry_id=entry.id
                    )
                )
                session.flush()
        except IntegrityError:  # applied by another process in the meantime
            continue
        applied += 1
    return applied


class GrantScheduler:
    """Applies due monthly grants at ``start`` and then every ``settings.plans.grant_interval_s``
    seconds on a daemon thread, one short transaction each (errors are logged, the thread goes
    on). ``start`` does nothing when ``settings.plans.grants_enabled`` is false."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]):
        self.settings = settings
        self._sessions = sessions
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: datetime | None = None) -> int:
        """Apply what is due now in one transaction; the number of grants applied. Blocking."""
        with self._sessions.begin() as session:
            applied = apply_monthly_grants(session, now)
        if applied:
            log.info("applied %d monthly plan grant(s)", applied)
        return applied

    def start(self) -> None:
        """Start the thread (idempotent while running)."""
        if not self.settings.plans.grants_enabled or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="stableserve-plan-grants", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, waiting at most ``timeout`` s for a run in progress; idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self) -> None:
        interval = self.settings.plans.grant_interval_s
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("applying monthly plan grants failed")
            if self._stop.wait(interval):
                return
