"""The tables (SQLAlchemy 2 typed ORM). ``migrations/versions/`` creates them (0001_initial,
0002_job_results, 0003_plans_admin, 0004_idempotency).

Ids are strings with a readable prefix: ``org-`` + 24 hex, ``user-`` + 24 hex, ``key-`` + 16
hex; job ids are 64 lowercase hex chars. Times are aware UTC datetimes; credit amounts are
``Decimal`` with 6 decimals (``Numeric(18, 6)``).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from stableserve.db.base import Base, Credits, UTCDateTime, utcnow

#: Membership roles (Stability's ``OrganizationMembership.role``).
ROLES = ("OWNER", "MEMBER", "ACCOUNTANT")
#: Ledger entry kinds and the sign of their amount: grant +N, reserve -N, capture 0, release +N.
LEDGER_KINDS = ("grant", "reserve", "capture", "release")
#: Job states.
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def new_org_id() -> str:
    """``org-`` + 24 lowercase hex chars."""
    return "org-" + secrets.token_hex(12)


def new_user_id() -> str:
    """``user-`` + 24 lowercase hex chars."""
    return "user-" + secrets.token_hex(12)


def new_key_id() -> str:
    """``key-`` + 16 lowercase hex chars."""
    return "key-" + secrets.token_hex(8)


def new_job_id() -> str:
    """64 lowercase hex chars (``secrets.token_hex(32)``)."""
    return secrets.token_hex(32)


class Plan(Base):
    """A plan in the shape of Stability's published tiers (0003_plans_admin seeds ``free``,
    ``creator``, ``pro``, ``enterprise``; operators edit them). ``id`` is a slug (``[a-z0-9-]``,
    1..32 chars). ``monthly_credits`` are granted to each organization on the plan once per
    calendar month (UTC); its API keys may make ``rate_limit_requests`` requests per
    ``rate_limit_window_s`` seconds. ``weight`` (1..100, 0007): the plan's share in the
    dispatcher's fair order across organizations (``jobs.leases.fair_order``)."""

    __tablename__ = "plans"
    __table_args__ = (
        CheckConstraint("monthly_credits >= 0", name="monthly_credits"),
        CheckConstraint("rate_limit_requests > 0", name="rate_limit_requests"),
        CheckConstraint("rate_limit_window_s > 0", name="rate_limit_window_s"),
        CheckConstraint("weight >= 1 AND weight <= 100", name="weight"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    monthly_credits: Mapped[Decimal] = mapped_column(Credits)
    rate_limit_requests: Mapped[int] = mapped_column(Integer)
    rate_limit_window_s: Mapped[int] = mapped_column(Integer)
    weight: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"Plan(id={self.id!r}, monthly_credits={self.monthly_credits})"


class Organization(Base):
    """A tenant: owns API keys, a credits ledger and jobs. ``name`` is unique, 1..100 chars.
    ``plan_id``: its ``Plan`` (None: no monthly grant, the server's default rate limit)."""

    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_org_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    plan_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("plans.id"))

    def __repr__(self) -> str:
        return f"Organization(id={self.id!r}, name={self.name!r})"


class User(Base):
    """A person (or service) identified by a unique email; belongs to organizations."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_user_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"User(id={self.id!r}, email={self.email!r})"


class Membership(Base):
    """A user's role in an organization (``OWNER``/``MEMBER``/``ACCOUNTANT``).

    ``is_default``: the organization a user's requests act for when nothing else says.
    """

    __tablename__ = "memberships"
    __table_args__ = (CheckConstraint("role IN ('OWNER', 'MEMBER', 'ACCOUNTANT')", name="role"),)

    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id"), primary_key=True)
    org_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("organizations.id"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    is_default: Mapped[bool] = mapped_column(default=False)

    def __repr__(self) -> str:
        return f"Membership(user_id={self.user_id!r}, org_id={self.org_id!r}, role={self.role!r})"


class ApiKey(Base):
    """An API key. Only ``secret_hash`` (hex HMAC-SHA256 of the full ``sk-...`` secret keyed
    with the server secret) is stored; ``prefix`` is the 7 chars after ``sk-``, for display
    and lookup. ``org_id`` is the organization the key was created for (its default).
    ``is_admin``: the key may also call the admin API (``/admin/v1``)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_key_id)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id"))
    org_id: Mapped[str] = mapped_column(String(32), ForeignKey("organizations.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!r}, org_id={self.org_id!r}, prefix={self.prefix!r})"


class LedgerEntry(Base):
    """One credits movement of an organization (append-only).

    ``amount`` is signed: grant +N, reserve -N, capture 0 (makes the reserve final), release
    +N (gives the reserve back). The balance is the sum of amounts. UNIQUE(job_id, kind): a job
    has at most one reserve, one capture and one release (grants have no job).
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("job_id", "kind"),
        CheckConstraint("kind IN ('grant', 'reserve', 'capture', 'release')", name="kind"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    org_id: Mapped[str] = mapped_column(String(32), ForeignKey("organizations.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(Credits)
    job_id: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"LedgerEntry(id={self.id}, kind={self.kind!r}, amount={self.amount}, job_id={self.job_id!r})"


class PlanGrant(Base):
    """A plan's monthly grant applied to an organization: at most one per (``org_id``,
    ``period``), ``period`` the UTC month ``YYYY-MM``. ``ledger_entry_id`` is the grant's
    ``LedgerEntry``; ``amount`` in credits."""

    __tablename__ = "plan_grants"

    org_id: Mapped[str] = mapped_column(String(32), ForeignKey("organizations.id"), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    plan_id: Mapped[str] = mapped_column(String(32), ForeignKey("plans.id"))
    amount: Mapped[Decimal] = mapped_column(Credits)
    ledger_entry_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("ledger_entries.id")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"PlanGrant(org_id={self.org_id!r}, period={self.period!r}, amount={self.amount})"


class Job(Base):
    """A generation job (the jobs package owns its state machine; this is only the row).

    ``state``: one of ``JOB_STATES``; ``request_json``: the ``GenerationRequest`` as JSON;
    ``price``: credits reserved for it; ``attempt``: leases taken so far (each execution
    takes one; it is also the fencing token: only the holder of the current attempt may
    finish the job). ``store_result``: the job's artifacts go to the ``ArtifactStore`` when it
    succeeds (an asynchronous job, fetched later by id); ``expires_at``: when that stored
    result expires, set only on a succeeded ``store_result`` job and cleared (NULL) once it is
    purged. Leases (0006_leases, ``jobs.leases``): ``origin`` is the server process that
    accepted the job (``host:pid:random``); ``lease_owner`` the process holding it (running it,
    or, for a queued synchronous job, its origin, where the caller waits; NULL for a queued
    asynchronous job, free for any process); ``lease_expires_at`` when that hold ends unless
    renewed; ``heartbeat_at`` its last renewal. ``cancel_requested`` (0007): a cancel asked
    for through any process, acted on by the holder at its next lease renewal; ``progress``
    (0..1): the running attempt's progress, written by its holder about once a second.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_created_at", "state", "created_at"),
        Index("ix_jobs_org_id_created_at", "org_id", "created_at"),
        Index("ix_jobs_expires_at", "expires_at"),
        Index("ix_jobs_state_lease_expires_at", "state", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_job_id)
    org_id: Mapped[str] = mapped_column(String(32), ForeignKey("organizations.id"))
    key_id: Mapped[str | None] = mapped_column(String(32))
    engine_id: Mapped[str] = mapped_column(String(128))
    task: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    request_json: Mapped[str] = mapped_column(Text)
    price: Mapped[Decimal] = mapped_column(Credits)
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    store_result: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    origin: Mapped[str | None] = mapped_column(String(128))
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    progress: Mapped[float | None] = mapped_column(Float)

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, state={self.state!r}, engine_id={self.engine_id!r})"


#: States of an idempotency key: its first request is ``running``, or ``done`` (response stored).
IDEMPOTENCY_STATES = ("running", "done")


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key`` and the response it got (``api.idempotency``).

    ``scope_hash``: hex HMAC-SHA256 of the caller (API key + ``Organization`` header; never the
    key itself); ``fingerprint``: hex SHA-256 of the request (method, path, query, content
    type, Accept, body). ``state`` ``running`` (``expires_at`` is then the end of the running
    request's lease) or ``done`` (``status_code``, ``response_headers`` as a JSON list of
    ``[name, value]`` pairs and ``response_body`` hold the stored response, replayed until
    ``expires_at``; a NULL body means the response was too large to keep).
    UNIQUE(scope_hash, idempotency_key) decides which of two simultaneous requests runs.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("scope_hash", "idempotency_key"),
        CheckConstraint("state IN ('running', 'done')", name="state"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    scope_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[str | None] = mapped_column(Text)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"IdempotencyKey(id={self.id}, state={self.state!r}, status_code={self.status_code})"


class OrgModeration(Base):
    """An organization's content moderation settings over the server-wide defaults
    (``accounts.moderation``, ``core.moderation``).

    ``mode``: ``block`` | ``filter`` | ``off``, or NULL for the server's default mode;
    ``words`` / ``patterns``: JSON arrays of strings, added to the server's lists.
    """

    __tablename__ = "org_moderation"
    __table_args__ = (CheckConstraint("mode IN ('block', 'filter', 'off')", name="mode"),)

    org_id: Mapped[str] = mapped_column(String(32), ForeignKey("organizations.id"), primary_key=True)
    mode: Mapped[str | None] = mapped_column(String(8))
    words: Mapped[str] = mapped_column(Text, default="[]")
    patterns: Mapped[str] = mapped_column(Text, default="[]")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"OrgModeration(org_id={self.org_id!r}, mode={self.mode!r})"
