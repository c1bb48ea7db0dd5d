"""Account administration commands: ``orgs``, ``keys``, ``credits`` and ``db`` (``plans``:
``cli_plans``).

Every command first migrates the database to head (idempotent, fast), so each works on a
fresh ``STABLESERVE_HOME``; each runs one short transaction, so they work beside a running
server on the same SQLite file (WAL, 30 s busy timeout). Expected failures print
``error: ...`` on stderr and exit with status 2.

``register_accounts(app)`` adds the sub-commands to the main ``stableserve`` app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from stableserve.errors import StableServeError
from stableserve.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

orgs_app = typer.Typer(help="Manage organizations.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
credits_app = typer.Typer(help="Grant and inspect credits.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

OrgOpt = Annotated[str, typer.Option("--org", help="Organization name or id.")]


def register_accounts(app: typer.Typer) -> None:
    """Add the ``orgs``, ``keys``, ``credits``, ``plans`` and ``db`` command groups to ``app``."""
    from stableserve import cli_moderation  # noqa: F401 - adds `orgs moderation`
    from stableserve.cli_plans import plans_app

    app.add_typer(orgs_app, name="orgs")
    app.add_typer(keys_app, name="keys")
    app.add_typer(credits_app, name="credits")
    app.add_typer(plans_app, name="plans")
    app.add_typer(db_app, name="db")


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def _guard() -> Iterator[None]:
    """Turn domain, database and file errors into ``error: ...`` + exit status 2."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except StableServeError as exc:
        raise _fail(exc.message) from None
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise _fail(f"database: {detail}") from None
    except OSError as exc:
        raise _fail(str(exc)) from None


def _settings() -> Settings:
    from stableserve.db.migrate import upgrade

    settings = get_settings()
    with _guard():
        upgrade(settings)
    return settings


def _transaction(settings: Settings, work: Callable[[Session], Any]) -> Any:
    from stableserve.db.session import session_factory

    with _guard(), session_factory(settings).begin() as session:
        return work(session)


def _credits(text: str) -> Any:
    from stableserve.db.base import to_credits

    try:
        return to_credits(text)
    except ValueError:
        raise _fail(f"not a number of credits: {text!r}") from None


def _num(value: Any) -> str:
    return f"{value:,.6f}".rstrip("0").rstrip(".")


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(width=max(160, out.width)).print(table)


@orgs_app.command("create")
def orgs_create(
    name: Annotated[str, typer.Argument(help="Unique name, 1..100 characters.")],
    credits: Annotated[str, typer.Option("--credits", help="Credits to grant (default 0).")] = "0",
    email: Annotated[
        str | None, typer.Option("--email", help="Owner's email (default <name>@localhost).")
    ] = None,
) -> None:
    """Create an organization and its owner user, optionally with credits."""
    from stableserve.accounts import balance, create_org

    amount = _credits(credits)
    settings = _settings()

    def work(session: Session) -> tuple[Any, Any]:
        org = create_org(session, name, credits=amount, email=email)
        return org, balance(session, org.id)

    org, bal = _transaction(settings, work)
    out.print(f"created organization {org.name} ({org.id}) with {_num(bal)} credits", highlight=False)


@orgs_app.command("list")
def orgs_list() -> None:
    """List organizations: id, name, owner, balance, created."""
    from sqlalchemy import select

    from stableserve.accounts import balance, list_orgs
    from stableserve.db.models import Membership, User

    def work(session: Session) -> list[tuple[str, ...]]:
        rows = []
        for org in list_orgs(session):
            owners = session.execute(
                select(User.email)
                .join(Membership, Membership.user_id == User.id)
                .where(Membership.org_id == org.id, Membership.role == "OWNER")
                .order_by(User.email)
            ).scalars()
            rows.append(
                (org.id, org.name, ", ".join(owners), _num(balance(session, org.id)), _when(org.created_at))
            )
        return rows

    rows = _transaction(_settings(), work)
    _table("organizations", ("id", "name", "owner", "balance", "created"), rows)


@orgs_app.command("set-plan")
def orgs_set_plan(
    org: Annotated[str, typer.Argument(help="Organization name or id.")],
    plan: Annotated[str, typer.Argument(help="Plan id (see `plans list`), or `none` for no plan.")],
) -> None:
    """Put an organization on a plan (its monthly credits and rate limit), or `none`."""
    from stableserve.accounts import get_org
    from stableserve.accounts.plans import set_org_plan

    plan_id = None if plan.lower() == "none" else plan
    row = _transaction(_settings(), lambda s: set_org_plan(s, get_org(s, org).id, plan_id))
    out.print(f"organization {row.name} is on plan {row.plan_id or 'none'}", highlight=False)


@keys_app.command("create")
def keys_create(
    org: OrgOpt,
    admin: Annotated[bool, typer.Option("--admin", help="An admin key: it may also call /admin/v1.")] = False,
) -> None:
    """Create an API key for the organization's owner; prints only the key (shown once)."""
    from stableserve.accounts import create_key, get_org, server_secret

    settings = _settings()
    with _guard():
        secret = server_secret(settings)
    row, raw = _transaction(settings, lambda s: create_key(s, get_org(s, org), secret, is_admin=admin))
    kind = "admin key" if admin else "key"
    err.print(f"created {kind} {row.id} for {org}; store the key now, it is not shown again", highlight=False)
    typer.echo(raw)


@keys_app.command("list")
def keys_list(org: OrgOpt) -> None:
    """List the organization's keys: id, prefix, created, last used, revoked, admin (no secrets)."""
    from stableserve.accounts import get_org, list_keys

    def work(session: Session) -> list[tuple[str, ...]]:
        return [
            (
                k.id,
                f"sk-{k.prefix}...",
                _when(k.created_at),
                _when(k.last_used_at),
                _when(k.revoked_at),
                "yes" if k.is_admin else "no",
            )
            for k in list_keys(session, get_org(session, org))
        ]

    rows = _transaction(_settings(), work)
    _table(f"API keys of {org}", ("id", "prefix", "created", "last used", "revoked", "admin"), rows)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id (key-...), see `keys list`.")]) -> None:
    """Revoke an API key; it stops working at once."""
    from stableserve.accounts import revoke_key

    row = _transaction(_settings(), lambda s: revoke_key(s, key_id))
    out.print(f"revoked {row.id} (sk-{row.prefix}...)", highlight=False)


@credits_app.command("grant")
def credits_grant(org: OrgOpt, amount: Annotated[str, typer.Argument(help="Credits to add (> 0).")]) -> None:
    """Grant credits to an organization."""
    from stableserve.accounts import balance, get_org, grant

    value = _credits(amount)

    def work(session: Session) -> tuple[str, Any]:
        target = get_org(session, org)
        grant(session, target.id, value, note="granted with the command line")
        return target.name, balance(session, target.id)

    name, bal = _transaction(_settings(), work)
    out.print(f"granted {_num(value)} credits to {name}; balance {_num(bal)}", highlight=False)


@credits_app.command("show")
def credits_show(org: OrgOpt) -> None:
    """Show an organization's balance and ledger summary."""
    from stableserve.accounts import get_org, summary

    def work(session: Session) -> tuple[Any, dict]:
        target = get_org(session, org)
        return target, summary(session, target.id)

    target, totals = _transaction(_settings(), work)
    out.print(f"{target.name} ({target.id})", highlight=False)
    out.print(f"balance  {_num(totals['balance'])} credits", highlight=False)
    for label, key in (
        ("granted", "granted"),
        ("reserved", "reserved"),
        ("captured", "captured"),
        ("released", "released"),
    ):
        out.print(f"{label:<8} {_num(totals[key])}", highlight=False)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema (creates it when missing)."""
    from stableserve.db.migrate import upgrade

    settings = get_settings()
    with _guard():
        revision = upgrade(settings)
    out.print(f"database {_redact(settings.db_url)} is at revision {revision}", highlight=False)
