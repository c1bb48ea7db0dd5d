"""API keys: creation (the secret is shown once), keyed-hash storage, authentication.

A key is ``sk-`` + 48 URL-safe characters. The database keeps only ``prefix`` (the 7
characters after ``sk-``) and ``secret_hash`` = hex HMAC-SHA256(server secret, key). The
server secret is ``settings.secret_key`` or a random one generated once into
``<home>/secret.key``; changing it invalidates every key.

Functions take a ``Session`` and run in the caller's transaction unless stated otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from stableserve.db.base import utcnow
from stableserve.db.models import ApiKey, Membership, Organization, User
from stableserve.errors import InvalidRequest, NotFound, PermissionDenied, Unauthorized
from stableserve.settings import Settings

KEY_PREFIX = "sk-"
#: ``last_used_at`` is written at most this often per key.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_SECRET_FILE = "secret.key"


@dataclass(frozen=True)
class AuthContext:
    """Who is calling: the key, its user and the organization the key was created for.
    ``is_admin``: the key may call the admin API."""

    key_id: str
    user_id: str
    user_email: str
    org_id: str
    is_admin: bool = False


def server_secret(settings: Settings) -> bytes:
    """The HMAC key for API-key hashes: ``settings.secret_key`` (UTF-8) if set, else the
    contents of ``<home>/secret.key``, created on first use (64 hex chars, mode 0600).

    Safe against concurrent first use by several processes (the file is created atomically).
    Raises ``OSError`` when the home directory is not writable.
    """
    if settings.secret_key:
        return settings.secret_key.encode()
    path = Path(settings.home) / _SECRET_FILE
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{_SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):  # another process won the race
            os.link(tmp, path)  # atomic: never a half-written secret file
    finally:
        tmp.unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    data = path.read_bytes().strip()
    if not data:
        raise OSError(f"{path} is empty; delete it or set STABLESERVE_SECRET_KEY")
    return data


def hash_key(raw: str, secret: bytes) -> str:
    """Hex HMAC-SHA256 of the full key string ``raw`` (``sk-...``) keyed with ``secret``."""
    return hmac.new(secret, raw.encode(), hashlib.sha256).hexdigest()


def org_owner(session: Session, org: Organization) -> User:
    """The organization's first OWNER (oldest membership); ``NotFound`` when it has none."""
    user = session.execute(
        select(User)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.org_id == org.id, Membership.role == "OWNER")
        .order_by(User.created_at, User.id)
        .limit(1)
    ).scalar_one_or_none()
    if user is None:
        raise NotFound(f"organization {org.name} has no owner")
    return user


def create_key(
    session: Session, org: Organization, secret: bytes, *, user: User | None = None, is_admin: bool = False
) -> tuple[ApiKey, str]:
    """Create an API key for ``user`` (default: ``org``'s owner) in ``org``; returns ``(row, key)``.

    ``key`` (``sk-`` + 48 URL-safe chars) exists only in this return value: show it once.
    ``secret`` is ``server_secret(settings)``; ``is_admin`` makes an admin key (it may also
    call ``/admin/v1``). Raises ``NotFound`` when the org has no owner, ``InvalidRequest``
    when ``user`` is not a member of ``org``.
    """
    if user is None:
        user = org_owner(session, org)
    elif session.get(Membership, (user.id, org.id)) is None:
        raise InvalidRequest(f"user {user.id} is not a member of organization {org.id}", param="user_id")
    raw = KEY_PREFIX + secrets.token_urlsafe(36)
    row = ApiKey(
        user_id=user.id,
        org_id=org.id,
        prefix=raw[len(KEY_PREFIX) : len(KEY_PREFIX) + 7],
        secret_hash=hash_key(raw, secret),
        is_admin=is_admin,
    )
    session.add(row)
    session.flush()
    return row, raw


def list_keys(session: Session, org: Organization) -> list[ApiKey]:
    """Every key created for ``org``, revoked ones included, oldest first."""
    return list(
        session.execute(
            select(ApiKey).where(ApiKey.org_id == org.id).order_by(ApiKey.created_at, ApiKey.id)
        ).scalars()
    )


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke ``key_id`` (it stops authenticating at once); idempotent (keeps the first
    ``revoked_at``). Raises ``NotFound`` for an unknown key id."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def parse_authorization(value: str | None) -> str:
    """The key in an ``Authorization`` header value: ``Bearer <key>`` (scheme
    case-insensitive) or the bare key, surrounding whitespace ignored. ``""`` when missing."""
    text = (value or "").strip()
    scheme, _, rest = text.partition(" ")
    if rest and scheme.lower() == "bearer":
        text = rest.strip()
    return text


def authenticate(session: Session, raw: str | None, secret: bytes) -> AuthContext:
    """Check an API key and return who it acts for.

    ``raw`` is the key or a whole ``Authorization`` value (``Bearer <key>`` or bare).
    Raises ``Unauthorized`` for a missing, unknown or revoked key. Updates the key's
    ``last_used_at`` when it is older than a minute (so the caller should commit).
    """
    key = parse_authorization(raw)
    if not key:
        raise Unauthorized("missing authorization header")
    digest = hash_key(key, secret)
    prefix = key[len(KEY_PREFIX) : len(KEY_PREFIX) + 7] if key.startswith(KEY_PREFIX) else None
    match: ApiKey | None = None
    if prefix:
        for candidate in session.execute(select(ApiKey).where(ApiKey.prefix == prefix)).scalars():
            if hmac.compare_digest(candidate.secret_hash, digest):
                match = candidate
    if match is None or match.revoked_at is not None:
        raise Unauthorized(
            f"Incorrect API key provided: {key[:100]}. You can find your API key at https://stability.ai."
        )
    user = session.get(User, match.user_id)
    now = utcnow()
    if match.last_used_at is None or now - match.last_used_at >= LAST_USED_RESOLUTION:
        match.last_used_at = now
        session.flush()
    return AuthContext(
        key_id=match.id,
        user_id=match.user_id,
        user_email=user.email,
        org_id=match.org_id,
        is_admin=bool(match.is_admin),
    )


def resolve_org(session: Session, auth: AuthContext, org_header: str | None) -> str:
    """The organization id a request acts for.

    No (or blank) ``Organization`` header, or the key's own org: ``auth.org_id``. Otherwise
    the header must be the id of an organization the key's user belongs to, else
    ``PermissionDenied("You do not have permission to access this resource")``.
    """
    wanted = (org_header or "").strip()
    if not wanted or wanted == auth.org_id:
        return auth.org_id
    member = session.get(Membership, (auth.user_id, wanted))
    if member is None:
        raise PermissionDenied("You do not have permission to access this resource")
    return wanted
