"""Accounts: organizations, users, API keys and the credits ledger.

- ``orgs``: ``create_org``, ``get_org``, ``list_orgs``, ``create_user``, ``get_user``,
  ``add_member``, ``list_users``, ``list_members``, ``remove_member``, ``user_orgs``,
  ``ensure_dev_account``.
- ``keys``: ``server_secret``, ``create_key``, ``list_keys``, ``revoke_key``,
  ``authenticate`` -> ``AuthContext``, ``resolve_org``.
- ``ledger``: ``grant``, ``reserve``, ``capture``, ``release``, ``balance``, ``summary``.
- ``plans``: plans, ``set_org_plan``, ``rate_limit_for``, ``apply_monthly_grants``,
  ``GrantScheduler``; ``usage``: ``usage_report``, ``to_csv`` (import those modules directly).

All take a SQLAlchemy ``Session`` from ``stableserve.db.session_factory(settings)`` and run in
the caller's transaction (``with Session.begin() as session: ...``).
"""

from stableserve.accounts.keys import (
    AuthContext,
    authenticate,
    create_key,
    list_keys,
    parse_authorization,
    resolve_org,
    revoke_key,
    server_secret,
)
from stableserve.accounts.ledger import balance, capture, grant, release, reserve, summary
from stableserve.accounts.orgs import (
    add_member,
    create_org,
    create_user,
    ensure_dev_account,
    get_org,
    get_user,
    list_orgs,
    user_orgs,
)

__all__ = [
    "AuthContext",
    "add_member",
    "authenticate",
    "balance",
    "capture",
    "create_key",
    "create_org",
    "create_user",
    "ensure_dev_account",
    "get_org",
    "get_user",
    "grant",
    "list_keys",
    "list_orgs",
    "parse_authorization",
    "release",
    "reserve",
    "resolve_org",
    "revoke_key",
    "server_secret",
    "summary",
    "user_orgs",
]
