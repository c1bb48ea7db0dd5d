"""Organizations, users and memberships, plus the development account.

Functions take a ``Session`` and run in the caller's transaction (nothing here commits)
unless the docstring says otherwise.
"""

from __future__ import annotations

import re
import secrets
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stableserve.accounts import keys as _keys
from stableserve.accounts import ledger
from stableserve.accounts.keys import resolve_org as resolve_org  # also importable from here
from stableserve.db.models import ROLES, ApiKey, Membership, Organization, User
from stableserve.errors import InvalidRequest, NotFound
from stableserve.settings import Settings

#: Name of the development organization ``ensure_dev_account`` maintains.
DEV_ORG = "dev"
#: Credits granted to the development organization when it is created.
DEV_CREDITS = Decimal(1000)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "org"


def create_user(session: Session, email: str) -> User:
    """Create a user with a unique ``email`` (stored lower-cased, <= 320 chars).

    Raises ``InvalidRequest`` for an invalid email, ``InvalidRequest(code="conflict")`` when
    a user with that email exists.
    """
    email = email.strip().lower()
    if not _EMAIL.match(email) or len(email) > 320:
        raise InvalidRequest(f"email: not a valid email address: {email!r}", param="email")
    if session.execute(select(User.id).where(User.email == email)).first() is not None:
        raise InvalidRequest(f"a user with email {email} already exists", code="conflict", param="email")
    user = User(email=email)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, id_or_email: str) -> User:
    """The user with this id (``user-...``) or email. Raises ``NotFound``."""
    user = session.get(User, id_or_email)
    if user is None:
        user = session.execute(
            select(User).where(User.email == id_or_email.strip().lower())
        ).scalar_one_or_none()
    if user is None:
        raise NotFound(f"user {id_or_email} not found")
    return user


def create_org(
    session: Session,
    name: str,
    *,
    credits: Decimal | int | float | str = 0,
    email: str | None = None,
    description: str = "",
) -> Organization:
    """Create organization ``name`` (1..100 chars after stripping, unique) with an owner.

    The owner is the user with ``email`` (reused when it exists, else created); by default a
    new user ``<slug>@localhost`` (a random suffix is added if that address is taken). The
    owner's membership is ``OWNER`` and is its default org when it has no other. ``credits``
    > 0 are granted. Raises ``InvalidRequest`` (``code="conflict"`` for a duplicate name).
    """
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise InvalidRequest("name: must be 1 to 100 characters", param="name")
    if session.execute(select(Organization.id).where(Organization.name == name)).first() is not None:
        raise InvalidRequest(f"an organization named {name!r} already exists", code="conflict", param="name")
    amount = ledger._amount(credits, "credits")
    if amount < 0:
        raise InvalidRequest("credits: must not be negative", param="credits")
    if email is not None:
        try:
            owner = get_user(session, email)
        except NotFound:
            owner = create_user(session, email)
    else:
        address = f"{_slug(name)}@localhost"
        while session.execute(select(User.id).where(User.email == address)).first() is not None:
            address = f"{_slug(name)}-{secrets.token_hex(3)}@localhost"
        owner = create_user(session, address)
    org = Organization(name=name, description=description)
    try:
        with session.begin_nested():
            session.add(org)
            session.flush()
    except IntegrityError:  # a concurrent transaction took the name
        raise InvalidRequest(
            f"an organization named {name!r} already exists", code="conflict", param="name"
        ) from None
    add_member(session, org, owner, "OWNER")
    if amount > 0:
        ledger.grant(session, org.id, amount, note="initial credits")
    return org


def get_org(session: Session, name_or_id: str) -> Organization:
    """The organization with this id (``org-...``) or exact name. Raises ``NotFound``."""
    org = session.get(Organization, name_or_id)
    if org is None:
        org = session.execute(
            select(Organization).where(Organization.name == name_or_id.strip())
        ).scalar_one_or_none()
    if org is None:
        raise NotFound(f"organization {name_or_id} not found")
    return org


def list_orgs(session: Session) -> list[Organization]:
    """Every organization, by name."""
    return list(session.execute(select(Organization).order_by(Organization.name)).scalars())


def add_member(session: Session, org: Organization, user: User, role: str) -> Membership:
    """Make ``user`` a member of ``org`` with ``role`` (``OWNER``/``MEMBER``/``ACCOUNTANT``).

    Idempotent: an existing membership gets the new role. A user's first membership becomes
    its default (``is_default``). Raises ``InvalidRequest`` for an unknown role.
    """
    role = role.upper()
    if role not in ROLES:
        raise InvalidRequest(f"role: must be one of {', '.join(ROLES)}", param="role")
    member = session.get(Membership, (user.id, org.id))
    if member is None:
        has_default = session.execute(
            select(Membership.org_id).where(Membership.user_id == user.id, Membership.is_default)
        ).first()
        member = Membership(user_id=user.id, org_id=org.id, role=role, is_default=has_default is None)
        session.add(member)
    else:
        member.role = role
    session.flush()
    return member


def list_users(session: Session) -> list[User]:
    """Every user, by email."""
    return list(session.execute(select(User).order_by(User.email)).scalars())


def list_members(session: Session, org: Organization) -> list[tuple[User, Membership]]:
    """``org``'s members with their memberships, by email."""
    rows = session.execute(
        select(User, Membership)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.org_id == org.id)
        .order_by(User.email)
    ).all()
    return [(user, member) for user, member in rows]


def remove_member(session: Session, org: Organization, user: User) -> int:
    """Remove ``user`` from ``org`` and revoke the user's keys of ``org`` (they would otherwise
    keep acting for it). When it was the user's default organization, its other
    one (first by name) becomes the default. Returns the number of keys revoked.

    Raises ``NotFound`` when ``user`` is not a member, ``InvalidRequest(code="conflict")``
    when it is ``org``'s last ``OWNER``.
    """
    member = session.get(Membership, (user.id, org.id))
    if member is None:
        raise NotFound(f"user {user.id} is not a member of organization {org.id}", param="user_id")
    if member.role == "OWNER":
        owners = session.execute(
            select(Membership.user_id).where(Membership.org_id == org.id, Membership.role == "OWNER")
        ).all()
        if len(owners) <= 1:
            raise InvalidRequest(
                f"user {user.id} is the last owner of organization {org.id}", code="conflict", param="user_id"
            )
    revoked = 0
    for key in session.execute(
        select(ApiKey).where(ApiKey.org_id == org.id, ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
    ).scalars():
        _keys.revoke_key(session, key.id)
        revoked += 1
    was_default = member.is_default
    session.delete(member)
    session.flush()
    if was_default:
        other = session.execute(
            select(Membership)
            .join(Organization, Organization.id == Membership.org_id)
            .where(Membership.user_id == user.id)
            .order_by(Organization.name)
            .limit(1)
        ).scalar_one_or_none()
        if other is not None:
            other.is_default = True
            session.flush()
    return revoked


def user_orgs(session: Session, user_id: str) -> list[tuple[Organization, Membership]]:
    """The organizations ``user_id`` belongs to with its memberships, default first, then by
    name (``GET /v1/user/account``'s ``organizations``). Empty for an unknown user."""
    rows = session.execute(
        select(Organization, Membership)
        .join(Membership, Membership.org_id == Organization.id)
        .where(Membership.user_id == user_id)
        .order_by(Membership.is_default.desc(), Organization.name)
    ).all()
    return [(org, member) for org, member in rows]


def ensure_dev_account(settings: Settings) -> tuple[Organization, str | None]:
    """Make sure the development organization ``dev`` (created with 1000 credits) has an
    active API key. Migrates the database first and commits its own transaction.

    Returns ``(org, key)``: ``key`` is the new ``sk-...`` secret when one was just created
    (print it once), else ``None``. Safe to call from several processes at once.
    """
    from sqlalchemy.exc import IntegrityError as _Conflict

    from stableserve.db.migrate import upgrade
    from stableserve.db.session import session_factory

    upgrade(settings)
    secret = _keys.server_secret(settings)
    factory = session_factory(settings)
    for attempt in range(3):
        try:
            with factory.begin() as session:
                try:
                    org = get_org(session, DEV_ORG)
                except NotFound:
                    org = create_org(session, DEV_ORG, credits=DEV_CREDITS, description="development")
                ledger._lock_org(session, org.id)  # one key even when processes race
                active = session.execute(
                    select(ApiKey.id).where(ApiKey.org_id == org.id, ApiKey.revoked_at.is_(None))
                ).first()
                raw = None if active is not None else _keys.create_key(session, org, secret)[1]
            return org, raw
        except (_Conflict, InvalidRequest):  # PostgreSQL: another process created it first
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
