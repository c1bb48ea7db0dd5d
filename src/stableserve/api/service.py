"""The generation flow every protocol adapter calls: engine -> validate -> price -> job -> artifacts.

Adapters parse their wire format into a ``GenerationRequest``, authenticate into a
``Principal`` and call ``GenerationService.generate``; they never touch the registry, the
ledger or the job queue themselves, so a rule is enforced once for every protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from starlette.concurrency import run_in_threadpool

from stableserve.core.engines import EngineRegistry
from stableserve.core.pricing import price
from stableserve.core.types import Artifact, GenerationRequest
from stableserve.core.validation import resolve
from stableserve.errors import EngineNotReady, GenerationCancelled
from stableserve.inference.loading import readiness
from stableserve.jobs.state import JobInfo
from stableserve.settings import Settings


@dataclass(frozen=True)
class Principal:
    """Who is calling: the API key, its user, and the organization the request acts for."""

    key_id: str
    user_id: str
    email: str
    org_id: str
    rate: Any = None
    """The key's ``ratelimit.RateState`` after this request (for ``X-RateLimit-*``), or None."""
    is_admin: bool = False
    """The key is an admin key (it may call ``/admin/v1``)."""


log = logging.getLogger("stableserve.service")

DISCONNECT_POLL_SECONDS = 0.25


class GenerationService:
    """Runs generation requests for authenticated principals through the ``JobClient``.

    ``generate`` raises the domain errors (``ContentModerated``, ``NotFound``, ``InvalidRequest``,
    ``EngineNotReady``, ``InsufficientCredits``, ``Overloaded``, ``GenerationFailed``,
    ``GenerationCancelled``); credits are reserved before any work and only captured on success.
    """

    def __init__(
        self, settings: Settings, registry: EngineRegistry, job_client, metrics=None, moderator=None
    ):
        self.settings = settings
        self.registry = registry
        self.jobs = job_client
        self.metrics = metrics
        self.moderator = moderator
        """``api.moderation.Moderator`` (None: no moderation, ``image_safety`` stays as given)."""

    def admit(
        self, principal: Principal, request: GenerationRequest, per_image: float | None = None
    ) -> tuple[GenerationRequest, Decimal]:
        """Moderation, then ``prepare``: the checks every request passes before its charge.

        Raises ``ContentModerated`` (flagged prompt; nothing reserved, no job) and what
        ``prepare`` raises. Blocking: call it from a worker thread.
        """
        if self.moderator is not None:
            request = self.moderator.screen(principal.org_id, request)
        return self.prepare(request, per_image)

    def prepare(
        self, request: GenerationRequest, per_image: float | None = None
    ) -> tuple[GenerationRequest, Decimal]:
        """Resolve ``request`` against its engine and price it (credits, 6 decimals).

        ``per_image``: a flat price per image (a registry product's ``credits``) instead of the
        engine's price rule. Blocking (decodes images): call it from a worker thread.
        """
        engine = self.registry.get(request.engine_id)
        resolved = resolve(request, engine)
        ready = readiness(engine, self.settings)
        if not ready.ready:
            raise EngineNotReady(ready.reason)
        credits = price(engine, resolved) if per_image is None else per_image * resolved.samples
        return resolved, Decimal(str(round(credits, 6)))

    async def generate(
        self,
        principal: Principal,
        request: GenerationRequest,
        *,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
        per_image: float | None = None,
    ) -> list[Artifact]:
        """Run ``request`` for ``principal``; a client that disconnects cancels its job (credits released).

        ``per_image``: flat credits per image (see ``prepare``).
        """
        _job, _credits, artifacts = await self.run(
            principal, request, disconnected=disconnected, per_image=per_image
        )
        return artifacts

    async def run(
        self,
        principal: Principal,
        request: GenerationRequest,
        *,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
        per_image: float | None = None,
        store_result: bool = False,
    ) -> tuple[str, Decimal, list[Artifact]]:
        """``generate`` that also returns the job id and the credits charged; with
        ``store_result`` the artifacts are kept in the ArtifactStore
        (``settings.results.retention_s``) for later links."""
        resolved, credits = await run_in_threadpool(self.admit, principal, request, per_image)
        job_id = await run_in_threadpool(
            functools.partial(
                self.jobs.submit,
                resolved,
                org_id=principal.org_id,
                key_id=principal.key_id,
                price=credits,
                store_result=store_result,
            )
        )
        self._log_job(job_id, resolved, credits)
        watcher = asyncio.create_task(self._watch(job_id, disconnected)) if disconnected else None
        started, outcome = time.perf_counter(), "failed"
        try:
            artifacts = await self.jobs.result(job_id)
            outcome = "succeeded"
            return job_id, credits, artifacts
        except (GenerationCancelled, asyncio.CancelledError):  # the client went away, or asked
            outcome = "cancelled"
            raise
        finally:
            if self.metrics is not None:
                seconds = time.perf_counter() - started
                task = resolved.task.value
                self.metrics.observe_generation(resolved.engine_id, task, outcome, seconds, float(credits))
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def submit(
        self, principal: Principal, request: GenerationRequest, *, per_image: float | None = None
    ) -> str:
        """Queue ``request`` as an asynchronous job whose result is kept in the ArtifactStore
        (``settings.results.retention_s``, 24 h); returns the job id (64 hex characters).

        Credits are reserved now and captured only when the job succeeds. Raises what
        ``prepare`` and ``JobClient.submit`` raise.
        """
        job_id, _ = await self.submit_priced(principal, request, per_image=per_image)
        return job_id

    async def submit_priced(
        self, principal: Principal, request: GenerationRequest, *, per_image: float | None = None
    ) -> tuple[str, Decimal]:
        """``submit`` that also returns the credits reserved for the job."""
        resolved, credits = await run_in_threadpool(self.admit, principal, request, per_image)
        job_id = await run_in_threadpool(
            functools.partial(
                self.jobs.submit,
                resolved,
                org_id=principal.org_id,
                key_id=principal.key_id,
                price=credits,
                store_result=True,
            )
        )
        self._log_job(job_id, resolved, credits)
        return job_id, credits

    async def status(self, principal: Principal, job_id: str) -> JobInfo:
        """The state and progress of a job of ``principal``'s organization (any process runs
        it). Raises ``NotFound`` (unknown, or another organization's)."""
        return await run_in_threadpool(functools.partial(self.jobs.get, job_id, org_id=principal.org_id))

    async def cancel(self, principal: Principal, job_id: str) -> str:
        """Cancel a job of ``principal``'s organization whichever process runs it
        (``JobClient.request_cancel``): ``"cancelled"`` (was queued) or ``"requested"``
        (running; it stops shortly). Raises ``NotFound``, ``JobFinished``."""
        return await run_in_threadpool(
            functools.partial(self.jobs.request_cancel, job_id, org_id=principal.org_id)
        )

    async def quote(self, request: GenerationRequest, *, per_image: float | None = None) -> Decimal:
        """The credits ``request`` would reserve (``prepare``; no moderation, nothing charged).
        Raises what ``prepare`` raises."""
        _, credits = await run_in_threadpool(self.prepare, request, per_image)
        return credits

    def _log_job(self, job_id: str, request: GenerationRequest, credits: Decimal) -> None:
        """One log line per accepted job: engine, task, size, samples, steps and credits; the
        prompt texts only with ``settings.logs.include_prompts`` (images never)."""
        prompts = ""
        if self.settings.logs.include_prompts:
            prompts = " prompts=" + json.dumps([[p.text, p.weight] for p in request.prompts])
        log.info(
            "job %s queued: engine=%s task=%s size=%sx%s samples=%d steps=%s credits=%s%s",
            job_id,
            request.engine_id,
            request.task.value,
            request.width,
            request.height,
            request.samples,
            request.steps,
            credits,
            prompts,
        )

    async def fetch(self, principal: Principal, job_id: str) -> list[Artifact] | None:
        """The stored result of an asynchronous job of ``principal``'s organization.

        ``None`` while it is queued or running; its artifacts once succeeded. Raises
        ``NotFound`` (unknown, expired, or another organization's job) or the job's own error.
        """
        return await run_in_threadpool(functools.partial(self.jobs.fetch, job_id, org_id=principal.org_id))

    async def _watch(self, job_id: str, disconnected: Callable[[], Awaitable[bool]]) -> None:
        while True:
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)
            if await disconnected():
                self.jobs.cancel(job_id)
                return
