"""Admin routes for organizations, users, memberships, API keys and credit grants (thin over
``stableserve.accounts``). Every route needs an admin key (``common.require_admin``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from stableserve.accounts import keys as keys_mod
from stableserve.accounts import ledger, plans
from stableserve.accounts import orgs as orgs_mod
from stableserve.api.admin import schemas as s
from stableserve.api.admin.common import KeyRef, OrgRef, UserRef, transaction
from stableserve.api.deps import app_state
from stableserve.api.idempotency.middleware import skip_storage
from stableserve.db import models as m
from stableserve.errors import InvalidRequest


def organization(org: m.Organization) -> s.Organization:
    """The wire shape of ``org``."""
    return s.Organization(
        id=org.id, name=org.name, description=org.description, plan_id=org.plan_id, created_at=org.created_at
    )


def _detail(session: Session, org: m.Organization) -> s.OrganizationDetail:
    members = [
        s.Member(user_id=u.id, email=u.email, role=mb.role, is_default=mb.is_default)
        for u, mb in orgs_mod.list_members(session, org)
    ]
    return s.OrganizationDetail(
        **organization(org).model_dump(), balance=float(ledger.balance(session, org.id)), members=members
    )


def api_key(row: m.ApiKey) -> s.ApiKey:
    """The wire shape of ``row`` (never its hash)."""
    return s.ApiKey(
        id=row.id,
        org_id=row.org_id,
        user_id=row.user_id,
        prefix=f"{keys_mod.KEY_PREFIX}{row.prefix}...",
        is_admin=bool(row.is_admin),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def _user(session: Session, ref: str) -> m.User:
    return orgs_mod.get_user(session, ref)


def build_orgs_router() -> APIRouter:
    """Routes for ``/organizations``, ``/users`` and ``/keys`` (mount under ``/admin/v1``)."""
    router = APIRouter()

    @router.get("/organizations", response_model=list[s.Organization], summary="List organizations")
    def list_organizations(request: Request) -> list[s.Organization]:
        """Every organization, by name."""
        with transaction(request) as session:
            return [organization(o) for o in orgs_mod.list_orgs(session)]

    @router.post(
        "/organizations",
        response_model=s.OrganizationDetail,
        status_code=201,
        summary="Create an organization",
    )
    def create_organization(body: s.OrganizationCreate, request: Request) -> s.OrganizationDetail:
        """A new organization with its owner, optional credits and plan (400 when the name is taken)."""
        with transaction(request) as session:
            if body.plan_id is not None:
                plans.get_plan(session, body.plan_id)  # 404 before anything is written
            org = orgs_mod.create_org(
                session, body.name, credits=body.credits, email=body.owner_email, description=body.description
            )
            if body.plan_id is not None:
                plans.set_org_plan(session, org.id, body.plan_id)
            return _detail(session, org)

    @router.get("/organizations/{org_id}", response_model=s.OrganizationDetail, summary="Get an organization")
    def get_organization(org_id: OrgRef, request: Request) -> s.OrganizationDetail:
        """An organization (by id or name) with its balance and members."""
        with transaction(request) as session:
            return _detail(session, orgs_mod.get_org(session, org_id))

    @router.patch(
        "/organizations/{org_id}", response_model=s.OrganizationDetail, summary="Update an organization"
    )
    def update_organization(
        org_id: OrgRef, body: s.OrganizationUpdate, request: Request
    ) -> s.OrganizationDetail:
        """Change the description and/or the plan (``"plan_id": null`` removes it)."""
        with transaction(request) as session:
            org = orgs_mod.get_org(session, org_id)
            if body.description is not None:
                org.description = body.description
            if "plan_id" in body.model_fields_set:
                plans.set_org_plan(session, org.id, body.plan_id)
            session.flush()
            return _detail(session, org)

    @router.get("/users", response_model=list[s.User], summary="List users")
    def list_users(request: Request) -> list[s.User]:
        """Every user, by email."""
        with transaction(request) as session:
            return [
                s.User(id=u.id, email=u.email, created_at=u.created_at) for u in orgs_mod.list_users(session)
            ]

    @router.post("/users", response_model=s.User, status_code=201, summary="Create a user")
    def create_user(body: s.UserCreate, request: Request) -> s.User:
        """A new user (400 when the email is taken)."""
        with transaction(request) as session:
            u = orgs_mod.create_user(session, body.email)
            return s.User(id=u.id, email=u.email, created_at=u.created_at)

    @router.get("/users/{user_id}", response_model=s.UserDetail, summary="Get a user")
    def get_user(user_id: UserRef, request: Request) -> s.UserDetail:
        """A user (by id or email) with its organizations."""
        with transaction(request) as session:
            u = _user(session, user_id)
            memberships = [
                s.UserMembership(org_id=o.id, org_name=o.name, role=mb.role, is_default=mb.is_default)
                for o, mb in orgs_mod.user_orgs(session, u.id)
            ]
            return s.UserDetail(id=u.id, email=u.email, created_at=u.created_at, organizations=memberships)

    @router.get("/organizations/{org_id}/members", response_model=list[s.Member], summary="List members")
    def list_members(org_id: OrgRef, request: Request) -> list[s.Member]:
        """The organization's members, by email."""
        with transaction(request) as session:
            return [
                s.Member(user_id=u.id, email=u.email, role=mb.role, is_default=mb.is_default)
                for u, mb in orgs_mod.list_members(session, orgs_mod.get_org(session, org_id))
            ]

    @router.post(
        "/organizations/{org_id}/members", response_model=s.Member, status_code=201, summary="Add a member"
    )
    def add_member(org_id: OrgRef, body: s.MemberAdd, request: Request) -> s.Member:
        """Add an existing user (id or email) with a role; an existing member gets the new role."""
        with transaction(request) as session:
            org = orgs_mod.get_org(session, org_id)
            u = _user(session, body.user_id)
            mb = orgs_mod.add_member(session, org, u, body.role)
            return s.Member(user_id=u.id, email=u.email, role=mb.role, is_default=mb.is_default)

    @router.delete("/organizations/{org_id}/members/{user_id}", status_code=204, summary="Remove a member")
    def remove_member(org_id: OrgRef, user_id: UserRef, request: Request) -> Response:
        """Remove a member and revoke its keys of this organization (400 for the last owner,
        or when the key making this request would be revoked)."""
        caller = request.state.principal
        with transaction(request) as session:
            org, user = orgs_mod.get_org(session, org_id), _user(session, user_id)
            if (org.id, user.id) == (caller.org_id, caller.user_id):
                raise InvalidRequest(
                    "user_id: removing this member would revoke the key making this request", param="user_id"
                )
            orgs_mod.remove_member(session, org, user)
        return Response(status_code=204)

    @router.get("/organizations/{org_id}/keys", response_model=list[s.ApiKey], summary="List API keys")
    def list_keys(org_id: OrgRef, request: Request) -> list[s.ApiKey]:
        """The organization's keys, revoked ones included, oldest first (never the secrets)."""
        with transaction(request) as session:
            return [api_key(k) for k in keys_mod.list_keys(session, orgs_mod.get_org(session, org_id))]

    @router.post(
        "/organizations/{org_id}/keys",
        response_model=s.ApiKeyCreated,
        status_code=201,
        summary="Create an API key",
    )
    def create_key(org_id: OrgRef, request: Request, body: s.ApiKeyCreate | None = None) -> s.ApiKeyCreated:
        """A new key (for the owner, or a member given by ``user_id``); the secret ``key`` is
        in this response only (never kept for an ``Idempotency-Key`` replay)."""
        skip_storage(request)
        body = body or s.ApiKeyCreate()
        secret = app_state(request).secret
        with transaction(request) as session:
            org = orgs_mod.get_org(session, org_id)
            user = _user(session, body.user_id) if body.user_id is not None else None
            row, raw = keys_mod.create_key(session, org, secret, user=user, is_admin=body.is_admin)
            return s.ApiKeyCreated(**api_key(row).model_dump(), key=raw)

    @router.delete("/keys/{key_id}", response_model=s.ApiKey, summary="Revoke an API key")
    def revoke_key(key_id: KeyRef, request: Request) -> s.ApiKey:
        """Revoke a key (it stops working at once); revoking again changes nothing. The key
        making the request cannot revoke itself (400): use another admin key or the CLI."""
        if key_id == request.state.principal.key_id:
            raise InvalidRequest("key_id: an admin key cannot revoke itself", param="key_id")
        with transaction(request) as session:
            return api_key(keys_mod.revoke_key(session, key_id))

    @router.post(
        "/organizations/{org_id}/credits",
        response_model=s.Granted,
        status_code=201,
        summary="Grant credits",
    )
    def grant_credits(org_id: OrgRef, body: s.CreditGrant, request: Request) -> s.Granted:
        """Add credits to the organization's ledger."""
        with transaction(request) as session:
            org = orgs_mod.get_org(session, org_id)
            entry = ledger.grant(session, org.id, body.amount, note=body.note or "granted with the admin API")
            return s.Granted(
                entry_id=entry.id,
                org_id=org.id,
                amount=float(entry.amount),
                note=entry.note,
                created_at=entry.created_at,
                balance=float(ledger.balance(session, org.id)),
            )

    @router.get("/organizations/{org_id}/balance", response_model=s.Balance, summary="Credit balance")
    def balance(org_id: OrgRef, request: Request) -> s.Balance:
        """The organization's balance and ledger totals, in credits."""
        with transaction(request) as session:
            org = orgs_mod.get_org(session, org_id)
            totals = {k: float(v) for k, v in ledger.summary(session, org.id).items()}
            return s.Balance(org_id=org.id, **totals)

    return router
