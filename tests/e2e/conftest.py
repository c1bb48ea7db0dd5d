"""E2E fixtures: ``stableserve serve`` as a subprocess on a fresh data directory."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from stableserve.cli_certs import DevCerts, write_dev_certs


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


def port_ending_in_443() -> int:
    """A free 127.0.0.1 port whose number ends in 443 (18443, 28443, ...)."""
    for port in (18443, 28443, 38443, 48443, 58443, 19443, 29443, 39443, 49443, 59443, 8443, 9443):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port ending in 443 on 127.0.0.1")


def wait_for_tls(port: int, ca: Path, timeout_s: float = 60) -> None:
    """Wait until ``localhost:port`` completes a TLS handshake (ALPN h2) verified by ``ca``."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    deadline = time.time() + timeout_s
    while True:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                assert tls.selected_alpn_protocol() == "h2", tls.selected_alpn_protocol()
                return
        except (ConnectionRefusedError, ConnectionResetError, TimeoutError):
            if time.time() > deadline:
                raise
            time.sleep(0.3)


def grpc_serve_args(home: Path) -> tuple[list[str], int, int, DevCerts]:
    """``stableserve serve`` arguments for gRPC over TLS (dev certificates written under
    ``home/certs``, a port ending in 443) and plaintext for the org ``e2e`` (a free port not
    ending in 443); returns ``(args, tls_port, insecure_port, certs)``."""
    certs = write_dev_certs(home / "certs")
    port = port_ending_in_443()
    insecure_port = free_port()
    while str(insecure_port).endswith("443"):
        insecure_port = free_port()
    args = [
        "--grpc-port", str(port),
        "--grpc-tls-cert", str(certs.server),
        "--grpc-tls-key", str(certs.server_key),
        "--grpc-insecure-port", str(insecure_port),
        "--grpc-insecure-org", "e2e",
    ]  # fmt: skip
    return args, port, insecure_port, certs


@dataclass
class SharedServer(Server):
    """A ``demo_server``: its ``executor``, gRPC over TLS on ``grpc_port`` (a port ending in
    443, the dev ``certs``) and plaintext on ``grpc_insecure_port`` acting for the org ``e2e``."""

    executor: str
    grpc_port: int
    grpc_insecure_port: int
    certs: DevCerts


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on ``shared_server`` last among the e2e tests (their order kept: every local
    one, then every Ray one), so no other e2e test runs beside an idle Ray cluster."""
    here = Path(__file__).parent
    at = [i for i, item in enumerate(items) if here in item.path.parents]
    mine = sorted((items[i] for i in at), key=lambda item: "shared_server" in item.fixturenames)  # stable
    for i, item in zip(at, mine, strict=True):
        items[i] = item


DEMO_DEFAULT_STEPS = 10
"""The most denoising steps a ``demo_server`` engine takes by default (the demo engines make
noise at any step count; prices do not change below an engine's ``reference_steps``)."""


@contextlib.contextmanager
def demo_server(home: Path, demo_dir: Path, executor: str) -> Iterator[SharedServer]:
    """``stableserve serve`` for the suites that run on both executors: the demo registry as
    shipped but for the conservative upscale, which aims at 0.25 MP instead of 4 MP (a 4 MP
    x4-upscaler pass takes minutes on a CPU), and for the engines' default steps, at most
    ``DEMO_DEFAULT_STEPS`` (what the suites ask for where they give steps; v2beta requests
    cannot: 28-30 steps at 1 MP took most of their time), written to a registry file and
    served from it; gRPC over TLS (dev certificates) and plaintext; an org ``e2e`` with
    plenty of credits (the suites check balances as differences)."""
    from stableserve.core.engines import load_registry

    reg = load_registry("demo")
    body = reg.model_dump(mode="json", exclude={"origin"})
    body["products"]["upscale-conservative"]["output_pixels"] = 512 * 512
    for engine in body["engines"]:  # requests without steps (v2beta, OpenAI): 10 as elsewhere
        engine["default_steps"] = min(engine["default_steps"], DEMO_DEFAULT_STEPS)
    (home / "engines.yaml").write_text(yaml.safe_dump(body))
    args, port, insecure_port, certs = grpc_serve_args(home)
    # Ray: every family of the demo registry may get a replica (11), so an eighth of a CPU
    # each (still one thread) lets them all fit on 2 cores.
    extra_env = {"STABLESERVE_RAY__NUM_CPUS_PER_REPLICA": "0.125"} if executor == "ray" else None
    with running_server(
        home,
        demo_dir,
        credits=100_000,
        engines=str(home / "engines.yaml"),
        serve_args=args,
        extra_env=extra_env,
        executor=executor,
    ) as srv:
        wait_for_tls(port, certs.ca)
        yield SharedServer(srv.host, srv.key, srv.home, srv.env, executor, port, insecure_port, certs)


@pytest.fixture(scope="package", params=list(EXECUTORS))
def shared_server(request, tmp_path_factory, stableserve_home) -> Iterator[SharedServer]:
    """One ``demo_server`` per executor (local worker processes, Ray Serve) shared by the
    suites that run on both (``test_server_v1``, ``test_server_v2beta``, ``test_openai_client``,
    ``test_grpc_sdk``): starting a server, above all a Ray one deploying every family, is what
    those suites spent most of their time on."""
    home = tmp_path_factory.mktemp(f"e2e-shared-{request.param}")
    with demo_server(home, stableserve_home / "demo", request.param) as srv:
        yield srv
