"""Job leases, fencing, fair dispatch, recovery and draining (``jobs.leases``, ``jobs.dispatcher``,
``JobClient``) on SQLite and PostgreSQL, with scripted in-process executors.

Several ``JobClient``s on one database stand for several server processes: each has its own
session factory (engine and connection pool), executor and lease owner id. A client
``abandon()``ed stands for a process killed with SIGKILL. Owner ids of another host
(``far-a:1:...``) make recovery wait for the lease to run out; owner ids of this process
are known dead at once when their client is gone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from decimal import Decimal

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from stableserve.accounts import create_org, summary
from stableserve.core.types import Artifact, GenerationRequest, WeightedPrompt
from stableserve.db.base import utcnow
from stableserve.db.models import Job, LedgerEntry
from stableserve.db.session import dispose, session_factory
from stableserve.errors import GenerationFailed
from stableserve.jobs import leases, recovery
from stableserve.jobs.client import JobClient
from stableserve.jobs.events import Failed, JobEvent, Started, Succeeded, is_terminal
from stableserve.jobs.executor import EventCallback, Executor
from stableserve.settings import JobSettings, Settings
from tests.unit.test_ledger import migrated_database

PRICE = Decimal("2")
REQUEST = GenerationRequest(
    engine_id="test-engine", prompts=(WeightedPrompt(text="x"),), width=64, height=64, steps=2, seed=1
)
ARTIFACTS = [Artifact(index=0, seed=1, width=64, height=64, data=b"\x89PNG fake")]


SAME_HOST = pytest.mark.skipif(
    "/" not in recovery.HOST,
    reason="no pid namespace id here: a dead holder is known only by its lease expiry",
)


class FakeExecutor:
    """Runs nothing; takes leased jobs while ``slots`` allow; tests emit the events. ``stop``
    fails what it still runs (``server_shutdown``), as the contract says."""

    def __init__(self, on_event: EventCallback):
        self.on_event = on_event
        self.submitted: list[str] = []
        self.cancelled: list[str] = []
        self.live: set[str] = set()
        self.slots = 1000
        self.running = False
        self._lock = threading.Lock()

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        for job_id in sorted(self.live):
            self.on_event(Failed(job_id, "server_shutdown", "shut down"))
        self.live.clear()

    def submit(self, job_id: str, request: GenerationRequest) -> None:
        if not self.running:
            raise RuntimeError("not running")
        with self._lock:
            assert job_id not in self.live, "a job is never in the executor twice"
            self.submitted.append(job_id)
            self.live.add(job_id)

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    def capacity(self) -> int:
        return max(0, self.slots - len(self.live))

    def health(self) -> dict:
        return {"kind": "fake", "ok": self.running, "running": len(self.live), "queued": 0}

    def wait_submitted(self, job_id: str, attempt: int = 1, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.submitted.count(job_id) < attempt:
            assert time.monotonic() < deadline, f"{job_id} attempt {attempt} never reached this executor"
            time.sleep(0.005)

    def emit(self, event: JobEvent, attempt: int = 1) -> None:
        """Deliver ``event`` (from another thread) once ``attempt`` of its job is here."""
        self.wait_submitted(event.job_id, attempt)
        if is_terminal(event):
            self.live.discard(event.job_id)
        thread = threading.Thread(target=self.on_event, args=(event,))
        thread.start()
        thread.join()


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    with migrated_database(request.param, tmp_path) as s:
        yield s


@pytest.fixture
def make_client(settings: Settings):
    """``make_client(owner=None, slots=1000, **jobs)``: a started JobClient over a FakeExecutor,
    with a session factory (engine, pool) of its own: another "process" on the database."""
    clients: list[JobClient] = []
    factories: list[sessionmaker[Session]] = []

    def make(owner: str | None = None, slots: int = 1000, **jobs) -> JobClient:
        jobs = {"heartbeat_s": 0.1, "lease_s": 5.0, "poll_s": 0.05, "drain_s": 0.5, **jobs}
        s = settings.model_copy(update={"jobs": JobSettings(**jobs)})
        dispose(s)  # the next session_factory() builds a fresh engine: this client's own
        sessions = session_factory(s)
        factories.append(sessions)

        def executor(on_event: EventCallback) -> Executor:
            fake = FakeExecutor(on_event)
            fake.slots = slots
            return fake

        client = JobClient(s, sessions, executor, owner=owner)
        client.start_sync()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.stop_sync()
    for sessions in factories:
        sessions.kw["bind"].dispose()


def fake(client: JobClient) -> FakeExecutor:
    return client.executor  # type: ignore[return-value]


def _org(settings: Settings, name: str, credits: int = 100) -> str:
    with session_factory(settings).begin() as s:
        return create_org(s, name, credits=credits).id


def _row(settings: Settings, job_id: str) -> Job:
    with session_factory(settings).begin() as s:
        return s.get(Job, job_id)


def _kinds(settings: Settings, job_id: str) -> list[str]:
    with session_factory(settings).begin() as s:
        return sorted(s.execute(select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id)).scalars())


def _wait(condition: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _state(settings: Settings, job_id: str) -> str:
    return _row(settings, job_id).state


def _expire(settings: Settings, job_id: str) -> None:
    """Make ``job_id``'s lease run out now (its holder stopped renewing it)."""
    with session_factory(settings).begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow()))


def _balanced(settings: Settings, org: str) -> dict:
    with session_factory(settings).begin() as s:
        totals = summary(s, org)
    assert totals["reserved"] == 0
    assert totals["granted"] - totals["captured"] == totals["balance"]
    return totals


# -- fairness --------------------------------------------------------------------------------
def test_dispatch_is_round_robin_across_organizations(settings, make_client) -> None:
    client = make_client(slots=0)
    a, b = _org(settings, "a"), _org(settings, "b")
    a_jobs = [client.submit(REQUEST, org_id=a, key_id=None, price=PRICE) for _ in range(10)]
    b_jobs = [client.submit(REQUEST, org_id=b, key_id=None, price=PRICE) for _ in range(2)]
    executor = fake(client)
    executor.slots = 1  # one worker from now on
    client.dispatcher.wake()
    for n in range(12):
        _wait(lambda n=n: len(executor.submitted) > n, what=f"job {n + 1} to start")
        time.sleep(0.02)
        assert len(executor.submitted) == n + 1  # one at a time
        executor.emit(Succeeded(executor.submitted[n], ARTIFACTS))
    order = executor.submitted
    assert order.index(b_jobs[0]) < order.index(a_jobs[2])  # B is not stuck behind A's backlog
    assert order[:5] == [a_jobs[0], b_jobs[0], a_jobs[1], b_jobs[1], a_jobs[2]]
    assert order[5:] == a_jobs[3:]  # FIFO within an organization
    assert _balanced(settings, a)["captured"] == 10 * PRICE


def test_fair_order_prefers_the_least_recently_served() -> None:
    heads = [("a", 1), ("b", 2), ("c", 3)]
    assert leases.fair_order(heads, {}) == ["a", "b", "c"]  # never served: oldest work first
    assert leases.fair_order(heads, {"a": 5, "b": 2}) == ["c", "b", "a"]


# -- fencing ---------------------------------------------------------------------------------
def test_a_stale_attempt_can_neither_finish_nor_charge(settings, make_client) -> None:
    """A's lease runs out while its run goes on (a long pause); B recovers and re-leases the
    jobs; A's late outcomes are fenced out; B's count, once."""
    a = make_client(heartbeat_s=30, lease_s=60)  # A renews nothing during the test
    b = make_client(slots=0)
    org = _org(settings, "acme")
    stale_success = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    stale_failure = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    for job_id in (stale_success, stale_failure):
        fake(a).emit(Started(job_id))
    fake(a).slots = 0
    for job_id in (stale_success, stale_failure):
        _expire(settings, job_id)
    _wait(
        lambda: all(_state(settings, j) == "queued" for j in (stale_success, stale_failure)), what="requeue"
    )
    fake(b).slots = 1000
    b.dispatcher.wake()
    for job_id in (stale_success, stale_failure):
        fake(b).wait_submitted(job_id)
        row = _row(settings, job_id)
        assert (row.state, row.attempt, row.lease_owner) == ("running", 2, b.owner)

    fake(a).emit(Succeeded(stale_success, ARTIFACTS))  # attempt 1, too late
    fake(a).emit(Failed(stale_failure, "server_error", "boom"))  # attempt 1, too late
    for job_id in (stale_success, stale_failure):
        row = _row(settings, job_id)
        assert (row.state, row.attempt, row.lease_owner, row.finished_at) == ("running", 2, b.owner, None)
        assert _kinds(settings, job_id) == ["reserve"]  # neither captured nor released
    assert b.store.get(stale_success) is None  # the stale attempt wrote no result

    fake(b).emit(Succeeded(stale_success, ARTIFACTS))
    fake(b).emit(Succeeded(stale_failure, ARTIFACTS))
    for job_id in (stale_success, stale_failure):
        assert _row(settings, job_id).state == "succeeded"
        assert _kinds(settings, job_id) == ["capture", "reserve"]
        assert a.fetch(job_id, org_id=org) == ARTIFACTS == b.fetch(job_id, org_id=org)
    assert _balanced(settings, org)["captured"] == 2 * PRICE


def test_a_heartbeat_finds_a_lost_lease_and_cancels_its_run(settings, make_client) -> None:
    a = make_client(heartbeat_s=30, lease_s=60)
    org = _org(settings, "acme")
    job_id = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    fake(a).wait_submitted(job_id)
    with session_factory(settings).begin() as s:  # recovered and re-leased elsewhere
        s.execute(update(Job).where(Job.id == job_id).values(attempt=2, lease_owner="far-b:1:b0b0b0b0"))
    a.dispatcher.heartbeat()
    _wait(lambda: job_id in fake(a).cancelled, what="the lost run to be cancelled")
    assert a.dispatcher.held(job_id).lost
    fake(a).emit(Succeeded(job_id, ARTIFACTS))  # dropped
    assert a.dispatcher.held(job_id) is None
    assert _kinds(settings, job_id) == ["reserve"] and _state(settings, job_id) == "running"


# -- recovery --------------------------------------------------------------------------------
def test_expired_leases_retry_an_async_job_once_then_fail_it(settings, make_client) -> None:
    """Holders on other hosts: only the lease's expiry tells they died."""
    lease = {"lease_s": 1.0, "heartbeat_s": 0.2}
    a = make_client(owner="far-a:11:aaaaaaaa", **lease)
    b = make_client(owner="far-b:22:bbbbbbbb", slots=0, **lease)
    org = _org(settings, "acme")
    async_job = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    sync_job = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE)
    fake(a).wait_submitted(async_job)
    fake(a).wait_submitted(sync_job)
    time.sleep(1.5)
    assert _state(settings, async_job) == "running"  # renewed: A is alive
    a.abandon()  # A dies
    _wait(lambda: _state(settings, async_job) == "queued", what="requeue after expiry")
    _wait(lambda: _state(settings, sync_job) == "failed", what="the sync job to fail")
    row = _row(settings, sync_job)
    assert row.error_code == "server_restarted"  # its caller died with A
    assert _kinds(settings, sync_job) == ["release", "reserve"]
    assert _kinds(settings, async_job) == ["reserve"]  # still reserved: it will run again
    fake(b).slots = 1000
    b.dispatcher.wake()
    fake(b).wait_submitted(async_job)
    assert _row(settings, async_job).attempt == 2
    b.abandon()  # its second holder dies too
    c = make_client(owner="far-c:33:cccccccc", slots=0, **lease)
    _wait(lambda: _state(settings, async_job) == "failed", what="the async job to fail")
    row = _row(settings, async_job)
    assert (row.error_code, row.attempt) == ("worker_crashed", 2)
    assert _kinds(settings, async_job) == ["release", "reserve"]  # released exactly once
    with pytest.raises(GenerationFailed) as err:
        c.fetch(async_job, org_id=org)
    assert err.value.code == "worker_crashed"
    assert _balanced(settings, org)["balance"] == 100


@SAME_HOST
def test_async_job_of_a_dead_process_runs_elsewhere_and_fetch_works_from_either(
    settings, make_client
) -> None:
    a = make_client()
    b = make_client(slots=0)
    org = _org(settings, "acme")
    job_id = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    fake(a).emit(Started(job_id))
    assert b.recover() == 0  # a live process's jobs are left alone
    a.abandon()  # SIGKILL: same host, so known dead at once
    fake(b).slots = 1000
    fake(b).wait_submitted(job_id)
    fake(b).emit(Succeeded(job_id, ARTIFACTS))
    assert b.fetch(job_id, org_id=org) == ARTIFACTS == a.fetch(job_id, org_id=org)
    info = b.get(job_id)
    assert (info.state, info.attempt) == ("succeeded", 2)
    assert _kinds(settings, job_id) == ["capture", "reserve"]


def test_a_waiter_gets_the_outcome_of_its_async_job_run_by_another_process(settings, make_client) -> None:
    a = make_client(slots=0)  # busy: never takes a job
    b = make_client()
    org = _org(settings, "acme")
    job_id = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    sync_job = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE)
    fake(b).emit(Succeeded(job_id, ARTIFACTS))
    assert asyncio.run(asyncio.wait_for(a.result(job_id), 10)) == ARTIFACTS
    time.sleep(0.2)
    assert sync_job not in fake(b).submitted  # a synchronous job runs only where its caller waits
    assert _state(settings, sync_job) == "queued" and _row(settings, sync_job).lease_owner == a.owner


@SAME_HOST
def test_restart_on_this_host_recovers_at_once(settings, make_client) -> None:
    a = make_client()
    org = _org(settings, "acme")
    running = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE)
    fake(a).emit(Started(running))
    fake(a).slots = 0
    queued_async = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    a.abandon()
    b = make_client(slots=0, heartbeat_s=30, lease_s=60)  # no reaper round during the test: start does it
    row = _row(settings, running)
    assert (row.state, row.error_code) == ("failed", "server_restarted")
    assert _kinds(settings, running) == ["release", "reserve"]
    assert _state(settings, queued_async) == "queued"  # nobody's: it waits for any process
    assert b.health()["dispatcher"]["owner"] == b.owner


# -- many leasers ----------------------------------------------------------------------------
def test_concurrent_leasers_never_take_a_job_twice(settings, make_client) -> None:
    submitter = make_client(slots=0)
    org = _org(settings, "acme", credits=1000)
    ids = {
        submitter.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True) for _ in range(60)
    }
    statements: list[str] = []
    sessions = session_factory(settings)
    engine = sessions.kw["bind"]

    def record(_conn, _cursor, sql, *_rest) -> None:
        statements.append(sql)

    event.listen(engine, "before_cursor_execute", record)

    def leaser(n: int, out: list) -> None:
        barrier.wait()
        while True:
            with sessions.begin() as s:
                lease = leases.lease_next(s, f"far-{n}:{n}:0000000{n}", 30.0)
            if lease is None:
                return
            out.append(lease)

    barrier = threading.Barrier(6)
    results: list[list] = [[] for _ in range(6)]
    threads = [threading.Thread(target=leaser, args=(n, results[n])) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    taken = [lease for out in results for lease in out]
    assert sorted(lease.job_id for lease in taken) == sorted(ids)  # each exactly once
    assert {lease.attempt for lease in taken} == {1}
    with session_factory(settings).begin() as s:
        counts = dict(
            s.execute(select(Job.state, func.count()).where(Job.id.in_(ids)).group_by(Job.state)).all()
        )
    assert counts == {"running": 60}
    event.remove(engine, "before_cursor_execute", record)
    if settings.db_url.startswith("postgresql"):
        assert any("FOR UPDATE SKIP LOCKED" in sql for sql in statements)


# -- shutdown --------------------------------------------------------------------------------
def test_graceful_stop_drains_then_fails_the_rest(settings, make_client) -> None:
    client = make_client(drain_s=1.5)
    org = _org(settings, "acme")
    finishes = client.submit(REQUEST, org_id=org, key_id=None, price=PRICE)
    hangs = client.submit(REQUEST, org_id=org, key_id=None, price=PRICE)
    for job_id in (finishes, hangs):
        fake(client).wait_submitted(job_id)
    fake(client).slots = 0
    waiting = client.submit(REQUEST, org_id=org, key_id=None, price=PRICE)
    queued_async = client.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    timer = threading.Timer(0.5, fake(client).emit, args=(Succeeded(finishes, ARTIFACTS),))
    timer.start()
    started = time.monotonic()
    client.stop_sync()
    elapsed = time.monotonic() - started
    timer.join()
    assert 1.0 < elapsed < 10
    assert _state(settings, finishes) == "succeeded"  # drained
    for job_id in (hangs, waiting):
        row = _row(settings, job_id)
        assert (row.state, row.error_code) == ("failed", "server_shutdown")
        assert _kinds(settings, job_id) == ["release", "reserve"]
    assert _state(settings, queued_async) == "queued"  # for another process, or the next start
    other = make_client()
    fake(other).emit(Succeeded(queued_async, ARTIFACTS))
    assert other.fetch(queued_async, org_id=org) == ARTIFACTS
    assert _balanced(settings, org)["captured"] == 2 * PRICE


def test_lease_columns_are_set_at_submit(settings, make_client) -> None:
    client = make_client(slots=0)
    org = _org(settings, "acme")
    sync_job = client.submit(REQUEST, org_id=org, key_id=None, price=PRICE)
    async_job = client.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    sync_row, async_row = _row(settings, sync_job), _row(settings, async_job)
    assert sync_row.origin == async_row.origin == client.owner
    assert sync_row.lease_owner == client.owner and sync_row.lease_expires_at > utcnow()
    assert async_row.lease_owner is None and async_row.lease_expires_at is None
    host, pid, token = client.owner.rsplit(":", 2)
    assert host == recovery.HOST and int(pid) > 0 and len(token) == 8
