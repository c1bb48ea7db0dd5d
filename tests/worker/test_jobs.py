"""JobClient over a real LocalExecutor and a real (SQLite) database; plus JobClient logic with a
scripted executor, and LocalExecutor-specific failure handling (worker crash, broken startup).

One client with one worker process serves the real-worker tests (spawned workers import torch:
a few seconds each); the scripted-executor tests use their own small databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from stableserve.accounts import ledger
from stableserve.accounts.orgs import create_org
from stableserve.core.engines import DimensionRule, EngineRegistry, EngineSource, load_registry
from stableserve.core.pricing import price
from stableserve.core.types import Artifact, GenerationRequest, WeightedPrompt
from stableserve.core.validation import resolve
from stableserve.db import migrate, session_factory
from stableserve.db.models import Job
from stableserve.errors import (
    EngineNotReady,
    GenerationCancelled,
    GenerationFailed,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    Overloaded,
)
from stableserve.jobs import recovery
from stableserve.jobs.client import JobClient
from stableserve.jobs.events import Cancelled, Failed, JobEvent, Progress, Queued, Started, Succeeded
from stableserve.jobs.executor import EventCallback, Executor
from stableserve.jobs.local import LocalExecutor
from stableserve.settings import JobSettings, Settings

ENGINE = "stable-diffusion-xl-beta-v2-2-2"
MISSING = "missing-weights"
SMALL = DimensionRule(kind="pixel_range", multiple=64, min_side=64, min_pixels=4096, max_pixels=1_048_576)
TIMEOUT_S = 240.0


# -- fixtures --------------------------------------------------------------------------------
def write_registry(folder: Path) -> Path:
    """The demo registry at 64 px plus ``missing-weights`` (a local engine whose folder is absent)."""
    demo = load_registry("demo")
    engines = [
        e if e.dimensions.kind == "any" else e.model_copy(update={"dimensions": SMALL}) for e in demo.engines
    ]
    missing = demo.get("stable-diffusion-v1-5").model_copy(
        update={
            "id": MISSING,
            "source": EngineSource(kind="local", path=str(folder / "absent")),
            "dimensions": SMALL,
        }
    )
    path = folder / "engines.yaml"
    path.write_text(yaml.safe_dump({"engines": [e.model_dump(mode="json") for e in [*engines, missing]]}))
    return path


def new_settings(home: Path, db: Path, **jobs) -> Settings:
    """Settings with the session's home (demo pipelines) and a database of the test's own."""
    settings = Settings(home=home, database_url=f"sqlite:///{db}", jobs=JobSettings(**jobs))
    migrate.upgrade(settings)
    return settings


def new_org(settings: Settings, credits: Decimal | int = 100) -> str:
    with session_factory(settings).begin() as session:
        return create_org(session, f"org-{uuid.uuid4().hex[:12]}", credits=credits).id


def balance(settings: Settings, org_id: str) -> Decimal:
    with session_factory(settings).begin() as session:
        return ledger.balance(session, org_id)


def run(coro, timeout: float = TIMEOUT_S):
    """Run a coroutine on a fresh event loop with a time limit."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def registry_path(tmp_path_factory) -> Path:
    return write_registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def registry(registry_path: Path) -> EngineRegistry:
    return load_registry(str(registry_path))


@pytest.fixture(scope="module")
def make_request(registry: EngineRegistry) -> Callable[..., tuple[GenerationRequest, Decimal]]:
    """``make_request(steps=2, engine=ENGINE)`` -> (resolved request, price in credits)."""

    def make(steps: int = 2, engine: str = ENGINE, samples: int = 1) -> tuple[GenerationRequest, Decimal]:
        spec = registry.get(engine)
        req = GenerationRequest(
            engine_id=engine,
            prompts=(WeightedPrompt(text="x"),),
            width=64,
            height=64,
            steps=steps,
            samples=samples,
            seed=1,
        )
        resolved = resolve(req, spec)
        return resolved, Decimal(str(price(spec, resolved)))

    return make


@pytest.fixture(scope="module")
def real(stableserve_home: Path, tmp_path_factory, registry_path: Path):
    """(client, settings): a started JobClient over one LocalExecutor worker.

    The worker (and each restart of it) runs torch on one thread (``OMP_NUM_THREADS``, which
    spawned workers inherit), as the chaos tests do: these 64 px jobs are tiny operators, and
    with two threads any other busy process on a two-core machine stalls every parallel region
    (a 60-step job then took minutes instead of about a second)."""
    settings = new_settings(stableserve_home, tmp_path_factory.mktemp("jobs-db") / "jobs.db", workers=1)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        client = JobClient(
            settings,
            session_factory(settings),
            LocalExecutor.factory(settings, str(registry_path), stop_grace_s=5.0),
        )
        assert client.start_sync() == 0
        yield client, settings
        client.stop_sync()


# -- JobClient over the LocalExecutor --------------------------------------------------------
def test_success_captures_credits(real, make_request) -> None:
    client, settings = real
    org = new_org(settings)
    request, cost = make_request(steps=2, samples=2)
    job_id = client.submit(request, org_id=org, key_id="key-test", price=cost)
    assert len(job_id) == 64
    assert balance(settings, org) == Decimal(100) - cost  # reserved at once
    artifacts = run(client.result(job_id))
    assert [a.index for a in artifacts] == [0, 1] and artifacts[0].data.startswith(b"\x89PNG")
    info = client.get(job_id)
    assert info.state == "succeeded" and info.attempt == 1 and info.price == cost
    assert info.started_at is not None and info.finished_at is not None
    assert info.artifacts[0] == {
        "index": 0,
        "seed": 1,
        "finish_reason": "SUCCESS",
        "width": 64,
        "height": 64,
        "mime": "image/png",
    }
    with session_factory(settings).begin() as session:
        assert ledger.summary(session, org)["captured"] == cost
        job = session.get(Job, job_id)
        assert job.key_id == "key-test" and GenerationRequest.model_validate_json(job.request_json) == request
    assert balance(settings, org) == Decimal(100) - cost
    with pytest.raises(NotFound):  # images are handed out once
        run(client.result(job_id))


def test_worker_errors_release_credits(real, make_request) -> None:
    client, settings = real
    org = new_org(settings)
    request, cost = make_request(engine=MISSING)
    job_id = client.submit(request, org_id=org, key_id=None, price=cost)
    with pytest.raises(EngineNotReady, match="not ready"):
        run(client.result(job_id))
    info = client.get(job_id)
    assert (info.state, info.error_code) == ("failed", "engine_not_ready")
    # a request that breaks inside the pipeline (unresolved: no sampler) -> generic server_error
    broken = request.model_copy(update={"engine_id": ENGINE, "sampler": None})
    job2 = client.submit(broken, org_id=org, key_id=None, price=Decimal("0.5"))
    with pytest.raises(GenerationFailed) as err:
        run(client.result(job2))
    assert err.value.code == "server_error" and "unexpected" in err.value.message
    assert client.get(job2).error_code == "server_error"
    assert balance(settings, org) == Decimal(100)
    with session_factory(settings).begin() as session:
        assert ledger.summary(session, org)["released"] == cost + Decimal("0.5")


def test_cancel_mid_run_releases_and_worker_stays_usable(real, make_request) -> None:
    client, settings = real
    org = new_org(settings)
    long, cost = make_request(steps=150)

    async def scenario() -> list[JobEvent]:
        running = client.submit(long, org_id=org, key_id=None, price=cost)
        queued = client.submit(long, org_id=org, key_id=None, price=cost)
        async with contextlib.aclosing(client.events(running)) as events:
            seen = [e async for e in _until(events, Progress)]
        assert client.get(running).state == "running" and client.get(running).progress is not None
        assert client.cancel(queued) and client.cancel(running)
        for job in (queued, running):
            with pytest.raises(GenerationCancelled):
                await client.result(job)
        assert client.cancel(running) is False  # finished: nothing to cancel
        assert client.get(queued).started_at is None  # never ran
        return seen

    seen = run(scenario())
    assert [type(e) for e in seen[:2]] == [Queued, Started]
    assert balance(settings, org) == Decimal(100)
    quick, cost = make_request(steps=2)
    job_id = client.submit(quick, org_id=org, key_id=None, price=cost)
    assert len(run(client.result(job_id))) == 1


def test_killed_worker_fails_job_releases_and_restarts(real, make_request) -> None:
    client, settings = real
    org = new_org(settings)
    long, cost = make_request(steps=150)

    async def crash() -> None:
        job_id = client.submit(long, org_id=org, key_id=None, price=cost)
        async with contextlib.aclosing(client.events(job_id)) as events:
            async for _ in _until(events, Progress):
                pass
        pid = client.executor.pid_of(job_id)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(GenerationFailed) as err:
            await client.result(job_id)
        assert err.value.code == "worker_crashed"
        assert client.get(job_id).error_code == "worker_crashed"

    run(crash())
    assert balance(settings, org) == Decimal(100)
    quick, cost = make_request(steps=2)
    job_id = client.submit(quick, org_id=org, key_id=None, price=cost)
    assert len(run(client.result(job_id))) == 1  # served by the restarted worker
    health = client.health()["executor"]
    assert health["ok"] and health["restarts"] >= 1


def test_killed_worker_retries_an_async_job_once(real, make_request) -> None:
    """A ``store_result`` job whose worker dies goes back to the queue and runs again (attempt
    2); it is charged once."""
    client, settings = real
    org = new_org(settings)
    long, cost = make_request(steps=60)

    async def crash_once() -> list[Artifact]:
        job_id = client.submit(long, org_id=org, key_id=None, price=cost, store_result=True)
        async with contextlib.aclosing(client.events(job_id)) as events:
            async for _ in _until(events, Progress):
                pass
        pid = client.executor.pid_of(job_id)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        artifacts = await client.result(job_id)  # from the second attempt
        info = client.get(job_id)
        assert (info.state, info.attempt, info.store_result) == ("succeeded", 2, True)
        assert client.fetch(job_id, org_id=org) == artifacts
        return artifacts

    assert len(run(crash_once())) == 1
    assert balance(settings, org) == Decimal(100) - cost
    with session_factory(settings).begin() as session:
        totals = ledger.summary(session, org)
    assert (totals["captured"], totals["released"], totals["reserved"]) == (cost, 0, 0)


def test_insufficient_credits_queues_nothing(real, make_request) -> None:
    client, settings = real
    org = new_org(settings, credits=0)
    request, cost = make_request()
    with pytest.raises(InsufficientCredits):
        client.submit(request, org_id=org, key_id=None, price=cost)
    with session_factory(settings).begin() as session:
        assert session.query(Job).filter_by(org_id=org).count() == 0
    assert balance(settings, org) == 0


async def _until(events, kind: type):
    """Yield events up to and including the first ``kind``."""
    async for event in events:
        yield event
        if isinstance(event, kind):
            return


# -- JobClient logic with a scripted executor ------------------------------------------------
class ScriptedExecutor:
    """An ``Executor`` that runs nothing: tests emit events with ``emit`` (from another thread).
    Takes every job the dispatcher leases (unbounded capacity)."""

    def __init__(self, on_event: EventCallback):
        self.on_event = on_event
        self.submitted: list[str] = []
        self.cancelled: list[str] = []
        self.running = False
        self.slots = 1000  # what capacity() answers

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def submit(self, job_id: str, request: GenerationRequest) -> None:
        if not self.running:
            raise RuntimeError("not running")
        self.submitted.append(job_id)
        self.on_event(Queued(job_id))

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    def capacity(self) -> int:
        return self.slots

    def health(self) -> dict:
        return {"kind": "scripted", "ok": self.running, "running": 0, "queued": len(self.submitted)}

    def wait_submitted(self, count: int = 1, job_id: str | None = None) -> None:
        """Wait until ``count`` jobs (or attempts of ``job_id``) were handed to this executor."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = self.submitted.count(job_id) if job_id is not None else len(self.submitted)
            if done >= count:
                return
            time.sleep(0.005)
        raise AssertionError(f"the dispatcher did not submit {count} job(s): {self.submitted}")

    def emit(self, event: JobEvent) -> None:
        """Deliver ``event`` (from another thread) once its job was handed to this executor."""
        self.wait_submitted(1, event.job_id)
        thread = threading.Thread(target=self.on_event, args=(event,))
        thread.start()
        thread.join()


@pytest.fixture
def scripted(stableserve_home: Path, tmp_path: Path):
    """Factory of started JobClients over ScriptedExecutors on one fresh database."""
    db = tmp_path / "scripted.db"
    clients: list[JobClient] = []

    def make(**jobs) -> tuple[JobClient, ScriptedExecutor, Settings]:
        jobs.setdefault("drain_s", 0.5)  # scripted runs never end by themselves
        settings = new_settings(stableserve_home, db, **jobs)
        client = JobClient(settings, session_factory(settings), ScriptedExecutor, retain_results=2)
        client.start_sync()
        clients.append(client)
        assert isinstance(client.executor, Executor)
        return client, client.executor, settings  # type: ignore[return-value]

    yield make
    for client in clients:
        client.stop_sync()


def _artifact(index: int = 0) -> Artifact:
    return Artifact(index=index, seed=5, width=64, height=64, data=b"\x89PNG fake")


def test_admission_control_refuses_over_max_queue(scripted, make_request) -> None:
    client, executor, settings = scripted(max_queue=2)
    org = new_org(settings)
    request, cost = make_request()
    first = client.submit(request, org_id=org, key_id=None, price=cost)
    client.submit(request, org_id=org, key_id=None, price=cost)
    with pytest.raises(Overloaded):
        client.submit(request, org_id=org, key_id=None, price=cost)
    executor.wait_submitted(2)
    time.sleep(0.05)
    assert len(executor.submitted) == 2
    assert balance(settings, org) == Decimal(100) - 2 * cost  # nothing reserved for the refused one
    executor.emit(Started(first))
    executor.emit(Succeeded(first, [_artifact()]))
    client.submit(request, org_id=org, key_id=None, price=cost)  # room again


@pytest.mark.skipif("/" not in recovery.HOST, reason="no pid namespace id here: recovery waits for the lease")
def test_restart_recovery_fails_unfinished_jobs_and_releases(scripted, make_request) -> None:
    old, executor, settings = scripted()
    org = new_org(settings)
    request, cost = make_request()
    running = old.submit(request, org_id=org, key_id=None, price=cost)
    executor.emit(Started(running))
    executor.slots = 0  # the next job stays queued
    queued = old.submit(request, org_id=org, key_id=None, price=cost)
    assert old.get(running).state == "running" and old.get(queued).state == "queued"
    assert balance(settings, org) == Decimal(100) - 2 * cost
    old.abandon()  # the server process dies: nothing is settled
    assert old.get(running).state == "running"
    new, _, _ = scripted()  # a new server process on the same database and host: recovers at start
    for job_id in (queued, running):
        info = new.get(job_id)
        assert (info.state, info.error_code) == ("failed", "server_restarted")
    assert balance(settings, org) == Decimal(100)
    with pytest.raises(GenerationFailed) as err:  # a waiter on the new process gets the stored failure
        run(new.result(queued), timeout=10)
    assert err.value.code == "server_restarted"


def test_terminal_events_settle_once_and_map_to_domain_errors(scripted, make_request) -> None:
    client, executor, settings = scripted()
    org = new_org(settings)
    request, cost = make_request()
    ids = [client.submit(request, org_id=org, key_id=None, price=cost) for _ in range(3)]
    executor.emit(Failed(ids[0], "invalid_prompts", "prompts: bad", "text_prompts", "InvalidRequest"))
    with pytest.raises(InvalidRequest) as err:
        run(client.result(ids[0]), timeout=10)
    assert (err.value.code, err.value.param) == ("invalid_prompts", "text_prompts")
    assert err.value.message == "prompts: bad"
    executor.emit(Cancelled(ids[1]))
    with pytest.raises(GenerationCancelled):
        run(client.result(ids[1]), timeout=10)
    assert client.get(ids[1]).state == "cancelled"
    executor.emit(Succeeded(ids[2], [_artifact(0), _artifact(1)]))
    executor.emit(Cancelled(ids[2]))  # a late duplicate changes nothing
    assert len(run(client.result(ids[2]), timeout=10)) == 2
    assert client.get(ids[2]).state == "succeeded"
    assert balance(settings, org) == Decimal(100) - cost
    # after the result was taken, the stored outcome still answers
    with pytest.raises(InvalidRequest):
        run(client.result(ids[0]), timeout=10)
    with pytest.raises(NotFound):
        client.get(ids[0], org_id="org-other")
    assert client.cancel(ids[0]) is False


def test_results_are_bounded_and_disconnect_cancels(scripted, make_request) -> None:
    client, executor, settings = scripted()
    org = new_org(settings)
    request, cost = make_request()
    ids = [client.submit(request, org_id=org, key_id=None, price=cost) for _ in range(3)]
    for job_id in ids:
        executor.emit(Succeeded(job_id, [_artifact()]))
    assert client.health()["retained_results"] == 2  # retain_results=2: the oldest went
    with pytest.raises(NotFound):
        run(client.result(ids[0]), timeout=10)
    assert len(run(client.result(ids[2]), timeout=10)) == 1

    job_id = client.submit(request, org_id=org, key_id=None, price=cost)
    executor.wait_submitted(1, job_id)  # running: the executor gets the cancel

    async def gone() -> bool:
        return True

    async def wait_then_cancelled() -> None:
        waiter = asyncio.ensure_future(client.result(job_id, disconnected=gone, poll_s=0.01))
        while job_id not in executor.cancelled:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(executor.emit, Cancelled(job_id))
        with pytest.raises(GenerationCancelled):
            await waiter

    run(wait_then_cancelled(), timeout=10)
    assert client.get(job_id).state == "cancelled"


def test_submit_needs_a_started_client(stableserve_home: Path, tmp_path: Path, make_request) -> None:
    settings = new_settings(stableserve_home, tmp_path / "x.db")
    client = JobClient(settings, session_factory(settings), ScriptedExecutor)
    request, cost = make_request()
    with pytest.raises(RuntimeError):
        client.submit(request, org_id="org-x", key_id=None, price=cost)
    assert run(client.start(), timeout=10) == 0
    run(client.stop(), timeout=10)
    with pytest.raises(Overloaded):
        client.submit(request, org_id="org-x", key_id=None, price=cost)


# -- LocalExecutor specifics -----------------------------------------------------------------
def test_broken_worker_startup_fails_queued_jobs(stableserve_home: Path, tmp_path: Path, make_request):
    events: list[JobEvent] = []
    executor = LocalExecutor(
        Settings(home=stableserve_home), str(tmp_path / "no-registry.yaml"), events.append, workers=1
    )
    executor.start()
    try:
        executor.submit("job-1", make_request()[0])
        deadline = time.monotonic() + 60
        while not any(isinstance(e, Failed) for e in events) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [type(e) for e in events] == [Queued, Failed]
        assert events[1].code == "server_error"
        assert "no-registry.yaml" in (executor.health()["last_error"] or "")
    finally:
        executor.stop()


def test_a_broken_executor_fails_waiting_sync_jobs_fast(stableserve_home: Path, tmp_path: Path, make_request):
    """Workers that cannot start: a synchronous job waiting here fails with ``server_error`` and
    its credits are released, instead of waiting for a worker that never comes."""
    settings = new_settings(stableserve_home, tmp_path / "jobs.db", workers=1)
    factory = LocalExecutor.factory(settings, str(tmp_path / "no-registry.yaml"))
    client = JobClient(settings, session_factory(settings), factory)
    client.start_sync()
    try:
        org = new_org(settings, 10)
        request, cost = make_request()
        job_id = client.submit(request, org_id=org, key_id=None, price=cost)
        with pytest.raises(GenerationFailed) as err:
            run(client.result(job_id), timeout=60)
        assert err.value.code == "server_error"
        assert balance(settings, org) == 10
    finally:
        client.stop_sync()


class _Conn:
    """Stands in for the worker's event pipe."""

    def __init__(self) -> None:
        self.sent: list[JobEvent] = []

    def send(self, event: JobEvent) -> None:
        self.sent.append(event)


class _FakeRunner:
    def __init__(self, outcome: Exception | None = None, steps: int = 1000):
        self.outcome, self.steps = outcome, steps

    def run(self, request, *, progress, cancel):
        for i in range(self.steps):
            progress(i + 1, self.steps)
        if self.outcome is not None:
            raise self.outcome
        return [_artifact()]


def test_worker_job_loop_rate_limits_progress_and_maps_errors(make_request) -> None:
    from stableserve.jobs.worker import run_job

    payload = make_request()[0].model_dump_json()
    never = threading.Event()
    conn = _Conn()
    done = run_job(_FakeRunner(), "j", payload, never, conn)
    assert isinstance(done, Succeeded) and isinstance(conn.sent[0], Started)
    progress = [e for e in conn.sent if isinstance(e, Progress)]
    assert 1 <= len(progress) <= 5 and (progress[-1].done, progress[-1].total) == (1000, 1000)

    bad = InvalidRequest("prompts: bad", code="invalid_prompts", param="text_prompts")
    failed = run_job(_FakeRunner(bad, steps=1), "j", payload, never, _Conn())
    assert (failed.code, failed.param, failed.error) == ("invalid_prompts", "text_prompts", "InvalidRequest")
    failed = run_job(_FakeRunner(ZeroDivisionError("secret detail"), steps=1), "j", payload, never, _Conn())
    assert failed.code == "server_error" and "secret" not in failed.message

    cancelled = threading.Event()
    cancelled.set()
    conn = _Conn()
    assert isinstance(run_job(_FakeRunner(), "j", payload, cancelled, conn), Cancelled)
    assert conn.sent == []  # cancelled before it started: never runs


def test_worker_reports_engine_loads_before_the_terminal_event(make_request) -> None:
    from stableserve.jobs.events import WorkerStats
    from stableserve.jobs.worker import run_job

    class _Cache:
        def __init__(self):
            self.loads = [("sd-x", 1.25)]

        def drain_loads(self):
            loads, self.loads = self.loads, []
            return loads

    runner = _FakeRunner(steps=1)
    runner.cache = _Cache()
    conn = _Conn()
    payload = make_request()[0].model_dump_json()
    assert isinstance(run_job(runner, "j", payload, threading.Event(), conn), Succeeded)
    stats = conn.sent[-1]
    assert isinstance(stats, WorkerStats) and stats.loads == (("sd-x", 1.25),) and stats.device == "cpu"
    run_job(runner, "j", payload, threading.Event(), conn)
    assert conn.sent[-1].loads == ()  # drained: a cached engine is not a load
