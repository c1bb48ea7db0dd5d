"""Cross-process cancel, stored progress and plan weights (issue 9).

Revision ID: 0007
Revises: 0006
Hand-written; matches ``stableserve.db.models`` and runs on SQLite and PostgreSQL.

- ``jobs.cancel_requested``: a cancel asked for through any server process; the process that
  holds the running job sees it when it renews its lease and stops the run.
- ``jobs.progress``: the fraction (0..1) of the running attempt done, written by its holder at
  most about once a second, so a poll reaching any process can show it.
- ``plans.weight``: the plan's share in the dispatcher's fair order (1 = one share; an
  organization on a weight-3 plan is served three times as often as one on a weight-1 plan
  while both have queued jobs). Existing plans get 1.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``jobs.cancel_requested``, ``jobs.progress`` and ``plans.weight``."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("progress", sa.Float(), nullable=True))
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("weight", sa.Integer(), nullable=False, server_default="1"))
        batch.create_check_constraint("weight", "weight >= 1 AND weight <= 100")


def downgrade() -> None:
    """Drop what ``upgrade`` added."""
    with op.batch_alter_table("plans") as batch:
        batch.drop_constraint("weight", type_="check")
        batch.drop_column("weight")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("progress")
        batch.drop_column("cancel_requested")
