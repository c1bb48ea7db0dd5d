"""Run the Alembic migrations programmatically (no ``alembic.ini`` needed).

``upgrade(settings)`` brings the database at ``settings.db_url`` to the newest revision. It is
idempotent and cheap after the first call in a process (the result is remembered per URL),
and safe to run from several processes at once: on SQLite the ``BEGIN IMMEDIATE``
transaction serializes it, on PostgreSQL a transaction-level advisory lock does.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from stableserve.db.session import make_engine
from stableserve.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: pg_advisory_xact_lock key taken while migrating (an arbitrary constant: "stbl" in ASCII).
_PG_LOCK_KEY = 0x7374626C

_lock = threading.Lock()
_upgraded: set[str] = set()


def alembic_config(settings: Settings | None = None) -> Config:
    """An Alembic ``Config`` built in code: ``script_location`` is the packaged migrations
    folder, ``sqlalchemy.url`` is ``settings.db_url`` when given (for ``alembic`` commands)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if settings is not None:
        cfg.set_main_option("sqlalchemy.url", settings.db_url.replace("%", "%%"))
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest revision id shipped with this package (e.g. ``"0001"``)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(settings: Settings) -> str | None:
    """The revision the database is at, or ``None`` for an empty (unmigrated) database."""
    with make_engine(settings).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(settings: Settings, revision: str = "head") -> str | None:
    """Migrate the database at ``settings.db_url`` to ``revision`` (default: the head).

    Creates the SQLite file (and its directory) when missing. Returns the revision the
    database is at afterwards. Database errors propagate as ``sqlalchemy.exc.SQLAlchemyError``.
    """
    url = settings.db_url
    if revision == "head" and url in _upgraded:
        return head_revision()
    with _lock:
        engine = make_engine(settings)
        cfg = alembic_config(settings)
        with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE -> migrations serialize
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            now = MigrationContext.configure(conn).get_current_revision()
        if revision == "head":
            _upgraded.add(url)
        return now
