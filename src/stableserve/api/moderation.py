"""The moderation step of the shared generation flow (``GenerationService``): one place, every protocol.

``Moderator.screen(org_id, request)`` runs before engine resolution, pricing and the job: it
applies the organization's effective ``ModerationPolicy`` (server-wide defaults + its own
settings, ``accounts.moderation``) and returns the request with ``image_safety`` set for the
worker, or raises ``ContentModerated`` (nothing reserved, no job).
"""

from __future__ import annotations

import logging
from typing import Any

from stableserve.accounts.moderation import effective_policy, server_policy
from stableserve.core.moderation import ModerationPolicy
from stableserve.core.types import GenerationRequest
from stableserve.errors import ContentModerated, Overloaded
from stableserve.settings import Settings

log = logging.getLogger("stableserve.moderation")

UNAVAILABLE_MESSAGE = "Content moderation is unavailable right now, please try again later."


class Moderator:
    """Applies organizations' moderation policies.

    ``settings.moderation`` gives the server-wide policy (its classifier plugin is loaded here:
    ``ValueError`` at construction when it cannot be); ``sessions`` is a SQLAlchemy session
    factory for the per-organization settings.
    """

    def __init__(self, settings: Settings, sessions: Any):
        self.base = server_policy(settings.moderation)
        self.sessions = sessions

    def policy(self, org_id: str) -> ModerationPolicy:
        """``org_id``'s effective policy (one primary-key lookup). Blocking."""
        with self.sessions() as session:
            return effective_policy(session, org_id, self.base)

    def screen(self, org_id: str, request: GenerationRequest) -> GenerationRequest:
        """``request`` checked against ``org_id``'s policy, with ``image_safety`` set. Blocking.

        Raises ``ContentModerated`` (a flagged prompt in ``block`` mode) and ``Overloaded``
        (the classifier plugin raised: the request is refused, uncharged, retry later). Never
        logs the prompt itself.
        """
        policy = self.policy(org_id)
        try:
            policy.check(request)
        except ContentModerated as exc:
            log.info("prompt refused by content moderation: org=%s field=%s", org_id, exc.field)
            raise
        except Exception:
            log.exception("moderation classifier failed (org=%s); request refused", org_id)
            raise Overloaded(UNAVAILABLE_MESSAGE) from None
        if request.image_safety == policy.image_safety:
            return request
        return request.model_copy(update={"image_safety": policy.image_safety})
