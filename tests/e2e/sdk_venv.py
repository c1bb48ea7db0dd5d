"""A virtualenv of its own for ``stability-sdk==0.8.6`` (the e2e gRPC tests' client).

stability-sdk 0.8.6 pins ``grpcio<1.64`` and ``protobuf<6`` (CONTRACT.md §4.5), which the
server's ``.venv`` cannot have, so it lives in a separate virtualenv, built once and reused:

- location: ``$STABLESERVE_SDK_VENV`` if set, else
  ``${XDG_CACHE_HOME:-~/.cache}/stableserve-tests/stability-sdk-0.8.6-py3X`` (outside the
  repository; survives between test sessions of one machine or CI job);
- built with ``python -m venv`` and ``pip install stability-sdk==0.8.6`` under a file lock
  (parallel sessions wait for each other); a marker file says it is complete, and a reused one
  must still import ``stability_sdk``, else it is rebuilt.

``SdkUnavailable`` is raised only when pip cannot reach a package index (no network): the
tests skip then. Any other failure is an error.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

SDK_SPEC = "stability-sdk==0.8.6"
_MARKER = ".stableserve-sdk-ready"

# pip's words when it cannot reach an index (or the index has nothing, i.e. offline mirrors).
_NETWORK_SIGNS = (
    "NewConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Failed to establish a new connection",
    "ProxyError",
    "Max retries exceeded",
    "No matching distribution found for stability-sdk",
    "Could not find a version that satisfies the requirement stability-sdk",
)


class SdkUnavailable(RuntimeError):
    """The SDK virtualenv cannot be built because no package index is reachable."""


def sdk_venv_dir() -> Path:
    """Where the SDK virtualenv lives (see the module docstring)."""
    override = os.environ.get("STABLESERVE_SDK_VENV")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache / "stableserve-tests" / f"{SDK_SPEC.replace('==', '-')}-{tag}"


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _usable(venv: Path) -> bool:
    marker = venv / _MARKER
    if not marker.is_file() or marker.read_text().strip() != SDK_SPEC:
        return False
    r = subprocess.run(
        [str(_python(venv)), "-c", "import stability_sdk.client"],
        capture_output=True,
        timeout=120,
        env=clean_env(),
    )
    return r.returncode == 0


def clean_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without what would leak the server's virtualenv or settings into the
    SDK's processes, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        and not k.startswith(("STABLESERVE_", "STABILITY_", "GRPC_"))
    }
    env.update(extra)
    return env


def ensure_sdk_venv(venv: Path | None = None) -> Path:
    """The SDK virtualenv's ``python``, building the virtualenv first when needed.

    Raises ``SdkUnavailable`` when pip cannot reach a package index, ``RuntimeError`` for any
    other failure (with pip's output).
    """
    venv = venv or sdk_venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if venv.exists() and _usable(venv):
            return _python(venv)
        shutil.rmtree(venv, ignore_errors=True)
        made = subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300
        )
        if made.returncode != 0:
            raise RuntimeError(f"python -m venv {venv} failed:\n{made.stdout}{made.stderr}")
        pip = subprocess.run(
            [
                str(_python(venv)),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--timeout",
                "30",
                "--retries",
                "2",
                SDK_SPEC,
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env=clean_env(),
        )
        if pip.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            output = pip.stdout + pip.stderr
            tail = "\n".join(output.strip().splitlines()[-15:])
            if any(sign in output for sign in _NETWORK_SIGNS):
                raise SdkUnavailable(f"cannot install {SDK_SPEC} (no package index reachable?):\n{tail}")
            raise RuntimeError(f"pip install {SDK_SPEC} into {venv} failed:\n{tail}")
        (venv / _MARKER).write_text(SDK_SPEC + "\n")
        return _python(venv)
