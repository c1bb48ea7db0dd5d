"""Engines and session factories, one per database URL (cached for the process).

SQLite (the default, ``<home>/stableserve.db``): the parent directory is created, the file
runs in WAL mode with a 30 s busy timeout and foreign keys on, and every transaction starts
with ``BEGIN IMMEDIATE`` (SQLAlchemy's documented pysqlite recipe). A transaction therefore
holds the database's write lock from its first statement until commit/rollback, so
read-then-write ledger transactions (balance check + reserve) serialize across threads and
processes, and concurrent writers wait (up to 30 s) instead of failing with "database is
locked". Keep transactions short.

PostgreSQL (``postgresql+psycopg://...``): a pooled engine with ``pool_pre_ping``; default
READ COMMITTED isolation; the ledger takes row locks (``SELECT ... FOR UPDATE``) itself.

Sessions from ``session_factory`` use ``expire_on_commit=False``: ORM objects stay readable
after the transaction that loaded them commits.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from stableserve.settings import Settings

#: SQLite busy timeout: how long a transaction waits for the write lock, in seconds.
SQLITE_BUSY_TIMEOUT_S = 30

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        pool_size=8,
        max_overflow=16,
        pool_timeout=60,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy (the "begin" hook below) own transaction boundaries.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_engine(settings: Settings) -> Engine:
    """The engine for ``settings.db_url``, created on first use and cached per URL.

    SQLite: WAL, busy timeout 30 s, foreign keys, ``BEGIN IMMEDIATE`` transactions.
    PostgreSQL (and anything else): ``pool_pre_ping=True``. Thread-safe.
    """
    url = settings.db_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if make_url(url).get_backend_name() == "sqlite":
                engine = _sqlite_engine(url)
            else:
                engine = create_engine(url, pool_pre_ping=True)
            _engines[url] = engine
        return engine


def session_factory(settings: Settings) -> sessionmaker[Session]:
    """A ``sessionmaker`` bound to ``make_engine(settings)``, cached per URL.

    Use one short transaction per unit of work::

        Session = session_factory(settings)
        with Session.begin() as session:   # commits on success, rolls back on error
            ...
    """
    url = settings.db_url
    with _lock:
        factory = _factories.get(url)
    if factory is None:
        engine = make_engine(settings)
        with _lock:
            factory = _factories.setdefault(url, sessionmaker(bind=engine, expire_on_commit=False))
    return factory


def dispose(settings: Settings | None = None) -> None:
    """Close pooled connections and forget the cached engine for ``settings.db_url``.

    ``None`` disposes every cached engine (tests, process shutdown). A later
    ``make_engine``/``session_factory`` call creates a fresh engine.
    """
    with _lock:
        urls = list(_engines) if settings is None else [settings.db_url]
        engines = [_engines.pop(u) for u in urls if u in _engines]
        for u in urls:
            _factories.pop(u, None)
    for engine in engines:
        engine.dispose()
