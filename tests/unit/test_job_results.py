"""Stored results of asynchronous jobs (JobClient ``store_result`` / ``fetch`` / ``purge_expired``)
on SQLite and PostgreSQL, with a scripted in-process executor and the filesystem ArtifactStore.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, update

from stableserve.accounts import balance, create_org
from stableserve.core.types import Artifact, GenerationRequest, WeightedPrompt
from stableserve.db import migrate
from stableserve.db.base import Base, utcnow
from stableserve.db.models import Job, LedgerEntry
from stableserve.db.session import make_engine, session_factory
from stableserve.errors import GenerationCancelled, GenerationFailed, InvalidRequest, NotFound
from stableserve.jobs.client import JobClient
from stableserve.jobs.events import Cancelled, Failed, JobEvent, Queued, Started, Succeeded
from stableserve.jobs.executor import EventCallback
from stableserve.settings import JobSettings, ResultSettings, Settings
from stableserve.storage import FilesystemArtifactStore
from tests.unit.test_ledger import migrated_database

PRICE = Decimal("3")
REQUEST = GenerationRequest(
    engine_id="test-engine", prompts=(WeightedPrompt(text="x"),), width=64, height=64, steps=2, seed=1
)


class FakeExecutor:
    """Runs nothing: tests emit events with ``emit`` (delivered from another thread). Takes
    every job the dispatcher leases (unbounded capacity)."""

    def __init__(self, on_event: EventCallback):
        self.on_event = on_event
        self.running = False
        self.submitted: list[str] = []

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def submit(self, job_id: str, request: GenerationRequest) -> None:
        self.submitted.append(job_id)
        self.on_event(Queued(job_id))

    def cancel(self, job_id: str) -> None:
        pass

    def capacity(self) -> int:
        return 1000

    def health(self) -> dict:
        return {"kind": "fake", "ok": self.running, "running": 0, "queued": 0}

    def emit(self, event: JobEvent, attempt: int = 1) -> None:
        """Deliver ``event`` once the dispatcher has handed ``attempt`` of its job to this
        executor."""
        deadline = time.monotonic() + 10
        while self.submitted.count(event.job_id) < attempt and time.monotonic() < deadline:
            time.sleep(0.005)
        thread = threading.Thread(target=self.on_event, args=(event,))
        thread.start()
        thread.join()


class BrokenStore(FilesystemArtifactStore):
    """A filesystem store whose writes fail (a full disk)."""

    def put(self, job_id: str, artifacts: list[Artifact]) -> None:
        raise OSError(28, "No space left on device")


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    """Settings on a fresh migrated database; every test runs on SQLite and PostgreSQL."""
    with migrated_database(request.param, tmp_path) as s:
        yield s


@pytest.fixture
def make_client(settings: Settings):
    """``make_client(store=None, **results)`` -> a started JobClient over a FakeExecutor."""
    clients: list[JobClient] = []

    def make(store=None, **results) -> JobClient:
        s = settings.model_copy(update={"results": ResultSettings(**results)}) if results else settings
        s = s.model_copy(update={"jobs": JobSettings(drain_s=0.5)})  # fake runs never end by themselves
        client = JobClient(s, session_factory(s), FakeExecutor, store=store)
        client.start_sync()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.stop_sync()


def _org(settings: Settings, name: str = "acme", credits: int = 100) -> str:
    with session_factory(settings).begin() as s:
        return create_org(s, name, credits=credits).id


def _balance(settings: Settings, org: str) -> Decimal:
    with session_factory(settings).begin() as s:
        return balance(s, org)


def _ledger_kinds(settings: Settings, job_id: str) -> list[str]:
    with session_factory(settings).begin() as s:
        return sorted(s.execute(select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id)).scalars())


def _set(settings: Settings, job_id: str, **values) -> None:
    with session_factory(settings).begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def _artifacts() -> list[Artifact]:
    return [
        Artifact(index=0, seed=5, width=64, height=64, data=b"\x89PNG zero"),
        Artifact(index=1, seed=6, width=64, height=64, data=b"\x89PNG one"),
    ]


def _submit(client: JobClient, org: str, store_result: bool = True) -> str:
    return client.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=store_result)


def _folder(client: JobClient, job_id: str) -> Path:
    return client.settings.results_dir / job_id[:2] / job_id


def test_succeeded_result_is_fetchable_repeatedly_and_charged_once(settings, make_client) -> None:
    client = make_client()
    executor: FakeExecutor = client.executor  # type: ignore[assignment]
    org = _org(settings)
    job_id = _submit(client, org)
    assert client.fetch(job_id, org_id=org) is None  # queued
    executor.emit(Started(job_id))
    assert client.fetch(job_id, org_id=org) is None  # running
    assert client.get(job_id).state == "running"

    async def subscribed_then_succeeded() -> list[Artifact]:
        waiter = asyncio.ensure_future(client.result(job_id))
        await asyncio.sleep(0.05)  # the waiter subscribes before the job ends
        await asyncio.to_thread(executor.emit, Succeeded(job_id, _artifacts()))
        return await asyncio.wait_for(waiter, 10)

    assert asyncio.run(subscribed_then_succeeded()) == _artifacts()  # a subscriber gets the bytes
    assert client.health()["live_jobs"] == 0  # the bytes left memory: the store has them
    assert (_folder(client, job_id) / "0.png").read_bytes() == b"\x89PNG zero"
    for _ in range(3):
        assert client.fetch(job_id, org_id=org) == _artifacts()
    # a later waiter reads the stored result too
    assert asyncio.run(asyncio.wait_for(client.result(job_id), 10)) == _artifacts()
    info = client.get(job_id, org_id=org)
    assert info.state == "succeeded" and info.store_result is True
    assert info.finished_at is not None and info.expires_at == info.finished_at + timedelta(days=1)
    assert [a["index"] for a in info.artifacts] == [0, 1]
    assert _balance(settings, org) == Decimal(100) - PRICE
    assert _ledger_kinds(settings, job_id) == ["capture", "reserve"]


def test_other_org_unknown_malformed_and_synchronous_jobs_are_not_found(settings, make_client) -> None:
    client = make_client()
    executor: FakeExecutor = client.executor  # type: ignore[assignment]
    org, other = _org(settings), _org(settings, "other")
    job_id, sync_id = _submit(client, org), _submit(client, org, store_result=False)
    for event in (Succeeded(job_id, _artifacts()), Succeeded(sync_id, _artifacts())):
        executor.emit(event)
    for bad_id, bad_org in [
        (job_id, other),
        ("0" * 64, org),
        ("../" + job_id[3:], org),
        (job_id.upper(), org),
        (sync_id, org),
    ]:
        with pytest.raises(NotFound) as err:
            client.fetch(bad_id, org_id=bad_org)
        assert err.value.param == "id"
    assert client.get(sync_id).store_result is False and client.get(sync_id).expires_at is None
    assert not _folder(client, sync_id).exists()  # synchronous jobs store nothing
    assert asyncio.run(asyncio.wait_for(client.result(sync_id), 10)) == _artifacts()  # from memory
    assert client.fetch(job_id, org_id=org) == _artifacts()  # the owner still gets it


def test_failed_and_cancelled_jobs_raise_their_errors_until_retention(settings, make_client) -> None:
    client = make_client()
    executor: FakeExecutor = client.executor  # type: ignore[assignment]
    org = _org(settings)
    invalid, crashed, cancelled = (_submit(client, org) for _ in range(3))
    executor.emit(Failed(invalid, "invalid_prompts", "prompts: bad", "text_prompts", "InvalidRequest"))
    executor.emit(Failed(crashed, "worker_crashed", "The worker crashed."))  # queued again: one retry
    executor.emit(Failed(crashed, "worker_crashed", "The worker crashed."), attempt=2)  # failed for good
    executor.emit(Cancelled(cancelled))
    with pytest.raises(InvalidRequest) as err:
        client.fetch(invalid, org_id=org)
    assert (err.value.code, err.value.message) == ("invalid_prompts", "prompts: bad")
    with pytest.raises(GenerationFailed) as failed:
        client.fetch(crashed, org_id=org)
    assert failed.value.code == "worker_crashed"
    with pytest.raises(GenerationCancelled):
        client.fetch(cancelled, org_id=org)
    assert _balance(settings, org) == Decimal(100)  # all released
    _set(settings, crashed, finished_at=utcnow() - timedelta(days=1, seconds=1))
    with pytest.raises(NotFound):
        client.fetch(crashed, org_id=org)


def test_expired_or_missing_results_are_not_found_and_deleted(settings, make_client) -> None:
    client = make_client()
    executor: FakeExecutor = client.executor  # type: ignore[assignment]
    org = _org(settings)
    expired, missing = _submit(client, org), _submit(client, org)
    executor.emit(Succeeded(expired, _artifacts()))
    executor.emit(Succeeded(missing, _artifacts()))
    _set(settings, expired, expires_at=utcnow() - timedelta(seconds=1))
    assert _folder(client, expired).exists()
    with pytest.raises(NotFound):
        client.fetch(expired, org_id=org)
    assert not _folder(client, expired).exists()  # deleted right then
    assert client.get(expired).expires_at is None
    with pytest.raises(NotFound):
        client.fetch(expired, org_id=org)
    assert client.store.delete(missing) is True  # bytes gone, row still unexpired
    with pytest.raises(NotFound):
        client.fetch(missing, org_id=org)
    assert client.get(missing).expires_at is None
    with pytest.raises(NotFound):
        asyncio.run(asyncio.wait_for(client.result(missing), 10))
    assert _balance(settings, org) == Decimal(100) - 2 * PRICE  # the charge stands


def test_store_failure_fails_the_job_and_releases_its_credits(settings, make_client, tmp_path) -> None:
    client = make_client(store=BrokenStore(tmp_path / "broken"))
    executor: FakeExecutor = client.executor  # type: ignore[assignment]
    org = _org(settings)
    job_id = _submit(client, org)
    executor.emit(Started(job_id))

    async def waiter_sees_failure() -> None:
        waiter = asyncio.ensure_future(client.result(job_id))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(executor.emit, Succeeded(job_id, _artifacts()))
        with pytest.raises(GenerationFailed) as err:
            await asyncio.wait_for(waiter, 10)
        assert err.value.code == "server_error"

    asyncio.run(waiter_sees_failure())
    info = client.get(job_id)
    assert (info.state, info.error_code, info.expires_at) == ("failed", "server_error", None)
    assert _balance(settings, org) == Decimal(100)
    assert _ledger_kinds(settings, job_id) == ["release", "reserve"]
    with pytest.raises(GenerationFailed):
        client.fetch(job_id, org_id=org)
    assert not (tmp_path / "broken").exists()


def test_purge_expired_removes_expired_results_and_orphans(settings, make_client) -> None:
    client = make_client()
    executor: FakeExecutor = client.executor  # type: ignore[assignment]
    org = _org(settings)
    old, fresh = _submit(client, org), _submit(client, org)
    executor.emit(Succeeded(old, _artifacts()))
    executor.emit(Succeeded(fresh, _artifacts()))
    _set(settings, old, expires_at=utcnow() - timedelta(minutes=1))
    orphan = "ab" * 32  # files no row accounts for, stored long ago
    client.store.put(orphan, _artifacts())
    meta_path = _folder(client, orphan) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "stored_at": "2000-01-01T00:00:00+00:00"}))
    assert client.purge_expired() == 2
    assert not _folder(client, old).exists() and not _folder(client, orphan).exists()
    assert client.get(old).expires_at is None and client.get(old).state == "succeeded"
    assert client.fetch(fresh, org_id=org) == _artifacts()
    assert client.purge_expired() == 0
    with pytest.raises(NotFound):
        client.fetch(old, org_id=org)


def test_purge_runs_at_start_and_periodically(settings, make_client) -> None:
    first = make_client()
    org = _org(settings)
    at_start, periodic = _submit(first, org), _submit(first, org)
    for job_id in (at_start, periodic):
        first.executor.emit(Succeeded(job_id, _artifacts()))  # type: ignore[union-attr]
    first.stop_sync()
    _set(settings, at_start, expires_at=utcnow() - timedelta(seconds=1))
    client = make_client(purge_interval_s=0.05)  # a new process on the same database
    assert not _folder(client, at_start).exists()  # purged by start_sync
    assert client.fetch(periodic, org_id=org) == _artifacts()
    _set(settings, periodic, expires_at=utcnow() - timedelta(seconds=1))
    deadline = time.monotonic() + 10
    while _folder(client, periodic).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _folder(client, periodic).exists()  # purged by the background thread
    thread = client._results._thread
    assert thread is not None and thread.daemon
    client.stop_sync()
    assert not thread.is_alive()


def _schema_diff(settings: Settings) -> list:
    with make_engine(settings).connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def test_migration_0002_matches_the_models_and_downgrades(settings) -> None:
    assert migrate.current_revision(settings) == migrate.head_revision()
    engine = make_engine(settings)
    assert _schema_diff(settings) == []
    cfg = migrate.alembic_config(settings)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert "store_result" not in columns and "expires_at" not in columns
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    assert migrate.current_revision(settings) == migrate.head_revision()
    assert _schema_diff(settings) == []
