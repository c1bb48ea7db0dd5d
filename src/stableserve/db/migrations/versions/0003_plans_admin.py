"""Plans, admin keys and scheduled grants (issue 8; filled in by the admin/plans work).

Revision ID: 0003
Revises: 0002
Hand-written; runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet."""


def downgrade() -> None:
    """Nothing yet."""
