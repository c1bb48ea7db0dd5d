"""What every admin route shares: the admin-key check, a transaction helper, the documented
error responses and the string types that keep bad input (control characters, overlong
values) out of the database as a 400."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Annotated

from fastapi import Path, Request
from pydantic import StringConstraints
from sqlalchemy.orm import Session

from stableserve.api.deps import app_state, authenticate
from stableserve.api.rest_v1.schemas import Error
from stableserve.api.service import Principal
from stableserve.errors import PermissionDenied

#: Error responses of every admin operation (the REST v1 body ``{id, name, message}``).
ERRORS = {code: {"model": Error} for code in (400, 401, 403, 404, 429)}

#: A one-line string: no control characters.
Line = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]*$")]
#: Free text: anything but NUL, at most 10,000 characters.
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$", max_length=10_000)]
#: An email address as ``accounts.orgs.create_user`` takes it.
Email = Annotated[
    str, StringConstraints(pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$", max_length=320)
]
#: A plan id: lowercase letters, digits and ``-``, 1..32 characters.
PlanId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]

_REF = r"^[^\x00-\x1f\x7f/]+$"
#: An organization id (``org-...``) or name, in a path.
OrgRef = Annotated[str, Path(max_length=100, pattern=_REF, description="Organization id (org-...) or name.")]
#: A user id (``user-...``) or email, in a path.
UserRef = Annotated[str, Path(max_length=320, pattern=_REF, description="User id (user-...) or email.")]
#: An API key id (``key-...``), in a path.
KeyRef = Annotated[str, Path(max_length=32, pattern=_REF, description="API key id (key-...).")]
#: A plan id, in a path.
PlanRef = Annotated[str, Path(max_length=32, pattern=_REF, description="Plan id (e.g. free).")]

ADMIN_ONLY = "This endpoint needs an admin API key (create one with `stableserve keys create --admin`)."


async def require_admin(request: Request) -> Principal:
    """Authenticate the request (rate-limited like every request) and require an admin key.

    Raises ``Unauthorized`` (401: no, unknown or revoked key), ``PermissionDenied`` (403: the
    key is not an admin key), ``RateLimited`` (429). The ``Organization`` header is ignored.
    """
    principal = await authenticate(request, use_org_header=False)
    if not principal.is_admin:
        raise PermissionDenied(ADMIN_ONLY)
    return principal


def transaction(request: Request) -> AbstractContextManager[Session]:
    """A session in a new transaction (``with transaction(request) as session:``), committed
    when the block ends without an error, rolled back otherwise. Blocking: use in ``def``
    routes (FastAPI runs them in its thread pool)."""
    return app_state(request).sessions.begin()
