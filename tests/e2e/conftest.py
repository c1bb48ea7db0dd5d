"""E2E fixtures: ``stableserve serve`` as a subprocess on a fresh data directory."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(env: dict, *args: str) -> str:
    """Run ``python -m stableserve ARGS`` with ``env``; its stdout (must exit 0)."""
    r = subprocess.run(
        [sys.executable, "-m", "stableserve", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


EXECUTORS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "local": ((), {}),
    # A private local Ray; replicas take a quarter CPU each so every family fits on 2 cores.
    "ray": (("--executor", "ray"), {"STABLESERVE_RAY__NUM_CPUS_PER_REPLICA": "0.25"}),
}
"""``stableserve serve`` arguments and environment per executor, for suites that run on both
(``running_server(..., executor=...)``)."""


@dataclass
class Server:
    """A running server: ``host`` (``http://127.0.0.1:PORT``), an org ``e2e`` with ``key``,
    its data dir ``home``, the ``env`` it runs with (for more CLI calls)."""

    host: str
    key: str
    home: Path
    env: dict


@contextlib.contextmanager
def running_server(
    home: Path,
    demo_dir: Path,
    credits: int = 1000,
    engines: str = "demo",
    serve_args: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
    executor: str = "local",
) -> Iterator[Server]:
    """Migrate ``home``, create org ``e2e`` with ``credits`` and a key, serve ``engines`` (the
    demo registry by default; demo pipelines shared through ``demo_dir``) until the block ends.

    ``serve_args`` are appended to ``stableserve serve`` (e.g. ``--grpc-port``); ``extra_env``
    is added to the environment of the server and the CLI calls. ``executor``: a key of
    ``EXECUTORS`` (``ray`` skips the calling test where the ray extra is missing)."""
    if executor == "ray":
        pytest.importorskip("ray", reason="the ray extra is not installed")
    executor_args, executor_env = EXECUTORS[executor]
    serve_args = [*executor_args, *serve_args]
    extra_env = {**executor_env, **(extra_env or {})}
    demo_dir.mkdir(exist_ok=True)
    (home / "demo").symlink_to(demo_dir, target_is_directory=True)
    env = {**os.environ, "STABLESERVE_HOME": str(home), **(extra_env or {})}
    cli(env, "db", "upgrade")
    cli(env, "orgs", "create", "e2e", "--credits", str(credits))
    key = cli(env, "keys", "create", "--org", "e2e")
    assert key.startswith("sk-") and "\n" not in key
    port = free_port()
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed below
    command = [sys.executable, "-m", "stableserve", "serve", "--port", str(port), "--engines", engines]
    proc = subprocess.Popen(
        [*command, *serve_args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    host = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            log.close()
            pytest.fail(f"server exited with {proc.returncode}: " + (home / "server.log").read_text())
        try:
            if requests.get(f"{host}/v1/engines/list", timeout=2).status_code == 401:
                break
        except requests.ConnectionError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("server did not start: " + (home / "server.log").read_text())
    try:
        yield Server(host, key, home, env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
