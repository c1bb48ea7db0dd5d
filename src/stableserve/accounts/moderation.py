"""Per-organization moderation settings (the ``org_moderation`` table) and the effective policy.

An organization's row overrides the server-wide defaults (``settings.moderation``): its
``mode`` wins when set, its words and patterns are added to the server's. An organization
without a row follows the defaults. Functions take a ``Session`` and run in the caller's
transaction (nothing here commits).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from stableserve.core.moderation import (
    ModerationPolicy,
    load_classifier,
    validate_mode,
    validate_patterns,
    validate_words,
)
from stableserve.db.models import Organization, OrgModeration
from stableserve.errors import NotFound
from stableserve.settings import ModerationSettings

__all__ = ["OrgPolicy", "clear_policy", "effective_policy", "get_policy", "server_policy", "set_policy"]


@dataclass(frozen=True)
class OrgPolicy:
    """An organization's own settings: ``mode`` (``block``/``filter``/``off``, None = the
    server's default), ``words`` and ``patterns`` (added to the server's lists)."""

    org_id: str
    mode: str | None = None
    words: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


def _loads(text: str | None) -> tuple[str, ...]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def get_policy(session: Session, org_id: str) -> OrgPolicy:
    """``org_id``'s own settings (all defaults when it has none). One primary-key lookup."""
    row = session.get(OrgModeration, org_id)
    if row is None:
        return OrgPolicy(org_id)
    return OrgPolicy(org_id, row.mode, _loads(row.words), _loads(row.patterns))


def set_policy(
    session: Session,
    org_id: str,
    *,
    mode: str | None = None,
    words: Sequence[str] | None = None,
    patterns: Sequence[str] | None = None,
    inherit_mode: bool = False,
) -> OrgPolicy:
    """Change ``org_id``'s settings; a ``None`` argument keeps what is stored.

    ``mode``: ``block``/``filter``/``off``; ``inherit_mode=True`` clears it (back to the
    server's default). ``words`` / ``patterns`` replace the stored lists (pass the full list).
    Raises ``NotFound`` (unknown organization) and ``InvalidRequest`` (bad mode, word or
    pattern; ``param`` names which). Returns the stored settings.
    """
    if session.get(Organization, org_id) is None:
        raise NotFound(f"organization {org_id} not found")
    row = session.get(OrgModeration, org_id)
    if row is None:
        row = OrgModeration(org_id=org_id, words="[]", patterns="[]")
        session.add(row)
    if inherit_mode:
        row.mode = None
    elif mode is not None:
        row.mode = validate_mode(mode)
    if words is not None:
        row.words = json.dumps(list(validate_words(words)))
    if patterns is not None:
        row.patterns = json.dumps(list(validate_patterns(patterns)))
    session.flush()
    return get_policy(session, org_id)


def clear_policy(session: Session, org_id: str) -> None:
    """Remove ``org_id``'s own settings (it follows the server-wide defaults again)."""
    row = session.get(OrgModeration, org_id)
    if row is not None:
        session.delete(row)
        session.flush()


def server_policy(settings: ModerationSettings) -> ModerationPolicy:
    """The server-wide ``ModerationPolicy`` of ``settings`` (its classifier plugin loaded).

    Raises ``ValueError`` when the classifier plugin cannot be loaded."""
    classifier = load_classifier(settings.classifier) if settings.classifier else None
    return ModerationPolicy(
        mode=settings.mode,
        words=tuple(settings.words),
        patterns=tuple(settings.patterns),
        classifier=classifier,
        threshold=settings.classifier_threshold,
        check_negative=settings.check_negative_prompts,
    )


def effective_policy(session: Session, org_id: str, base: ModerationPolicy) -> ModerationPolicy:
    """``base`` (the server-wide policy) with ``org_id``'s own settings applied."""
    own = get_policy(session, org_id)
    if own.mode is None and not own.words and not own.patterns:
        return base
    return base.with_override(own.mode, own.words, own.patterns)
