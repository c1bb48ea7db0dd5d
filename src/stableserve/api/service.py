"""The generation flow every protocol adapter calls: engine -> validate -> price -> job -> artifacts.

Adapters parse their wire format into a ``GenerationRequest``, authenticate into a
``Principal`` and call ``GenerationService.generate``; they never touch the registry, the
ledger or the job queue themselves, so a rule is enforced once for every protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

from starlette.concurrency import run_in_threadpool

from stableserve.core.engines import EngineRegistry
from stableserve.core.pricing import price
from stableserve.core.types import Artifact, GenerationRequest
from stableserve.core.validation import resolve
from stableserve.errors import EngineNotReady
from stableserve.inference.loading import readiness
from stableserve.settings import Settings


@dataclass(frozen=True)
class Principal:
    """Who is calling: the API key, its user, and the organization the request acts for."""

    key_id: str
    user_id: str
    email: str
    org_id: str


DISCONNECT_POLL_SECONDS = 0.25


class GenerationService:
    """Runs generation requests for authenticated principals through the ``JobClient``.

    ``generate`` raises the domain errors (``NotFound``, ``InvalidRequest``,
    ``EngineNotReady``, ``InsufficientCredits``, ``Overloaded``, ``GenerationFailed``,
    ``GenerationCancelled``); credits are reserved before any work and only captured on success.
    """

    def __init__(self, settings: Settings, registry: EngineRegistry, job_client):
        self.settings = settings
        self.registry = registry
        self.jobs = job_client

    def prepare(self, request: GenerationRequest) -> tuple[GenerationRequest, Decimal]:
        """Resolve ``request`` against its engine and price it (credits, 6 decimals).

        Blocking (decodes images): call it from a worker thread.
        """
        engine = self.registry.get(request.engine_id)
        resolved = resolve(request, engine)
        ready = readiness(engine, self.settings)
        if not ready.ready:
            raise EngineNotReady(ready.reason)
        return resolved, Decimal(str(price(engine, resolved)))

    async def generate(
        self,
        principal: Principal,
        request: GenerationRequest,
        *,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> list[Artifact]:
        """Run ``request`` for ``principal``; a client that disconnects cancels its job (credits released)."""
        resolved, credits = await run_in_threadpool(self.prepare, request)
        job_id = await run_in_threadpool(
            self.jobs.submit, resolved, org_id=principal.org_id, key_id=principal.key_id, price=credits
        )
        watcher = asyncio.create_task(self._watch(job_id, disconnected)) if disconnected else None
        try:
            return await self.jobs.result(job_id)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def _watch(self, job_id: str, disconnected: Callable[[], Awaitable[bool]]) -> None:
        while True:
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)
            if await disconnected():
                self.jobs.cancel(job_id)
                return
