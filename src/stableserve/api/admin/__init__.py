"""The admin API, ``/admin/v1``: organizations, users, memberships, API keys, credit grants,
plans and usage reports, for admin keys only (``stableserve keys create --admin``).

Errors use the REST v1 body ``{id, name, message}``: 401 without a valid key, 403
(``permission_denied``) for a key that is not an admin key, 400 for bad input, 404 for
unknown ids.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from stableserve.api.admin.common import ERRORS, require_admin
from stableserve.api.admin.orgs import build_orgs_router
from stableserve.api.admin.plans import build_plans_router

PREFIX = "/admin/v1"


def build_admin_router() -> APIRouter:
    """Every admin route behind ``require_admin``; mount with ``prefix=PREFIX``."""
    router = APIRouter(tags=["Admin"], responses=ERRORS, dependencies=[Depends(require_admin)])
    router.include_router(build_orgs_router())
    router.include_router(build_plans_router())
    return router
