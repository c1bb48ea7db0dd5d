"""A local Ray for the RayExecutor tests: one ``ray.init(num_cpus=2)`` per test module.

Use ``start_local_ray()`` in a module-scoped fixture; it skips the tests (with the reason)
when Ray is not installed, and returns a function that shuts Serve and Ray down.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stableserve.settings import Settings

SKIP_REASON = "ray is not installed: pip install 'stableserve[ray]' to run the RayExecutor tests"


def start_local_ray(num_cpus: int = 2) -> Callable[[], None]:
    """Start a private local Ray (no dashboard) and Serve without HTTP proxies; returns the
    teardown. Skips the calling test when Ray is not importable."""
    ray = pytest.importorskip("ray", reason=SKIP_REASON)
    from ray import serve

    if not ray.is_initialized():
        # "local": a private instance even if `ray start` runs a cluster on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")

    def stop() -> None:
        serve.shutdown()
        ray.shutdown()

    return stop


def ray_settings(settings: Settings, **ray: object) -> Settings:
    """``settings`` with ``settings.ray`` fields replaced by ``ray`` (health checks every second)."""
    ray = {"health_check_period_s": 1.0, **ray}
    return settings.model_copy(update={"ray": settings.ray.model_copy(update=ray)})
