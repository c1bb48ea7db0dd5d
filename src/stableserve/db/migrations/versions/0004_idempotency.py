"""Idempotency keys (issue 8; filled in by the idempotency work).

Revision ID: 0004
Revises: 0003
Hand-written; runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet."""


def downgrade() -> None:
    """Nothing yet."""
