"""Organizations, users, API keys and migrations on SQLite and PostgreSQL.

Every test runs on a fresh migrated database, SQLite and PostgreSQL (``test_ledger``'s
``migrated_database``: PostgreSQL in its own schema, skipped when the server is unreachable).
"""

from __future__ import annotations

import re
import stat
from datetime import timedelta
from decimal import Decimal

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from stableserve.accounts import (
    add_member,
    authenticate,
    balance,
    create_key,
    create_org,
    create_user,
    ensure_dev_account,
    get_org,
    list_keys,
    resolve_org,
    revoke_key,
    server_secret,
    user_orgs,
)
from stableserve.db.base import Base
from stableserve.db.migrate import alembic_config, current_revision, head_revision, upgrade
from stableserve.db.models import ApiKey, Membership
from stableserve.db.session import dispose, make_engine, session_factory
from stableserve.errors import InvalidRequest, NotFound, PermissionDenied, Unauthorized
from stableserve.settings import Settings
from tests.unit.test_ledger import migrated_database

SECRET = b"test-secret"
TABLES = {"organizations", "users", "memberships", "api_keys", "ledger_entries", "jobs"}


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    """Settings on a fresh migrated database of each kind."""
    with migrated_database(request.param, tmp_path) as s:
        yield s


def _schema_diff(s: Settings) -> list:
    """Alembic's differences between the migrated database and ``Base.metadata`` ([] = none)."""
    with make_engine(s).connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def test_migrations_to_head_on_empty_database_match_the_models(settings):
    assert current_revision(settings) == head_revision()
    assert set(inspect(make_engine(settings)).get_table_names()) >= TABLES
    assert _schema_diff(settings) == []
    # Down to nothing, then up again from an empty database (the fixture migrated it once).
    cfg = alembic_config(settings)
    with make_engine(settings).begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert current_revision(settings) is None
    assert not TABLES & set(inspect(make_engine(settings)).get_table_names())
    dispose(settings)
    import stableserve.db.migrate as migrate

    migrate._upgraded.discard(settings.db_url)
    assert upgrade(settings) == head_revision()
    assert upgrade(settings) == head_revision()  # idempotent
    assert _schema_diff(settings) == []


def test_create_org_with_owner_and_credits(settings):
    with session_factory(settings).begin() as s:
        org = create_org(s, " Acme Corp ", credits=25)
        assert re.fullmatch(r"org-[0-9a-f]{24}", org.id) and org.name == "Acme Corp"
        assert org.created_at.tzinfo is not None
        assert balance(s, org.id) == Decimal(25)
        (found, member), *rest = [(o, m) for o, m in user_orgs(s, member_id(s, org.id))]
        assert rest == [] and found.id == org.id
        assert member.role == "OWNER" and member.is_default is True
        with pytest.raises(InvalidRequest) as info:
            create_org(s, "Acme Corp")
        assert info.value.code == "conflict"
        for bad in ("", "   ", "x" * 101):
            with pytest.raises(InvalidRequest):
                create_org(s, bad)
        # Same slug, different name: the default owner email gets a suffix.
        other = create_org(s, "acme-corp")
        assert get_org(s, "acme-corp").id == other.id and get_org(s, org.id).name == "Acme Corp"
        with pytest.raises(NotFound):
            get_org(s, "nope")
    with session_factory(settings).begin() as s:
        assert get_org(s, "Acme Corp").created_at.tzinfo is not None  # also after a round trip


def member_id(session, org_id: str) -> str:
    """The id of the (only) member of ``org_id``."""
    return session.execute(select(Membership.user_id).where(Membership.org_id == org_id)).scalar_one()


def test_keys_create_authenticate_revoke(settings):
    with session_factory(settings).begin() as s:
        org = create_org(s, "acme")
        row, raw = create_key(s, org, SECRET)
    assert re.fullmatch(r"sk-[A-Za-z0-9_-]{48}", raw)
    assert re.fullmatch(r"key-[0-9a-f]{16}", row.id) and row.prefix == raw[3:10]
    with session_factory(settings).begin() as s:
        stored = s.get(ApiKey, row.id)
        assert stored.secret_hash != raw and re.fullmatch(r"[0-9a-f]{64}", stored.secret_hash)
        assert raw not in (stored.id, stored.prefix, stored.secret_hash)
        for header in (raw, f"Bearer {raw}", f"bearer  {raw} ", f"  {raw}"):
            auth = authenticate(s, header, SECRET)
            assert auth.key_id == row.id and auth.org_id == org.id
            assert auth.user_email == "acme@localhost"
        for bad in ("", None, "Bearer ", raw[:-1] + ("A" if raw[-1] != "A" else "B"), "sk-unknown", "junk"):
            with pytest.raises(Unauthorized):
                authenticate(s, bad, SECRET)
        with pytest.raises(Unauthorized):
            authenticate(s, raw, b"another-server-secret")
        assert [k.id for k in list_keys(s, org)] == [row.id]
    with session_factory(settings).begin() as s:
        revoked = revoke_key(s, row.id)
        first = revoked.revoked_at
        assert first is not None and revoke_key(s, row.id).revoked_at == first
        with pytest.raises(NotFound):
            revoke_key(s, "key-0000000000000000")
    with session_factory(settings).begin() as s, pytest.raises(Unauthorized) as info:
        authenticate(s, raw, SECRET)
    assert info.value.code == "unauthorized"


def test_last_used_at_is_written_at_most_once_a_minute(settings):
    with session_factory(settings).begin() as s:
        row, raw = create_key(s, create_org(s, "acme"), SECRET)
        assert row.last_used_at is None
    with session_factory(settings).begin() as s:
        authenticate(s, raw, SECRET)
    with session_factory(settings).begin() as s:
        first = s.get(ApiKey, row.id).last_used_at
        assert first is not None
        authenticate(s, raw, SECRET)
    with session_factory(settings).begin() as s:
        key = s.get(ApiKey, row.id)
        assert key.last_used_at == first
        key.last_used_at = first - timedelta(minutes=2)
    with session_factory(settings).begin() as s:
        authenticate(s, raw, SECRET)
    with session_factory(settings).begin() as s:
        assert s.get(ApiKey, row.id).last_used_at > first - timedelta(seconds=1)


def test_organization_header_rules(settings):
    with session_factory(settings).begin() as s:
        home = create_org(s, "home")
        team = create_org(s, "team")
        stranger = create_org(s, "stranger")
        _, raw = create_key(s, home, SECRET)
        auth = authenticate(s, raw, SECRET)
        owner = s.get(ApiKey, auth.key_id).user_id
        from stableserve.db.models import User

        add_member(s, team, s.get(User, owner), "member")
        assert resolve_org(s, auth, None) == home.id
        assert resolve_org(s, auth, "") == home.id
        assert resolve_org(s, auth, home.id) == home.id
        assert resolve_org(s, auth, f" {team.id} ") == team.id
        for other in (stranger.id, "org-000000000000000000000000", "team"):
            with pytest.raises(PermissionDenied) as info:
                resolve_org(s, auth, other)
            assert info.value.message == "You do not have permission to access this resource"
            assert info.value.code == "permission_denied"
        orgs = user_orgs(s, owner)
        assert [(o.name, m.role, m.is_default) for o, m in orgs] == [
            ("home", "OWNER", True),
            ("team", "MEMBER", False),
        ]
        with pytest.raises(InvalidRequest):
            add_member(s, team, s.get(User, owner), "ADMIN")
        assert add_member(s, team, s.get(User, owner), "ACCOUNTANT").role == "ACCOUNTANT"


def test_users_and_explicit_owner_email(settings):
    with session_factory(settings).begin() as s:
        user = create_user(s, "Ada@Example.com")
        assert user.email == "ada@example.com" and re.fullmatch(r"user-[0-9a-f]{24}", user.id)
        with pytest.raises(InvalidRequest) as info:
            create_user(s, "ada@example.com")
        assert info.value.code == "conflict"
        with pytest.raises(InvalidRequest):
            create_user(s, "not an email")
        a = create_org(s, "a", email="ada@example.com")
        b = create_org(s, "b", email="ADA@example.com")
        assert [o.id for o, _ in user_orgs(s, user.id)] == [a.id, b.id]
        assert [m.is_default for _, m in user_orgs(s, user.id)] == [True, False]


def test_server_secret_file_is_generated_once(tmp_path):
    s = Settings(home=tmp_path / "home", secret_key=None)
    first = server_secret(s)
    path = tmp_path / "home" / "secret.key"
    assert len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert server_secret(s) == first
    assert list(path.parent.iterdir()) == [path]  # no temporary files left
    assert server_secret(Settings(home=tmp_path / "home", secret_key="explicit")) == b"explicit"


def test_ensure_dev_account(settings):
    org, raw = ensure_dev_account(settings)
    assert org.name == "dev" and raw and raw.startswith("sk-")
    again, none = ensure_dev_account(settings)
    assert again.id == org.id and none is None
    with session_factory(settings).begin() as s:
        assert balance(s, org.id) == 1000
        assert authenticate(s, raw, server_secret(settings)).org_id == org.id
        for key in list_keys(s, org):
            revoke_key(s, key.id)
    _, fresh = ensure_dev_account(settings)
    assert fresh and fresh != raw
    with session_factory(settings).begin() as s:
        assert balance(s, org.id) == 1000 and len(list_keys(s, org)) == 2
