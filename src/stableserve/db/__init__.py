"""Persistence: SQLAlchemy engine/session factories, ORM models and Alembic migrations.

- ``stableserve.db.session``: ``make_engine(settings)``, ``session_factory(settings)``
  (cached per database URL; SQLite in WAL mode with ``BEGIN IMMEDIATE`` transactions).
- ``stableserve.db.models``: the tables (organizations, users, memberships, api_keys,
  ledger_entries, jobs).
- ``stableserve.db.migrate``: ``upgrade(settings)`` runs the Alembic migrations to head.
"""

from stableserve.db.base import Base
from stableserve.db.session import make_engine, session_factory

__all__ = ["Base", "make_engine", "session_factory"]
