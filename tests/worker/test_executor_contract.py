"""The ``Executor`` contract (``stableserve.jobs.executor``): every implementation passes these.

To add an implementation (e.g. a RayExecutor), add a builder to ``EXECUTORS``: it takes the
settings, the demo registry spec and the event callback and returns an unstarted executor
that serves the ``demo`` engines. One executor per implementation is shared by the module
(workers load torch and a model once); only ``test_stop_*`` builds its own.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pytest

from stableserve.core.engines import EngineRegistry
from stableserve.core.types import GenerationRequest, WeightedPrompt
from stableserve.core.validation import resolve
from stableserve.jobs.events import (
    SERVER_ERROR_MESSAGE,
    Cancelled,
    Failed,
    JobEvent,
    Progress,
    Queued,
    Started,
    Succeeded,
    is_terminal,
)
from stableserve.jobs.executor import EventCallback, Executor
from stableserve.jobs.local import LocalExecutor
from stableserve.settings import Settings
from tests.worker.ray_support import ray_settings, start_local_ray

ENGINE = "stable-diffusion-xl-beta-v2-2-2"
TIMEOUT_S = 240.0  # generous: the first job loads torch and builds the demo pipeline


def _local(settings: Settings, on_event: EventCallback) -> Executor:
    return LocalExecutor(settings, "demo", on_event, workers=1, stop_grace_s=5.0)


def _ray(settings: Settings, on_event: EventCallback) -> Executor:
    """One replica holding one job at a time (as one local worker): the same capacity rules."""
    from stableserve.jobs.ray_executor import RayExecutor

    contract = ray_settings(settings, app_prefix="contract", max_ongoing_requests=1, batch_max_size=1)
    return RayExecutor(contract, "demo", on_event, stop_grace_s=5.0)


EXECUTORS: dict[str, Callable[[Settings, EventCallback], Executor]] = {"local": _local, "ray": _ray}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for the module (only started when a ``ray`` test runs; skipped without Ray)."""
    stop = start_local_ray()
    yield
    stop()


def _needs(request, kind: str) -> None:
    """Start what the ``kind`` executor needs (a local Ray for ``ray``)."""
    if kind == "ray":
        request.getfixturevalue("ray_cluster")


class Recorder:
    """Thread-safe event sink with waiting helpers."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: JobEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def of(self, job_id: str) -> list[JobEvent]:
        """Events of one job so far, in order."""
        with self._cond:
            return [e for e in self.events if e.job_id == job_id]

    def wait(self, job_id: str, kind: type | tuple[type, ...], timeout: float = TIMEOUT_S) -> JobEvent:
        """The first event of ``job_id`` that is a ``kind``; fails the test after ``timeout`` s."""
        def find() -> JobEvent | None:
            return next((e for e in self.events if e.job_id == job_id and isinstance(e, kind)), None)

        with self._cond:
            assert self._cond.wait_for(lambda: find() is not None, timeout), (
                f"no {kind} for {job_id}: {self.of(job_id)}"
            )
            event = find()
        assert event is not None
        return event

    def terminal(self, job_id: str, timeout: float = TIMEOUT_S) -> JobEvent:
        """The terminal event of ``job_id``."""
        return self.wait(job_id, (Succeeded, Failed, Cancelled), timeout)


def new_id() -> str:
    return uuid.uuid4().hex * 2


@pytest.fixture(scope="module")
def settings(stableserve_home) -> Settings:
    return Settings(home=stableserve_home)


@pytest.fixture(scope="module")
def request_for(demo_registry: EngineRegistry) -> Callable[..., GenerationRequest]:
    """Resolved tiny requests: ``request_for(steps=2, samples=1, seed=7)`` (64x64 SDXL demo)."""

    def make(steps: int = 2, samples: int = 1, seed: int = 7) -> GenerationRequest:
        req = GenerationRequest(
            engine_id=ENGINE,
            prompts=(WeightedPrompt(text="a red fox"),),
            width=64,
            height=64,
            steps=steps,
            samples=samples,
            seed=seed,
        )
        return resolve(req, demo_registry.get(ENGINE))

    return make


@pytest.fixture(scope="module", params=sorted(EXECUTORS))
def harness(request, settings: Settings):
    """(executor, recorder) shared by the module, per implementation."""
    _needs(request, request.param)
    recorder = Recorder()
    executor = EXECUTORS[request.param](settings, recorder)
    executor.start()
    yield executor, recorder
    executor.stop()


def test_success_reports_queued_started_progress_succeeded(harness, request_for) -> None:
    executor, rec = harness
    job = new_id()
    executor.submit(job, request_for(steps=3, samples=2, seed=11))
    done = rec.terminal(job)
    events = rec.of(job)
    assert isinstance(events[0], Queued)
    assert isinstance(events[1], Started) and events[1].attempt >= 1
    assert events[-1] is done and isinstance(done, Succeeded), events
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress, "at least one Progress event"
    assert all(0 <= p.done <= p.total for p in progress)
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert progress[-1].done == progress[-1].total
    assert sum(is_terminal(e) for e in events) == 1
    assert [a.index for a in done.artifacts] == [0, 1]
    assert [a.seed for a in done.artifacts] == [11, 12]
    for a in done.artifacts:
        assert (a.width, a.height, a.mime) == (64, 64, "image/png")
        assert a.data.startswith(b"\x89PNG\r\n\x1a\n")


def test_cancel_queued_never_runs_and_cancel_running_stops(harness, request_for) -> None:
    executor, rec = harness
    running, queued = new_id(), new_id()
    executor.submit(running, request_for(steps=150))
    rec.wait(running, Progress)
    assert executor.capacity() == 0
    executor.submit(queued, request_for(steps=2))
    executor.cancel(queued)
    assert isinstance(rec.terminal(queued), Cancelled)
    executor.cancel(running)
    assert isinstance(rec.terminal(running), Cancelled)
    assert not any(isinstance(e, Started) for e in rec.of(queued)), "a job cancelled while queued never runs"
    assert [type(e) for e in rec.of(queued)] == [Queued, Cancelled]
    # the executor keeps serving after cancellations
    after = new_id()
    executor.submit(after, request_for(steps=2))
    assert isinstance(rec.terminal(after), Succeeded)


def test_runner_errors_become_failed_events(harness, request_for) -> None:
    executor, rec = harness
    unknown, unresolved = new_id(), new_id()
    executor.submit(unknown, request_for().model_copy(update={"engine_id": "no-such-engine"}))
    failed = rec.terminal(unknown)
    assert isinstance(failed, Failed) and failed.code == "not_found" and failed.error == "NotFound"
    # an unresolved request (no sampler) breaks inside the pipeline: a generic server_error
    bad = GenerationRequest(engine_id=ENGINE, prompts=(WeightedPrompt(text="x"),), width=64, height=64)
    executor.submit(unresolved, bad)
    failed = rec.terminal(unresolved)
    assert isinstance(failed, Failed)
    assert (failed.code, failed.message) == ("server_error", SERVER_ERROR_MESSAGE)
    assert failed.error == "GenerationFailed"


def test_cancel_unknown_is_harmless_and_health_shape(harness) -> None:
    executor, _ = harness
    executor.cancel("not-a-job")
    health = executor.health()
    assert {"kind", "ok", "running", "queued"} <= set(health)
    assert health["ok"] is True
    assert isinstance(executor.capacity(), int) and executor.capacity() >= 0


@pytest.mark.parametrize("kind", sorted(EXECUTORS))
def test_stop_fails_unfinished_jobs_and_refuses_new_ones(
    kind: str, settings: Settings, request_for, request
) -> None:
    _needs(request, kind)
    rec = Recorder()
    executor = EXECUTORS[kind](settings, rec)
    executor.start()
    job = new_id()
    executor.submit(job, request_for(steps=2))
    executor.stop()
    final = rec.terminal(job, timeout=30)
    # a job that finished in the meantime is fine; an unfinished one fails with server_shutdown
    assert isinstance(final, Succeeded) or (isinstance(final, Failed) and final.code == "server_shutdown")
    with pytest.raises(RuntimeError):
        executor.submit(new_id(), request_for(steps=2))
    executor.stop()  # idempotent
    assert executor.health()["ok"] is False
