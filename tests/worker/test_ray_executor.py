"""The RayExecutor beyond the shared contract: multiplexing, micro-batching, a replica killed
mid-job; plus the Ray-free pieces (``jobs.replica``) and the promise that the default install
never imports Ray.

One local Ray (``ray.init(num_cpus=2)``) and one executor serve the whole module, with demo
engines at 64 px and 2 steps. Skipped, with the reason, when Ray is not installed.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from stableserve.core.engines import EngineRegistry
from stableserve.core.types import GenerationRequest, WeightedPrompt
from stableserve.core.validation import resolve
from stableserve.jobs.events import Failed, Progress, Queued, Started, Succeeded, WorkerStats, is_terminal
from stableserve.jobs.replica import Job, run_jobs
from stableserve.settings import RayFamilySettings, Settings
from tests.worker.ray_support import ray_settings, start_local_ray
from tests.worker.test_executor_contract import Recorder, new_id

XL = "stable-diffusion-xl-beta-v2-2-2"  # family sdxl-beta: one replica (batching, crash)
SD1_A, SD1_B = "stable-diffusion-v1", "stable-diffusion-v1-5"  # family sd1: two replicas
SD2_A, SD2_B = "stable-diffusion-512-v2-0", "stable-diffusion-512-v2-1"  # sd2-512: one engine kept
PREFIX = "raytest"
TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def make(demo_registry: EngineRegistry):
    """``make(engine, prompt, seed=..., steps=2, samples=1)``: a resolved 64x64 request."""

    def build(engine: str, prompt: str = "a red fox", seed: int = 7, steps: int = 2, samples: int = 1):
        req = GenerationRequest(
            engine_id=engine,
            prompts=(WeightedPrompt(text=prompt),),
            width=64,
            height=64,
            steps=steps,
            samples=samples,
            seed=seed,
        )
        return resolve(req, demo_registry.get(engine))

    return build


@pytest.fixture(scope="module")
def ray_harness(stableserve_home):
    """(executor, recorder): 8 jobs per replica batched together; sd1 on two replicas; one
    engine at a time on the sd2-512 replica."""
    stop = start_local_ray()
    from stableserve.jobs.ray_executor import RayExecutor

    settings = ray_settings(
        Settings(home=stableserve_home),
        app_prefix=PREFIX,
        num_cpus_per_replica=0.5,
        max_ongoing_requests=8,
        batch_max_size=8,
        batch_wait_timeout_s=0.5,
        families={
            "sd1": RayFamilySettings(min_replicas=2, max_replicas=2, max_ongoing_requests=1),
            "sd2-512": RayFamilySettings(max_models_per_replica=1),
        },
    )
    rec = Recorder()
    executor = RayExecutor(settings, "demo", rec, stop_grace_s=5.0)
    executor.start()
    yield executor, rec
    executor.stop()
    stop()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))).astype(np.int16)


def _loads(rec: Recorder, job_ids: list[str]) -> list[str]:
    """Engine ids loaded while running ``job_ids`` (from their WorkerStats)."""
    return [engine for j in job_ids for e in rec.of(j) if isinstance(e, WorkerStats) for engine, _ in e.loads]


def test_default_install_never_imports_ray() -> None:
    code = (
        "import sys\n"
        "import stableserve.api.app, stableserve.cli, stableserve.jobs.client, stableserve.jobs.factory\n"
        "import stableserve.jobs.ray_executor, stableserve.jobs.ray_deployment, stableserve.settings\n"
        "from stableserve.jobs.factory import executor_factory\n"
        "executor_factory(stableserve.settings.Settings())\n"
        "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_run_jobs_batches_compatible_jobs_and_runs_the_rest_alone(runner, make) -> None:
    """Ray-free: three compatible jobs share one pipeline call, a different size runs alone."""
    jobs = [Job(f"j{i}", make(XL, f"prompt {i}", seed=i).model_dump_json()) for i in range(3)]
    odd = make(XL).model_copy(update={"width": 128})
    jobs.append(Job("odd", odd.model_dump_json()))
    events = []
    calls = run_jobs(runner, jobs, events.append, lambda job_id: False)
    assert calls == 2  # one batched call (3 samples <= runner.max_batch) + one alone
    for job in jobs:
        mine = [e for e in events if e.job_id == job.job_id]
        assert isinstance(mine[0], Started) and isinstance(mine[-1], Succeeded), mine
        assert isinstance(mine[-2], WorkerStats) and sum(is_terminal(e) for e in mine) == 1
        assert any(isinstance(e, Progress) and e.done == e.total for e in mine)
    assert [(a.width, a.seed) for a in mine[-1].artifacts] == [(128, 7)]
    # a cancelled job never starts; the others still run
    events.clear()
    run_jobs(runner, jobs[:2], events.append, lambda job_id: job_id == "j0")
    assert [type(e).__name__ for e in events if e.job_id == "j0"] == ["Cancelled"]
    assert isinstance([e for e in events if e.job_id == "j1"][-1], Succeeded)


def test_compatible_jobs_are_micro_batched(ray_harness, make) -> None:
    executor, rec = ray_harness
    warm = new_id()  # deploys the family and loads the engine first
    executor.submit(warm, make(XL))
    assert isinstance(rec.terminal(warm, TIMEOUT_S), Succeeded)
    before = executor.info("sdxl-beta")
    jobs = [new_id() for _ in range(8)]
    requests = [make(XL, f"prompt number {i}", seed=100 + i) for i in range(8)]
    for job, req in zip(jobs, requests, strict=True):
        executor.submit(job, req)
    finals = [rec.terminal(j, TIMEOUT_S) for j in jobs]
    assert all(isinstance(f, Succeeded) for f in finals), finals
    for j in jobs:
        kinds = [type(e) for e in rec.of(j)]
        assert kinds[:2] == [Queued, Started] and kinds[-2:] == [WorkerStats, Succeeded], kinds
    after = executor.info("sdxl-beta")
    calls = after["runner_calls"] - before["runner_calls"]
    assert after["jobs"] - before["jobs"] == 8
    assert calls < 8, after  # 8 requests, fewer pipeline calls
    assert max(after["batch_sizes"]) > 1, after
    # a batched result has the pixels the same request gets alone (up to 1 level of 255)
    alone = new_id()
    executor.submit(alone, requests[3])
    single = rec.terminal(alone, TIMEOUT_S)
    assert isinstance(single, Succeeded)
    diff = np.abs(_pixels(single.artifacts[0].data) - _pixels(finals[3].artifacts[0].data))
    assert diff.max() <= 1


def test_multiplexing_reuses_loaded_engines(ray_harness, make) -> None:
    executor, rec = ray_harness
    jobs: list[str] = []
    for i, engine in enumerate([SD1_A, SD1_A, SD1_B, SD1_A, SD1_B, SD1_A]):
        job = new_id()
        executor.submit(job, make(engine, seed=i))
        assert isinstance(rec.terminal(job, TIMEOUT_S), Succeeded)
        jobs.append(job)
        time.sleep(1.0)  # let the replica tell Serve's routers what it holds
    loads = _loads(rec, jobs)
    # two replicas, two engines: each engine loaded once, every later job went where it was
    assert sorted(loads) == [SD1_A, SD1_B], loads
    assert executor.health()["families"]["sd1"]["replicas"] == 2


def test_least_recently_used_engine_is_unloaded(ray_harness, make) -> None:
    executor, rec = ray_harness
    jobs = []
    for i, engine in enumerate([SD2_A, SD2_B, SD2_A]):
        job = new_id()
        executor.submit(job, make(engine, seed=i))
        assert isinstance(rec.terminal(job, TIMEOUT_S), Succeeded)
        jobs.append(job)
    # one engine per replica: B unloads A, A unloads B again (and the model cache follows)
    assert _loads(rec, jobs) == [SD2_A, SD2_B, SD2_A]
    assert executor.info("sd2-512")["loaded"] == [SD2_A]


def test_killed_replica_fails_its_job_and_the_executor_keeps_serving(ray_harness, make) -> None:
    import ray

    executor, rec = ray_harness
    job = new_id()
    executor.submit(job, make(XL, steps=150))
    rec.wait(job, Progress, TIMEOUT_S)
    names = [
        a for a in ray.util.list_named_actors(all_namespaces=True) if f"{PREFIX}-sdxl-beta#" in a["name"]
    ]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]))
    failed = rec.terminal(job, TIMEOUT_S)
    assert isinstance(failed, Failed) and failed.code == "worker_crashed", failed
    assert executor.health()["ok"] is True
    after = new_id()  # Serve replaces the replica; the next job runs there
    executor.submit(after, make(XL, seed=3))
    assert isinstance(rec.terminal(after, TIMEOUT_S), Succeeded)
