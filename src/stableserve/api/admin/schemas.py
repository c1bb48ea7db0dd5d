"""Request and response bodies of the admin API (``/admin/v1``).

Credits are JSON numbers (rounded to 6 decimals when stored); times are ISO 8601 UTC. Request
bodies refuse unknown fields (400 ``bad_request``).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stableserve.api.admin.common import Email, Line, PlanId, Text

Credits = float
Role = Literal["OWNER", "MEMBER", "ACCOUNTANT"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- organizations -----------------------------------------------------------------------------
class Organization(BaseModel):
    """An organization (tenant). ``plan_id``: its plan, ``null`` for none."""

    id: str
    name: str
    description: str
    plan_id: str | None
    created_at: datetime


class Member(BaseModel):
    """A user's membership of an organization."""

    user_id: str
    email: str
    role: Role
    is_default: bool


class OrganizationDetail(Organization):
    """An organization with its balance (credits) and members."""

    balance: Credits
    members: list[Member]


class OrganizationCreate(_Request):
    """A new organization: unique ``name`` (1..100 chars); its owner is the user with
    ``owner_email`` (created when missing; default ``<name>@localhost``); optional initial
    ``credits`` and ``plan_id``."""

    name: Line = Field(min_length=1, max_length=100)
    description: Text = ""
    owner_email: Email | None = None
    credits: Credits = Field(default=0, ge=0, le=1e9, allow_inf_nan=False)
    plan_id: PlanId | None = None


class OrganizationUpdate(_Request):
    """Fields to change. ``plan_id``: a plan id, or ``null`` to take the organization off its
    plan; absent fields stay as they are."""

    description: Text | None = None
    plan_id: PlanId | None = None


# -- users and memberships ---------------------------------------------------------------------
class User(BaseModel):
    """A user (identified by a unique email)."""

    id: str
    email: str
    created_at: datetime


class UserMembership(BaseModel):
    """One organization a user belongs to."""

    org_id: str
    org_name: str
    role: Role
    is_default: bool


class UserDetail(User):
    """A user with its organizations."""

    organizations: list[UserMembership]


class UserCreate(_Request):
    """A new user."""

    email: Email


class MemberAdd(_Request):
    """Add (or change the role of) a member: ``user_id`` is a user id or email."""

    user_id: Line = Field(min_length=1, max_length=320)
    role: Role = "MEMBER"


# -- API keys -----------------------------------------------------------------------------------
class ApiKey(BaseModel):
    """An API key without its secret: ``prefix`` is how it starts (``sk-abcdefg...``)."""

    id: str
    org_id: str
    user_id: str
    prefix: str
    is_admin: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKey):
    """A new API key with its secret ``key``: shown only in this response."""

    key: str


class ApiKeyCreate(_Request):
    """A new key for ``user_id`` (id or email of a member; default: the organization's owner);
    ``is_admin`` makes it an admin key."""

    user_id: Line | None = Field(default=None, min_length=1, max_length=320)
    is_admin: bool = False


# -- credits ------------------------------------------------------------------------------------
class CreditGrant(_Request):
    """Credits to add (> 0, at most 1e9) with a note for the ledger."""

    amount: Credits = Field(gt=0, le=1e9, allow_inf_nan=False)
    note: Text = Field(default="", max_length=1000)


class Granted(BaseModel):
    """A grant's ledger entry and the balance after it."""

    entry_id: int
    org_id: str
    amount: Credits
    note: str
    created_at: datetime
    balance: Credits


class Balance(BaseModel):
    """An organization's ledger totals: ``balance`` = granted - reserved - captured."""

    org_id: str
    balance: Credits
    granted: Credits
    reserved: Credits
    captured: Credits
    released: Credits


# -- plans --------------------------------------------------------------------------------------
class Plan(BaseModel):
    """A plan: ``monthly_credits`` granted once per UTC month to each organization on it, and
    its keys' rate limit (``rate_limit_requests`` per ``rate_limit_window_s`` seconds) and its
    ``weight`` in the fair order of queued jobs across organizations."""

    id: str
    name: str
    description: str
    monthly_credits: Credits
    rate_limit_requests: int
    rate_limit_window_s: int
    weight: int = Field(description="Share of the job dispatcher's turns across organizations (1..100).")
    created_at: datetime


class PlanCreate(_Request):
    """A new plan."""

    id: PlanId
    name: Line = Field(min_length=1, max_length=100)
    description: Text = ""
    monthly_credits: Credits = Field(ge=0, le=1e9, allow_inf_nan=False)
    rate_limit_requests: int = Field(ge=1, le=1_000_000)
    rate_limit_window_s: int = Field(ge=1, le=86_400)
    weight: int = Field(default=1, ge=1, le=100)


class PlanUpdate(_Request):
    """Fields to change (absent or ``null``: unchanged)."""

    name: Line | None = Field(default=None, min_length=1, max_length=100)
    description: Text | None = None
    monthly_credits: Credits | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)
    rate_limit_requests: int | None = Field(default=None, ge=1, le=1_000_000)
    rate_limit_window_s: int | None = Field(default=None, ge=1, le=86_400)
    weight: int | None = Field(default=None, ge=1, le=100)


class GrantsApplied(BaseModel):
    """How many monthly grants were applied for ``period`` (``YYYY-MM``, UTC)."""

    period: str
    applied: int


# -- usage --------------------------------------------------------------------------------------
class UsageRow(BaseModel):
    """One organization's use of one engine on one UTC day."""

    org_id: str
    engine_id: str
    day: date
    jobs: int
    succeeded: int
    failed: int
    cancelled: int
    images: int
    credits: Credits


class UsageReport(BaseModel):
    """Usage rows for ``from``..``to`` (inclusive UTC days; ``null``: unbounded)."""

    model_config = ConfigDict(populate_by_name=True)

    org_id: str | None
    from_: date | None = Field(alias="from")
    to: date | None
    rows: list[UsageRow]
