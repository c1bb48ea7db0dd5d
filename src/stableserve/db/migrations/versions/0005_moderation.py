"""Per-organization moderation policy (issue 8; filled in by the moderation work).

Revision ID: 0005
Revises: 0004
Hand-written; runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet."""


def downgrade() -> None:
    """Nothing yet."""
