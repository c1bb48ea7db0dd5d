"""Admin routes for plans, their monthly grants and usage reports (thin over
``stableserve.accounts.plans`` and ``stableserve.accounts.usage``)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from stableserve.accounts import orgs as orgs_mod
from stableserve.accounts import plans, usage
from stableserve.api.admin import schemas as s
from stableserve.api.admin.common import PlanRef, transaction
from stableserve.db import models as m
from stableserve.db.base import utcnow

_CSV_200 = {
    200: {
        "description": "The report: JSON, or CSV (a header row, then one line per row) with `format=csv`.",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


def plan(row: m.Plan) -> s.Plan:
    """The wire shape of ``row``."""
    return s.Plan(
        id=row.id,
        name=row.name,
        description=row.description,
        monthly_credits=float(row.monthly_credits),
        rate_limit_requests=row.rate_limit_requests,
        rate_limit_window_s=row.rate_limit_window_s,
        weight=row.weight,
        created_at=row.created_at,
    )


def build_plans_router() -> APIRouter:
    """Routes for ``/plans`` and ``/usage`` (mount under ``/admin/v1``)."""
    router = APIRouter()

    @router.get("/plans", response_model=list[s.Plan], summary="List plans")
    def list_plans(request: Request) -> list[s.Plan]:
        """Every plan, by monthly credits."""
        with transaction(request) as session:
            return [plan(p) for p in plans.list_plans(session)]

    @router.post("/plans", response_model=s.Plan, status_code=201, summary="Create a plan")
    def create_plan(body: s.PlanCreate, request: Request) -> s.Plan:
        """A new plan (400 when the id is taken)."""
        with transaction(request) as session:
            values = body.model_dump(exclude={"id"})
            return plan(plans.create_plan(session, body.id, **values))

    @router.post("/plans/apply-grants", response_model=s.GrantsApplied, summary="Apply monthly grants")
    def apply_grants(request: Request) -> s.GrantsApplied:
        """Apply the current month's grants now (the server also does so on a schedule); an
        organization never gets two grants in one month."""
        now = utcnow()
        with transaction(request) as session:
            applied = plans.apply_monthly_grants(session, now)
        return s.GrantsApplied(period=plans.period_of(now), applied=applied)

    @router.get("/plans/{plan_id}", response_model=s.Plan, summary="Get a plan")
    def get_plan(plan_id: PlanRef, request: Request) -> s.Plan:
        """One plan."""
        with transaction(request) as session:
            return plan(plans.get_plan(session, plan_id))

    @router.patch("/plans/{plan_id}", response_model=s.Plan, summary="Update a plan")
    def update_plan(plan_id: PlanRef, body: s.PlanUpdate, request: Request) -> s.Plan:
        """Change a plan; new limits apply to the next request, new credits to the next grant."""
        with transaction(request) as session:
            return plan(plans.update_plan(session, plan_id, **body.model_dump(exclude_none=True)))

    @router.get(
        "/usage",
        response_model=s.UsageReport,
        responses=_CSV_200,
        summary="Usage per organization, engine, day",
    )
    def usage_report(
        request: Request,
        org_id: Annotated[
            str | None,
            Query(max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$", description="Organization id or name."),
        ] = None,
        from_: Annotated[date | None, Query(alias="from", description="First UTC day (inclusive).")] = None,
        to: Annotated[date | None, Query(description="Last UTC day (inclusive).")] = None,
        format: Annotated[Literal["json", "csv"], Query(description="Response format.")] = "json",  # noqa: A002
    ) -> s.UsageReport | Response:
        """Jobs (submitted, succeeded, failed, cancelled), images and credits charged per
        organization, engine and UTC day, for one organization (404 if unknown) or all."""
        with transaction(request) as session:
            org = orgs_mod.get_org(session, org_id).id if org_id is not None else None
            rows = usage.usage_report(session, org_id=org, start=from_, end=to)
        if format == "csv":
            return Response(usage.to_csv(rows), media_type="text/csv")
        return s.UsageReport(
            org_id=org,
            to=to,
            rows=[s.UsageRow(**{**r.__dict__, "credits": float(r.credits)}) for r in rows],
            **{"from": from_},
        )

    return router
