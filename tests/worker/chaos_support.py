"""Shared pieces of the chaos tests (``test_chaos.py``: LocalExecutor workers killed;
``test_chaos_ray.py``: Ray Serve replicas killed): the demo work load, the settings and
organization on a migrated database, waiting until every job row is final, and the checks
that the job table, the ledger and what callers got agree (issue 9, "Done when").
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from stableserve.accounts import create_org, summary
from stableserve.core.engines import load_registry
from stableserve.core.pricing import price
from stableserve.core.types import GenerationRequest, ImageInput, Task, WeightedPrompt
from stableserve.core.validation import resolve
from stableserve.db.models import Job, LedgerEntry
from stableserve.errors import StableServeError
from stableserve.jobs.client import JobClient
from stableserve.settings import Settings

UPSCALER = "esrgan-v1-x2plus"
SDXL = "stable-diffusion-xl-beta-v2-2-2"


def build_requests(count: int, *, size: int = 512, steps: int = 4) -> list[tuple[GenerationRequest, Decimal]]:
    """``count`` resolved demo requests with their prices, alternating an SDXL demo
    text-to-image (even index: ``size`` px square, ``steps`` to ``steps + 4`` steps) and an
    ESRGAN 2x upscale of a 64 px picture (odd index: milliseconds)."""
    registry = load_registry("demo")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buf, "PNG")
    upscaler, sdxl = registry.get(UPSCALER), registry.get(SDXL)
    out = []
    for i in range(count):
        if i % 2:
            request = GenerationRequest(
                engine_id=upscaler.id,
                task=Task.UPSCALE,
                init_image=ImageInput(data=buf.getvalue()),
                width=128,
            )
            spec = upscaler
        else:
            request = GenerationRequest(
                engine_id=sdxl.id,
                prompts=(WeightedPrompt(text=f"fox {i}"),),
                width=size,
                height=size,
                steps=steps + i % 5,
                seed=i + 1,
            )
            spec = sdxl
        resolved = resolve(request, spec)
        out.append((resolved, Decimal(str(price(spec, resolved)))))
    return out


def chaos_settings(base: Settings, stableserve_home: Path, **update: Any) -> Settings:
    """``base`` (from ``migrated_database``) on the demo engines with ``update`` applied; its
    home shares the session's demo pipelines (``<stableserve_home>/demo``, a symlink)."""
    settings = base.model_copy(update={"engines": "demo", **update})
    settings.home.mkdir(parents=True, exist_ok=True)
    (stableserve_home / "demo").mkdir(exist_ok=True)
    (settings.home / "demo").symlink_to(stableserve_home / "demo", target_is_directory=True)
    return settings


def new_org(sessions: sessionmaker[Session], credits: int = 10_000) -> str:
    """Create the organization ``chaos`` with ``credits``; returns its id."""
    with sessions.begin() as s:
        return create_org(s, "chaos", credits=credits).id


async def submit_load(
    client: JobClient,
    org: str,
    work: list[tuple[GenerationRequest, Decimal]],
    rng: random.Random,
    *,
    until: Callable[[], bool] | None = None,
    pause_s: tuple[float, float] = (0.1, 0.5),
    result_timeout_s: float = 120.0,
) -> dict[str, object]:
    """Submit ``work`` one job every ``pause_s`` seconds (uniform; every third job asynchronous,
    ``store_result``) and wait for the synchronous ones; stops submitting early once ``until()``
    is true. Returns job id -> artifacts or the domain error (``None`` for async jobs)."""
    outcomes: dict[str, object] = {}
    waiters: dict[str, asyncio.Task] = {}
    for i, (request, cost) in enumerate(work):
        if until is not None and until():
            break
        store = i % 3 == 0
        job_id = await asyncio.to_thread(
            client.submit, request, org_id=org, key_id=None, price=cost, store_result=store
        )
        outcomes[job_id] = None
        if not store:
            waiters[job_id] = asyncio.ensure_future(client.result(job_id))
        await asyncio.sleep(rng.uniform(*pause_s))
    for job_id, waiter in waiters.items():
        try:
            outcomes[job_id] = await asyncio.wait_for(waiter, result_timeout_s)
        except StableServeError as exc:
            outcomes[job_id] = exc
    return outcomes


def wait_until_final(sessions: sessionmaker[Session], org: str, timeout_s: float) -> None:
    """Wait until no job of ``org`` is ``queued`` or ``running`` (async jobs, retries); fails
    the test with the state counts after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        with sessions.begin() as s:
            states = dict(s.execute(select(Job.id, Job.state).where(Job.org_id == org)).all())
        if all(state not in ("queued", "running") for state in states.values()):
            return
        assert time.monotonic() < deadline, Counter(states.values())
        time.sleep(0.1)


def check_jobs_and_ledger(
    client: JobClient, sessions: sessionmaker[Session], org: str, outcomes: dict[str, object]
) -> Counter:
    """Assert the chaos invariants for ``org``'s jobs, whose ids are ``outcomes``' keys:

    - every job is final (succeeded, failed or cancelled), a synchronous one on its first
      attempt, an asynchronous one on at most its second;
    - a succeeded job has one reserve and one capture; a failed or cancelled one a reserve and
      a release, never a capture (no job charged twice, every failure's credits released);
    - no credits stay reserved and grants minus captures equal the balance;
    - what the caller got (``result`` for synchronous jobs, ``fetch`` for asynchronous ones)
      matches the row: artifacts for a success, the row's error code otherwise.

    Returns the count of ``(state, error_code, attempt, store_result)`` over the rows."""
    with sessions.begin() as s:
        rows = {r.id: r for r in s.execute(select(Job).where(Job.org_id == org)).scalars()}
        entries = s.execute(
            select(LedgerEntry.job_id, LedgerEntry.kind).where(LedgerEntry.org_id == org)
        ).all()
        totals = summary(s, org)
    kinds: dict[str, list[str]] = defaultdict(list)
    for job_id, kind in entries:
        if job_id is not None:
            kinds[job_id].append(kind)
    assert set(rows) == set(outcomes)
    for job_id, row in rows.items():
        assert row.state in ("succeeded", "failed", "cancelled"), (job_id, row.state)
        assert row.attempt <= (2 if row.store_result else 1), (job_id, row.attempt)
        expected = ["capture", "reserve"] if row.state == "succeeded" else ["release", "reserve"]
        assert sorted(kinds[job_id]) == expected, (job_id, row.state, kinds[job_id])
        outcome = outcomes[job_id]
        if row.state == "succeeded":
            if row.store_result:
                outcome = client.fetch(job_id, org_id=org)
            assert isinstance(outcome, list) and outcome, (job_id, outcome)
        else:
            if row.store_result:
                with pytest.raises(StableServeError) as err:
                    client.fetch(job_id, org_id=org)
                outcome = err.value
            assert isinstance(outcome, StableServeError) and outcome.code == row.error_code, (
                job_id,
                outcome,
            )
    captures = Counter(job_id for job_id, kind in entries if kind == "capture")
    assert all(n == 1 for n in captures.values())
    assert all(rows[job_id].state == "succeeded" for job_id in captures)
    assert totals["reserved"] == 0
    assert totals["granted"] - totals["captured"] == totals["balance"]
    return Counter((r.state, r.error_code, r.attempt, r.store_result) for r in rows.values())
