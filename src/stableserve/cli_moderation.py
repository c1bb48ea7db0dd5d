"""The ``orgs moderation`` command: show or change an organization's content moderation.

Like every account command (``cli_accounts``) it migrates the database first and runs one
short transaction; expected failures (unknown organization, bad mode, bad regex) print
``error: ...`` and exit with status 2. A running server applies a change to the next request.
"""

from __future__ import annotations

from typing import Annotated

import typer

from stableserve.cli_accounts import _settings, _transaction, orgs_app, out


@orgs_app.command("moderation")
def orgs_moderation(
    org: Annotated[str, typer.Argument(help="Organization name or id.")],
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="block (refuse flagged prompts, blur flagged images), filter (only blur images), "
            "off, or default (the server's mode).",
        ),
    ] = None,
    word: Annotated[
        list[str] | None, typer.Option("--word", help="Add a blocked word or phrase (repeatable).")
    ] = None,
    pattern: Annotated[
        list[str] | None, typer.Option("--pattern", help="Add a blocked regular expression (repeatable).")
    ] = None,
    remove_word: Annotated[
        list[str] | None, typer.Option("--remove-word", help="Remove a word (repeatable).")
    ] = None,
    remove_pattern: Annotated[
        list[str] | None, typer.Option("--remove-pattern", help="Remove a pattern (repeatable).")
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Drop the organization's own words and patterns first.")
    ] = False,
) -> None:
    """Show an organization's moderation settings, or change them (then show them).

    The organization's words and patterns are added to the server's
    (``STABLESERVE_MODERATION__*``); its mode, when set, replaces the server's.
    """
    from stableserve.accounts import get_org
    from stableserve.accounts.moderation import get_policy, set_policy

    settings = _settings()
    changing = mode is not None or word or pattern or remove_word or remove_pattern or clear

    def work(session):
        target = get_org(session, org)
        own = get_policy(session, target.id)
        if changing:
            drop_words = {" ".join(w.split()).lower() for w in remove_word or ()}
            words = [] if clear else [w for w in own.words if w not in drop_words]
            patterns = [] if clear else [p for p in own.patterns if p not in set(remove_pattern or ())]
            own = set_policy(
                session,
                target.id,
                mode=None if mode in (None, "default") else mode,
                inherit_mode=mode == "default",
                words=[*words, *(word or ())],
                patterns=[*patterns, *(pattern or ())],
            )
        return target, own

    target, own = _transaction(settings, work)
    server = settings.moderation
    out.print(f"{target.name} ({target.id})", highlight=False)
    inherited = "" if own.mode else " (server default)"
    out.print(f"mode      {own.mode or server.mode}{inherited}", highlight=False)
    out.print(f"words     {', '.join(own.words) or '-'}", highlight=False)
    out.print(f"patterns  {', '.join(own.patterns) or '-'}", highlight=False)
    out.print(
        f"server    {len(server.words)} words, {len(server.patterns)} patterns"
        f"{', classifier ' + server.classifier if server.classifier else ''}",
        highlight=False,
    )
