"""Job leases (issue 9): ``jobs.origin``, ``lease_owner``, ``lease_expires_at``, ``heartbeat_at``.

Revision ID: 0006
Revises: 0005
Hand-written; matches ``stableserve.db.models.Job`` and runs on SQLite and PostgreSQL. All
four columns are nullable: rows of earlier versions read as jobs nobody holds (a queued one is
free for any process; an unfinished one held by nobody is failed by the first process that
starts, as before). ``ix_jobs_state_lease_expires_at`` serves the reaper's query (unfinished
jobs whose lease ran out).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the lease columns of ``jobs`` and ``ix_jobs_state_lease_expires_at``."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("origin", sa.String(128), nullable=True))
        batch.add_column(sa.Column("lease_owner", sa.String(128), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_state_lease_expires_at", "jobs", ["state", "lease_expires_at"])


def downgrade() -> None:
    """Drop what ``upgrade`` added (lease bookkeeping is lost; run no server meanwhile)."""
    op.drop_index("ix_jobs_state_lease_expires_at", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
        batch.drop_column("origin")
