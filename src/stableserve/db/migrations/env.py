"""Alembic environment: runs on the connection ``stableserve.db.migrate.upgrade`` passes in.

``config.attributes["connection"]`` (an open SQLAlchemy connection, inside a transaction) is
the normal route; ``sqlalchemy.url`` in the config is the fallback for the ``alembic`` command
line. Offline (``--sql``) mode renders SQL for that URL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

import stableserve.db.models  # noqa: F401  (registers the tables on Base.metadata)
from stableserve.db.base import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True, render_as_batch=True, **kwargs)


def run_offline() -> None:
    """Render the migrations as SQL for ``sqlalchemy.url``."""
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations on the given connection (or one opened from ``sqlalchemy.url``)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
