"""Stored results of asynchronous jobs: ``jobs.store_result`` and ``jobs.expires_at``.

Revision ID: 0002
Revises: 0001
Hand-written; matches ``stableserve.db.models.Job`` and runs on SQLite and PostgreSQL.
``store_result`` (NOT NULL, server default false, so existing rows read as synchronous jobs);
``expires_at`` (nullable) with an index for the purge query.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``jobs.store_result``, ``jobs.expires_at`` and ``ix_jobs_expires_at``."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("store_result", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_expires_at", "jobs", ["expires_at"])


def downgrade() -> None:
    """Drop what ``upgrade`` added (stored-result bookkeeping is lost; the stored files stay)."""
    op.drop_index("ix_jobs_expires_at", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("store_result")
