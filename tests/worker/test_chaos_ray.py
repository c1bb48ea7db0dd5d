"""Chaos on Ray Serve: the OS processes of RayExecutor replicas are killed (SIGKILL) at random
moments, 20 times, while small demo-engine jobs run through a JobClient on PostgreSQL; then
the job table and the ledger must agree (issue 9, "Done when"; the LocalExecutor half is
``test_chaos.py``).

A private local Ray (2 CPUs) serves two families (SDXL demo text-to-image at 256 px, ESRGAN
upscale), three replicas each at a quarter CPU. After one job per family (which deploys
them, both at once), jobs are submitted one every 0.2-0.8 s (every third one asynchronous,
``store_result``) until the killer is done. The killer (``ReplicaKiller``) mostly hits
replicas that hold a request (mid-job), now and then an idle or a still starting one, and
only while another replica of that family serves. Serve replaces each killed replica; the
RayExecutor must fail the jobs the replica held with ``worker_crashed`` (an asynchronous job
is queued once more, ``jobs.max_attempts`` 2) and go on serving.

Checks (``chaos_support.check_jobs_and_ledger``): no job left queued/running; every failed
or cancelled job released, never captured; every succeeded job captured exactly once; grants
minus captures equal the balance; what callers got matches the rows. Beyond those: every
failure is a ``worker_crashed`` (a replica death never surfaces as anything else), some jobs
did fail or retry, and afterwards the executor counts all replicas again with every slot free
and both families still serve.

Every replica (re)start imports torch: several CPU seconds, which sets the pace. About
2.5-3 minutes on two CPU cores (a 30 s warm-up, then 20 kills in 90-105 s).
``STABLESERVE_CHAOS_SEED`` sets the random choices (timing still varies from run to run).
Skipped, with the reason, without PostgreSQL or Ray.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stableserve.db.session import session_factory
from stableserve.jobs.client import JobClient
from stableserve.settings import JobSettings
from tests.unit.test_ledger import migrated_database
from tests.worker.chaos_support import (
    SDXL,
    UPSCALER,
    build_requests,
    chaos_settings,
    check_jobs_and_ledger,
    new_org,
    submit_load,
    wait_until_final,
)
from tests.worker.ray_support import ray_settings, start_local_ray

MAX_JOBS = 400  # submission stops earlier, once the killer is done
MIN_KILLS = 20
REPLICAS = 3  # per family
PREFIX = "chaos"
PAUSE_S = (0.2, 0.8)  # between submissions: two cores also start the replacement replicas
SEED = int(os.environ.get("STABLESERVE_CHAOS_SEED", "20240609"))


@dataclass
class Replica:
    """One live Serve replica actor of the test's applications; ``state``: ``starting`` (its
    constructor runs), ``busy`` (holds a request), ``idle`` or ``unknown`` (no answer)."""

    actor_id: str
    app: str
    pid: int
    state: str


class ReplicaKiller(threading.Thread):
    """Kills a replica of the ``<PREFIX>-*`` applications, ``MIN_KILLS`` times (each one a
    SIGKILL delivered to a live replica process, so no margin is needed). Every 0.1-0.4 s it
    picks one holding a request (mid-job, 75 %) when there is one, else now and then an idle
    one (3 %); and one in five new replicas is marked, when first seen starting, to be killed
    0.5-5 s later if its constructor still runs then (never twice in a row for one
    application). Only while another replica of the same application serves: jobs always have
    somewhere to go, so the queue keeps moving while replacements start (a replica imports
    torch, several CPU seconds, which bounds the kill rate on two cores anyway)."""

    def __init__(self, rng: random.Random):
        super().__init__(name="chaos-replica-killer", daemon=True)
        self.rng = rng
        self.kills: list[tuple[str, str]] = []  # (what it hit, application)
        self.times: list[float] = []  # time.monotonic() of each kill
        self.stop = threading.Event()
        self.done = threading.Event()
        self.errors: list[str] = []
        self._handles: dict[str, Any] = {}
        self._ready: set[str] = set()  # actors seen with their constructor done
        self._starting_kill: set[str] = set()  # applications whose last kill hit a starting one
        self._doom: dict[str, float | None] = {}  # starting actor -> when to kill it (None: never)

    def replicas(self) -> list[Replica]:
        """The live replicas of the test's applications, each asked (0.5 s at most) whether its
        constructor finished and how many requests it holds. Ray's state API
        (``ray.util.state``) needs the dashboard, which the test Ray runs without, so the
        actors come from the GCS actor table."""
        import ray
        from ray._private.state import actors

        asked = []
        for actor_id, info in actors(actor_state_name="ALIVE").items():
            if not info["ActorClassName"].startswith(f"ServeReplica:{PREFIX}-") or not info["Pid"]:
                continue
            handle = self._handles.get(actor_id)
            if handle is None:
                try:
                    handle = self._handles[actor_id] = ray.get_actor(info["Name"], namespace="serve")
                except ValueError:  # gone already
                    continue
            ready = True if actor_id in self._ready else handle.was_initialized.remote()
            asked.append((actor_id, info, ready, handle.get_num_ongoing_requests.remote()))
        out = []
        for actor_id, info, ready, ongoing in asked:
            app = info["ActorClassName"].split(":")[1]
            try:
                if ready is not True:
                    ready = ray.get(ready, timeout=0.5)
                if ready:
                    self._ready.add(actor_id)
                    state = "busy" if ray.get(ongoing, timeout=0.5) > 0 else "idle"
                else:
                    state = "starting"
            except Exception:  # no answer in time (a constructor holds its loop), or it died
                state = "unknown" if ready is True else "starting"
            out.append(Replica(actor_id, app, info["Pid"], state))
        return out

    def _pick(self) -> tuple[str, Replica] | None:
        replicas = self.replicas()
        serving = Counter(r.app for r in replicas if r.state in ("busy", "idle", "unknown"))
        spare = [r for r in replicas if serving[r.app] - (r.state != "starting") > 0]
        busy = [r for r in spare if r.state == "busy"]
        idle = [r for r in spare if r.state == "idle"]
        now = time.monotonic()
        for r in replicas:
            if r.state == "starting" and r.actor_id not in self._doom:
                doomed = self.rng.random() < 0.2
                self._doom[r.actor_id] = now + self.rng.uniform(0.5, 5.0) if doomed else None
        starting = [
            r
            for r in spare
            if r.state == "starting"
            and r.app not in self._starting_kill
            and (self._doom.get(r.actor_id) or now + 1) <= now
        ]
        roll = self.rng.random()
        if busy and roll < 0.75:
            return "mid-job", self.rng.choice(busy)
        if starting:
            return "starting", self.rng.choice(starting)
        if idle and roll < 0.03:
            return "idle", self.rng.choice(idle)
        return None

    def run(self) -> None:
        try:
            while len(self.kills) < MIN_KILLS and not self.stop.wait(self.rng.uniform(0.1, 0.4)):
                pick = self._pick()
                if pick is None:
                    continue
                what, replica = pick
                try:
                    os.kill(replica.pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self._handles.pop(replica.actor_id, None)
                self._ready.discard(replica.actor_id)
                self.kills.append((what, replica.app))
                self.times.append(time.monotonic())
                if what == "starting":
                    self._starting_kill.add(replica.app)
                else:
                    self._starting_kill.discard(replica.app)
        except Exception as exc:  # seen by the test: a killer that died would look like no chaos
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.done.set()


def test_random_replica_kills_leave_jobs_final_and_ledger_balanced(
    tmp_path: Path, stableserve_home: Path, monkeypatch: pytest.MonkeyPatch
):
    # One torch thread per replica process (Ray starts its workers with the driver's
    # environment): several replicas with a thread per core each oversubscribe two cores.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rng = random.Random(SEED)
    stop_ray = start_local_ray()  # skips the test without Ray
    from stableserve.jobs.ray_executor import RayExecutor

    try:
        with migrated_database("postgresql", tmp_path) as base:  # skips it without PostgreSQL
            settings = ray_settings(
                chaos_settings(
                    base,
                    stableserve_home,
                    jobs=JobSettings(lease_s=10, heartbeat_s=0.5, poll_s=0.05, drain_s=5, max_attempts=2),
                ),
                app_prefix=PREFIX,
                num_cpus_per_replica=0.25,
                min_replicas=REPLICAS,
                max_replicas=REPLICAS,
                max_ongoing_requests=2,
                batch_max_size=2,
                batch_wait_timeout_s=0.05,
            )
            sessions = session_factory(settings)
            org = new_org(sessions)
            work = build_requests(MAX_JOBS, size=256, steps=2)
            client = JobClient(settings, sessions, RayExecutor.factory(settings, "demo", stop_grace_s=5.0))
            client.start_sync()
            killer = ReplicaKiller(rng)
            try:
                executor: RayExecutor = client.executor  # type: ignore[assignment]
                started = time.monotonic()
                outcomes = _one_job_each(client, org, work[:2])  # deploys both families
                warmed = time.monotonic() - started
                stopped: list[float] = []  # when submission stopped (the killer was done)

                def enough() -> bool:
                    if killer.done.is_set():
                        stopped.append(time.monotonic())
                    return bool(stopped)

                killer.start()
                load = submit_load(client, org, work[2:], rng, until=enough, pause_s=PAUSE_S)
                outcomes |= asyncio.run(load)
                submitted = len(outcomes), (stopped or [time.monotonic()])[0] - started
                wait_until_final(sessions, org, 120)
                killer.stop.set()
                killer.join(10)
                elapsed = time.monotonic() - started
                kills = Counter(what for what, _ in killer.kills)
                assert not killer.errors, killer.errors
                assert len(killer.kills) >= MIN_KILLS, kills
                # Serve replaced every killed replica and the executor counts them again, with
                # every slot free; both families still serve.
                _wait_for_replicas(executor, killer.times[-1], 120)
                outcomes |= _one_job_each(client, org, work[:2])
                recovered = time.monotonic() - started
            finally:
                killer.stop.set()
                client.stop_sync()

            states = check_jobs_and_ledger(client, sessions, org, outcomes)
    finally:
        stop_ray()
    failed: Counter = Counter()
    for (state, code, _, _), n in states.items():
        if state != "succeeded":
            failed[code] += n
    assert set(failed) <= {"worker_crashed"}, states  # a killed replica fails its jobs so
    retried = sum(n for (_, _, attempt, _), n in states.items() if attempt == 2)
    assert failed["worker_crashed"] + retried > 0, states  # the kills did hit jobs
    print(
        f"\nray chaos: {len(killer.kills)} kills {dict(kills)} "
        f"{dict(Counter(app for _, app in killer.kills))} at "
        f"{[round(t - started) for t in killer.times]} s; {submitted[0]} jobs, the last "
        f"submitted at {submitted[1]:.0f} s, all final at {elapsed:.0f} s, replicas back at "
        f"{recovered:.0f} s (warm-up {warmed:.0f} s); (state, code, attempt, async): count "
        f"{dict(states)}"
    )


def _one_job_each(client: JobClient, org: str, work: list) -> dict[str, object]:
    """Run one synchronous SDXL and one upscale job (``work``), both at once, and wait for
    them to succeed; returns job id -> artifacts. The first call deploys both families at
    once (a deploy beside another one or beside ``serve.status()`` used to fail:
    ``_SERVE_LOCK`` in ``jobs.ray_executor``)."""
    assert {request.engine_id for request, _ in work} == {SDXL, UPSCALER}

    async def run() -> dict[str, object]:
        jobs = [client.submit(request, org_id=org, key_id=None, price=cost) for request, cost in work]
        return {job_id: await asyncio.wait_for(client.result(job_id), 240) for job_id in jobs}

    return asyncio.run(run())


def _wait_for_replicas(executor: Any, last_kill: float, timeout_s: float) -> None:
    """Wait until the executor sees ``REPLICAS`` running replicas of both families, all of
    their slots free; fails with its ``health()`` after ``timeout_s``. Looks only once its
    replica counts (``serve.status()`` every ``STATUS_INTERVAL_S``) are newer than the last
    kill (``time.monotonic()``)."""
    from stableserve.jobs.ray_executor import STATUS_INTERVAL_S

    time.sleep(max(0.0, last_kill + 2 * STATUS_INTERVAL_S + 1 - time.monotonic()))
    deadline = time.monotonic() + timeout_s
    while True:
        families = executor.health()["families"]
        if len(families) == 2 and all(
            f["replicas"] == REPLICAS and f["running"] == 0 and f["slots"] == 2 * REPLICAS
            for f in families.values()
        ):
            return
        assert time.monotonic() < deadline, families
        time.sleep(0.5)
