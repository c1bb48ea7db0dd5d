"""Ray executor options without Ray: the Serve deployment options built from settings, the
``serve --executor/--ray-address`` options and the executor factory's choice."""

from __future__ import annotations

import importlib.util

import pytest
import typer

from stableserve.cli_server import _with_executor
from stableserve.errors import StableServeError
from stableserve.jobs.factory import executor_factory
from stableserve.jobs.ray_deployment import app_name, deployment_options
from stableserve.settings import RayFamilySettings, RaySettings, Settings


def _settings(**ray: object) -> Settings:
    return Settings().model_copy(update={"ray": RaySettings(**ray)})


def test_fixed_replicas_and_resources_by_default() -> None:
    options = deployment_options(_settings(num_gpus=0.5, max_ongoing_requests=3), "sdxl")
    assert options["num_replicas"] == 1 and "autoscaling_config" not in options
    assert options["max_ongoing_requests"] == 3
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5}


def test_autoscaling_and_family_overrides() -> None:
    settings = _settings(
        min_replicas=0,
        max_replicas=2,
        target_ongoing_requests=1.5,
        families={"sdxl": RayFamilySettings(max_replicas=8, num_gpus=1, max_ongoing_requests=6)},
    )
    sd1 = deployment_options(settings, "sd1")
    assert sd1["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 2,
        "initial_replicas": 1,
        "target_ongoing_requests": 1.5,
    }
    sdxl = deployment_options(settings, "sdxl")
    assert sdxl["autoscaling_config"]["max_replicas"] == 8
    assert sdxl["ray_actor_options"]["num_gpus"] == 1 and sdxl["max_ongoing_requests"] == 6
    assert app_name(settings, "sdxl") == "stableserve-sdxl"
    with pytest.raises(ValueError, match="min_replicas"):
        deployment_options(_settings(min_replicas=3, max_replicas=2), "sd1")


def test_families_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STABLESERVE_JOBS__EXECUTOR", "ray")
    monkeypatch.setenv("STABLESERVE_RAY__ADDRESS", "auto")
    monkeypatch.setenv("STABLESERVE_RAY__FAMILIES", '{"sdxl": {"max_replicas": 4}}')
    settings = Settings()
    assert settings.jobs.executor == "ray" and settings.ray.address == "auto"
    assert settings.ray.families["sdxl"].max_replicas == 4


def test_serve_executor_options() -> None:
    base = Settings()
    assert _with_executor(base, None, None).jobs.executor == "local"
    ray = _with_executor(base, "ray", "auto")
    assert (ray.jobs.executor, ray.ray.address) == ("ray", "auto")
    with pytest.raises(typer.Exit):
        _with_executor(base, "dask", None)
    with pytest.raises(typer.Exit):
        _with_executor(base, None, "auto")  # --ray-address without the ray executor


def test_factory_picks_the_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    local = executor_factory(Settings())
    assert type(local(lambda event: None)).__name__ == "LocalExecutor"
    ray_settings = Settings().model_copy(
        update={"jobs": Settings().jobs.model_copy(update={"executor": "ray"})}
    )
    if importlib.util.find_spec("ray") is not None:
        assert type(executor_factory(ray_settings)(lambda event: None)).__name__ == "RayExecutor"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    with pytest.raises(StableServeError, match=r"stableserve\[ray\]"):
        executor_factory(ray_settings)
