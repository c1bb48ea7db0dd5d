"""Idempotency keys (issue 8): the ``idempotency_keys`` table.

Revision ID: 0004
Revises: 0003
Hand-written; matches ``stableserve.db.models.IdempotencyKey`` and runs on SQLite and
PostgreSQL. Creates only this table (plans/admin are 0003, moderation 0005).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``idempotency_keys`` with UNIQUE(scope_hash, idempotency_key) and an index on
    ``expires_at`` (the purge query)."""
    op.create_table(
        "idempotency_keys",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("scope_hash", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response_headers", sa.Text(), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_idempotency_keys"),
        sa.UniqueConstraint(
            "scope_hash", "idempotency_key", name="uq_idempotency_keys_scope_hash_idempotency_key"
        ),
        sa.CheckConstraint("state IN ('running', 'done')", name="ck_idempotency_keys_state"),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    """Drop ``idempotency_keys`` (stored responses are lost; retries then run again)."""
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
