"""The ``plans`` commands: list plans, set a plan's dispatch weight, apply the monthly grants now.

Like every account command (``cli_accounts``), each migrates the database first and runs one
short transaction; expected failures print ``error: ...`` and exit with status 2. Plans are
edited with the admin API (``/admin/v1/plans``); organizations are put on one with
``stableserve orgs set-plan``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from stableserve.cli_accounts import _num, _settings, _table, _transaction, out

plans_app = typer.Typer(help="Plans: monthly credits and rate limits.", no_args_is_help=True)


@plans_app.command("list")
def plans_list() -> None:
    """List plans: id, name, monthly credits, rate limit, dispatch weight, organizations on it."""
    from sqlalchemy import func, select

    from stableserve.accounts.plans import list_plans
    from stableserve.db.models import Organization

    def work(session) -> list[tuple[str, ...]]:
        counts = dict(
            session.execute(
                select(Organization.plan_id, func.count(Organization.id)).group_by(Organization.plan_id)
            ).all()
        )
        return [
            (
                p.id,
                p.name,
                _num(p.monthly_credits),
                f"{p.rate_limit_requests} / {p.rate_limit_window_s} s",
                str(p.weight),
                str(counts.get(p.id, 0)),
            )
            for p in list_plans(session)
        ]

    rows = _transaction(_settings(), work)
    _table("plans", ("id", "name", "credits/month", "rate limit", "weight", "organizations"), rows)


@plans_app.command("set-weight")
def plans_set_weight(
    plan_id: Annotated[str, typer.Argument(help="Plan id (see `plans list`).")],
    weight: Annotated[int, typer.Argument(help="1..100: the plan's share of the job dispatcher's turns.")],
) -> None:
    """Set a plan's weight: while several organizations have queued jobs, one on a weight-3
    plan is served three times as often as one on a weight-1 plan."""
    from stableserve.accounts.plans import update_plan

    _transaction(_settings(), lambda s: update_plan(s, plan_id, weight=weight))
    out.print(f"plan {plan_id}: weight {weight}", highlight=False)


@plans_app.command("apply-grants")
def plans_apply_grants() -> None:
    """Apply this month's plan grants now (each organization gets at most one per UTC month)."""
    from stableserve.accounts.plans import apply_monthly_grants, period_of
    from stableserve.db.base import utcnow

    now = utcnow()
    applied = _transaction(_settings(), lambda s: apply_monthly_grants(s, now))
    out.print(f"applied {applied} monthly grant(s) for {period_of(now)}", highlight=False)
