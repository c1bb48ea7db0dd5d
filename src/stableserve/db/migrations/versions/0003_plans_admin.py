"""Plans, admin keys and scheduled grants (issue 8).

Revision ID: 0003
Revises: 0002
Hand-written; matches ``stableserve.db.models`` and runs on SQLite and PostgreSQL.

- ``plans``, seeded with the shape of Stability's published tiers (``free``, ``creator``,
  ``pro``, ``enterprise``). The numbers are defaults an operator edits (``PATCH
  /admin/v1/plans/{id}``), not Stability's prices.
- ``organizations.plan_id`` (nullable: no plan, the server's default rate limit). On SQLite the
  column is added with ``ALTER TABLE ... ADD COLUMN ... REFERENCES`` (no table rebuild:
  ``organizations`` is referenced by other tables and foreign keys are enforced).
- ``api_keys.is_admin`` (NOT NULL, server default false: existing keys are not admin keys).
- ``plan_grants``: one row per (organization, ``YYYY-MM``) monthly grant applied.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: (id, name, monthly credits, requests, window s, description): operator-editable defaults.
SEED_PLANS = (
    ("free", "Free", 25, 60, 10, "Free tier: 25 credits a month, 60 requests per 10 s."),
    ("creator", "Creator", 1000, 150, 10, "Creator tier: 1,000 credits a month, 150 requests per 10 s."),
    ("pro", "Pro", 5000, 300, 10, "Pro tier: 5,000 credits a month, 300 requests per 10 s."),
    (
        "enterprise",
        "Enterprise",
        50000,
        1500,
        10,
        "Enterprise tier: 50,000 credits a month, 1,500 requests per 10 s.",
    ),
)


def upgrade() -> None:
    """Create ``plans`` (seeded) and ``plan_grants``; add ``organizations.plan_id`` and
    ``api_keys.is_admin``."""
    ts = sa.DateTime(timezone=True)
    credits = sa.Numeric(18, 6)
    plans = op.create_table(
        "plans",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("monthly_credits", credits, nullable=False),
        sa.Column("rate_limit_requests", sa.Integer(), nullable=False),
        sa.Column("rate_limit_window_s", sa.Integer(), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_plans"),
        sa.CheckConstraint("monthly_credits >= 0", name="ck_plans_monthly_credits"),
        sa.CheckConstraint("rate_limit_requests > 0", name="ck_plans_rate_limit_requests"),
        sa.CheckConstraint("rate_limit_window_s > 0", name="ck_plans_rate_limit_window_s"),
    )
    now = datetime.now(UTC)
    op.bulk_insert(
        plans,
        [
            {
                "id": pid,
                "name": name,
                "description": text,
                "monthly_credits": monthly,
                "rate_limit_requests": requests,
                "rate_limit_window_s": window,
                "created_at": now,
            }
            for pid, name, monthly, requests, window, text in SEED_PLANS
        ],
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE organizations ADD COLUMN plan_id VARCHAR(32) "
            "CONSTRAINT fk_organizations_plan_id_plans REFERENCES plans (id)"
        )
    else:
        op.add_column("organizations", sa.Column("plan_id", sa.String(32), nullable=True))
        op.create_foreign_key("fk_organizations_plan_id_plans", "organizations", "plans", ["plan_id"], ["id"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("is_admin", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        "plan_grants",
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("plan_id", sa.String(32), nullable=False),
        sa.Column("amount", credits, nullable=False),
        sa.Column("ledger_entry_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("org_id", "period", name="pk_plan_grants"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], name="fk_plan_grants_org_id_organizations"),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name="fk_plan_grants_plan_id_plans"),
        sa.ForeignKeyConstraint(
            ["ledger_entry_id"], ["ledger_entries.id"], name="fk_plan_grants_ledger_entry_id_ledger_entries"
        ),
    )


def downgrade() -> None:
    """Drop what ``upgrade`` added (plans, plan assignments, grant records and the admin flag
    are lost; the credits already granted stay in the ledger)."""
    op.drop_table("plan_grants")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("is_admin")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("fk_organizations_plan_id_plans", "organizations", type_="foreignkey")
    op.drop_column("organizations", "plan_id")  # SQLite >= 3.35: ALTER TABLE ... DROP COLUMN
    op.drop_table("plans")
