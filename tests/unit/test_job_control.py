"""Cancel from any process, stored progress and weighted fairness (issue 9): ``leases.request_cancel``,
``leases.record_progress``, ``leases.FairShare``, ``JobClient.request_cancel`` / ``get``, on SQLite
and PostgreSQL, with clients standing in for server processes (``tests.unit.test_job_leases``)."""

from __future__ import annotations

import time

import pytest

from stableserve.accounts.plans import create_plan, set_org_plan
from stableserve.db.session import session_factory
from stableserve.errors import GenerationCancelled, JobFinished, NotFound
from stableserve.jobs import leases
from stableserve.jobs.events import Cancelled, Progress, Started, Succeeded
from tests.unit import test_job_leases as base
from tests.unit.test_job_leases import (
    ARTIFACTS,
    PRICE,
    REQUEST,
    _balanced,
    _expire,
    _kinds,
    _org,
    _row,
    _state,
    _wait,
    fake,
)

settings = base.settings  # the fixtures: SQLite and PostgreSQL, clients as processes
make_client = base.make_client


def _plan_org(settings, name: str, weight: int) -> str:
    org = _org(settings, name, credits=1000)
    with session_factory(settings).begin() as s:
        create_plan(
            s,
            f"w{weight}",
            name=f"weight {weight}",
            monthly_credits=0,
            rate_limit_requests=10,
            rate_limit_window_s=10,
            weight=weight,
        )
        set_org_plan(s, org, f"w{weight}")
    return org


# -- weighted fairness -----------------------------------------------------------------------
def test_fair_share_serves_in_proportion_to_weight() -> None:
    fair = leases.FairShare()
    heads = [("heavy", 2), ("light", 1)]
    order = []
    for _ in range(40):
        org = leases.fair_order(heads, fair.passes)[0]
        fair.served(org, 3 if org == "heavy" else 1)
        order.append(org)
    assert order.count("heavy") == 30 and order.count("light") == 10
    assert order[:4].count("light") >= 1  # the light org is not starved at the start


def test_fair_share_gives_no_burst_after_idleness() -> None:
    fair = leases.FairShare()
    for _ in range(20):
        fair.served("a")
    order = []
    for _ in range(6):  # b arrives late: alternation, not six turns of b in a row
        org = leases.fair_order([("a", 1), ("b", 2)], fair.passes)[0]
        fair.served(org)
        order.append(org)
    assert order.count("b") == 3


def test_dispatch_follows_plan_weights(settings, make_client) -> None:
    client = make_client(slots=0)
    heavy, light = _plan_org(settings, "heavy", 3), _plan_org(settings, "light", 1)
    heavy_jobs = {client.submit(REQUEST, org_id=heavy, key_id=None, price=PRICE) for _ in range(12)}
    light_jobs = {client.submit(REQUEST, org_id=light, key_id=None, price=PRICE) for _ in range(12)}
    executor = fake(client)
    executor.slots = 1
    client.dispatcher.wake()
    for n in range(16):
        _wait(lambda n=n: len(executor.submitted) > n, what=f"job {n + 1} to start")
        executor.emit(Succeeded(executor.submitted[n], ARTIFACTS))
    first = executor.submitted[:16]
    assert sum(j in heavy_jobs for j in first) == 12 and sum(j in light_jobs for j in first) == 4
    with session_factory(settings).begin() as s:
        lease = leases.lease_next(s, client.owner, 5.0, exclude=set(executor.submitted))
    assert lease is not None and lease.weight == 1  # only the light org has queued jobs left


# -- cancel from any process -----------------------------------------------------------------
def test_cancel_of_a_queued_async_job_through_another_process(settings, make_client) -> None:
    a = make_client(owner="host-a:1:aaaaaaaa", slots=0)
    b = make_client(owner="host-b:2:bbbbbbbb", slots=0)
    org = _org(settings, "acme")
    job = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    assert b.request_cancel(job, org_id=org) == "cancelled"
    row = _row(settings, job)
    assert (row.state, row.error_code) == ("cancelled", "cancelled")
    assert _kinds(settings, job) == ["release", "reserve"]
    with pytest.raises(GenerationCancelled):
        a.fetch(job, org_id=org)
    with pytest.raises(JobFinished):
        b.request_cancel(job, org_id=org)
    _balanced(settings, org)


def test_cancel_of_a_running_job_reaches_its_holder(settings, make_client) -> None:
    a = make_client(owner="host-a:1:aaaaaaaa")
    b = make_client(owner="host-b:2:bbbbbbbb", slots=0)
    org, other = _org(settings, "acme"), _org(settings, "other")
    job = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    fake(a).emit(Started(job))
    with pytest.raises(NotFound):
        b.request_cancel(job, org_id=other)  # another organization's job: unknown to it
    with pytest.raises(NotFound):
        b.request_cancel("0" * 64, org_id=org)
    assert b.request_cancel(job, org_id=org) == "requested"
    assert _row(settings, job).cancel_requested
    _wait(lambda: job in fake(a).cancelled, what="the holder to cancel the run")  # next renewal
    fake(a).emit(Cancelled(job))
    row = _row(settings, job)
    assert (row.state, row.error_code) == ("cancelled", "cancelled")
    assert _kinds(settings, job) == ["release", "reserve"]
    assert fake(a).cancelled.count(job) == 1  # once, not at every renewal
    _balanced(settings, org)


def test_a_crashed_attempt_is_not_retried_once_a_cancel_was_asked(settings, make_client) -> None:
    from stableserve.jobs.events import Failed

    a = make_client(owner="host-a:1:aaaaaaaa")
    org = _org(settings, "acme")
    job = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    fake(a).wait_submitted(job)
    assert a.request_cancel(job, org_id=org) == "requested"
    fake(a).emit(Failed(job, "worker_crashed", "the worker died"))
    assert _state(settings, job) == "failed"  # not queued again
    assert _kinds(settings, job) == ["release", "reserve"]


def test_the_reaper_cancels_an_orphaned_job_whose_cancel_was_asked(settings, make_client) -> None:
    lease = {"lease_s": 1.0, "heartbeat_s": 0.2}
    a = make_client(owner="far-a:11:aaaaaaaa", **lease)
    org = _org(settings, "acme")
    job = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    fake(a).wait_submitted(job)
    a.abandon()  # dies before it could act on the cancel
    b = make_client(owner="far-b:22:bbbbbbbb", slots=0, **lease)
    assert b.request_cancel(job, org_id=org) == "requested"
    _expire(settings, job)
    _wait(lambda: _state(settings, job) == "cancelled", what="the reaper to cancel the job")
    assert _kinds(settings, job) == ["release", "reserve"]  # not queued again, released once


# -- stored progress -------------------------------------------------------------------------
def test_progress_is_stored_for_polls_through_any_process(settings, make_client) -> None:
    a = make_client(owner="host-a:1:aaaaaaaa")
    b = make_client(owner="host-b:2:bbbbbbbb", slots=0)
    org = _org(settings, "acme")
    job = a.submit(REQUEST, org_id=org, key_id=None, price=PRICE, store_result=True)
    fake(a).emit(Started(job))
    assert b.get(job, org_id=org).progress is None
    fake(a).emit(Progress(job, 1, 4))
    assert a.get(job).progress == pytest.approx(0.25)  # live here
    assert b.get(job, org_id=org).progress == pytest.approx(0.25)  # stored, seen elsewhere
    fake(a).emit(Progress(job, 2, 4))  # within a second of the last write: not stored
    assert b.get(job, org_id=org).progress == pytest.approx(0.25)
    time.sleep(1.05)
    fake(a).emit(Progress(job, 3, 4))
    assert b.get(job, org_id=org).progress == pytest.approx(0.75)
    fake(a).emit(Progress(job, 4, 4))  # the last step is always stored
    assert b.get(job, org_id=org).progress == pytest.approx(1.0)
    fake(a).emit(Succeeded(job, ARTIFACTS))
    info = b.get(job, org_id=org)
    assert info.state == "succeeded" and info.progress is None
