"""Per-organization moderation policy (issue 8): the ``org_moderation`` table.

Revision ID: 0005
Revises: 0004
Hand-written; matches ``stableserve.db.models.OrgModeration`` and runs on SQLite and
PostgreSQL. One row per organization that overrides the server-wide moderation defaults:
``mode`` (NULL = the server's), ``words`` and ``patterns`` (JSON arrays of strings).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``org_moderation`` (primary key and foreign key ``org_id``, CHECK on ``mode``)."""
    op.create_table(
        "org_moderation",
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("mode", sa.String(8), nullable=True),
        sa.Column("words", sa.Text(), nullable=False),
        sa.Column("patterns", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("org_id", name="pk_org_moderation"),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name="fk_org_moderation_org_id_organizations"
        ),
        sa.CheckConstraint("mode IN ('block', 'filter', 'off')", name="ck_org_moderation_mode"),
    )


def downgrade() -> None:
    """Drop ``org_moderation`` (organizations fall back to the server-wide defaults)."""
    op.drop_table("org_moderation")
