"""Which ``Executor`` a server runs: ``settings.jobs.executor`` (``local`` or ``ray``).

Importing this module imports neither the executors nor Ray; the chosen executor's module is
imported when the factory is built.
"""

from __future__ import annotations

import importlib.util

from stableserve.errors import StableServeError
from stableserve.jobs.executor import ExecutorFactory
from stableserve.settings import Settings

RAY_MISSING = (
    "the ray executor needs Ray Serve, which is not installed: pip install 'stableserve[ray]' "
    "(or run with --executor local)"
)


def executor_factory(settings: Settings, registry_spec: str | None = None) -> ExecutorFactory:
    """The ``ExecutorFactory`` for ``JobClient``: a ``LocalExecutor`` (``jobs.executor =
    "local"``) or a ``RayExecutor`` (``"ray"``, needs ``pip install 'stableserve[ray]'``) over
    ``registry_spec`` (default ``settings.engines``). Raises ``StableServeError`` (code
    ``ray_missing``) for ``ray`` when Ray is not installed."""
    if settings.jobs.executor == "ray":
        if importlib.util.find_spec("ray") is None:
            raise StableServeError(RAY_MISSING, code="ray_missing")
        from stableserve.jobs.ray_executor import RayExecutor

        return RayExecutor.factory(settings, registry_spec)
    from stableserve.jobs.local import LocalExecutor

    return LocalExecutor.factory(settings, registry_spec)
