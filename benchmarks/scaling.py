"""Scaling: throughput with 1, 2 and 4 workers, micro-batched against one-at-a-time requests, and
p50/p95 latency at 1, 4 and 16 concurrent clients, all through the HTTP API, in one run.

Each configuration starts ``stableserve serve`` on demo engines in a throwaway data directory
(a fresh organization and key), warms it up, then drives it with locust (``pip install
'stableserve[bench]'``) for ``--seconds`` per measurement:

- throughput: ``2 x workers`` locust users for each worker count; efficiency = throughput(N) /
  (N x throughput(1)). On a machine with fewer cores than workers it falls below 1 by design.
- micro-batching (``--executor ray`` only: Ray Serve's ``@serve.batch``): 8 compatible requests
  at once with batches of up to 8 against batches of 1; the ratio of wall times.
- latency: 1, 4 and 16 users on the ``--latency-workers`` server.

    .venv/bin/python benchmarks/scaling.py [--seconds 15] [--size 128] [--steps 10]
        [--executor local|ray] [--engine stable-diffusion-xl-beta-v2-2-2]

Figures are printed as one table; nothing is asserted (speed targets live in benchmarks, not
tests).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gevent  # locust's runtime, imported before anything opens sockets
import httpx
from locust import FastHttpUser, constant, task
from locust.env import Environment

ENGINE = "stable-diffusion-xl-beta-v2-2-2"  # accepts 128x128


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running ``stableserve serve``: its base URL and an API key with plenty of credits."""

    url: str
    key: str


@contextmanager
def serve(workers: int, executor: str, extra_env: dict[str, str] | None = None):
    """``stableserve serve`` with ``workers`` worker processes (or Ray replicas) on demo engines;
    rate limits off (the load generator is one key)."""
    home = Path(tempfile.mkdtemp(prefix="stableserve-scaling-"))
    env = {
        **os.environ,
        "STABLESERVE_HOME": str(home),
        "STABLESERVE_JOBS__WORKERS": str(workers),
        "STABLESERVE_RATE_LIMIT__ENABLED": "false",
        "STABLESERVE_LOGS__FORMAT": "text",
        # Ray: one replica per "worker" (each replica holds its own model cache)
        "STABLESERVE_RAY__MIN_REPLICAS": str(workers),
        "STABLESERVE_RAY__MAX_REPLICAS": str(workers),
        **(extra_env or {}),
    }
    cli = [sys.executable, "-m", "stableserve"]
    subprocess.run(
        [*cli, "orgs", "create", "bench", "--credits", "10000000"], env=env, check=True, capture_output=True
    )
    key = subprocess.run(
        [*cli, "keys", "create", "--org", "bench"], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    port = _port()
    args = [*cli, "serve", "--port", str(port), "--engines", "demo", "--log-level", "warning"]
    if executor != "local":
        args += ["--executor", executor]
    server = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.3)
        yield Server(url, key)
    finally:
        server.terminate()
        server.wait(timeout=60)


def _body(args, seed: int = 42) -> dict:
    return {
        "text_prompts": [{"text": "a lighthouse on a cliff"}],
        "width": args.size,
        "height": args.size,
        "steps": args.steps,
        "seed": seed,
        "sampler": "K_EULER",
    }


def load(server: Server, args, users: int) -> dict[str, float]:
    """``users`` locust users posting text-to-image without pause for ``args.seconds``:
    requests per second, p50 and p95 latency (ms) and the failure count."""
    body, path = _body(args), f"/v1/generation/{args.engine}/text-to-image"
    headers = {"Authorization": f"Bearer {server.key}", "Accept": "image/png"}

    class Client(FastHttpUser):
        host = server.url
        wait_time = constant(0)
        network_timeout = 600.0
        connection_timeout = 60.0

        @task
        def generate(self) -> None:
            self.client.post(path, json=body, headers=headers, name="text-to-image")

    env = Environment(user_classes=[Client])
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=users)
    gevent.sleep(args.seconds)
    runner.quit()
    stats = env.stats.total
    return {
        "rps": stats.num_requests / args.seconds,
        "p50": stats.get_response_time_percentile(0.5),
        "p95": stats.get_response_time_percentile(0.95),
        "failures": stats.num_failures,
    }


def warm(server: Server, args, n: int) -> None:
    """``n`` sequential requests: every worker has loaded the engine afterwards (round robin)."""
    headers = {"Authorization": f"Bearer {server.key}", "Accept": "image/png"}
    with httpx.Client(timeout=600) as http:
        for i in range(n):
            http.post(
                f"{server.url}/v1/generation/{args.engine}/text-to-image",
                json=_body(args, i),
                headers=headers,
            ).raise_for_status()


def batched(args) -> tuple[float, float] | None:
    """Wall seconds for 8 compatible requests at once with batches of 8 and of 1 (Ray only)."""
    if args.executor != "ray":
        return None
    import concurrent.futures

    times = []
    for batch in (8, 1):
        env = {"STABLESERVE_RAY__BATCH_MAX_SIZE": str(batch), "STABLESERVE_RAY__MAX_ONGOING_REQUESTS": "8"}
        with serve(1, "ray", env) as server:
            warm(server, args, 2)
            headers = {"Authorization": f"Bearer {server.key}", "Accept": "image/png"}
            url = f"{server.url}/v1/generation/{args.engine}/text-to-image"
            with httpx.Client(timeout=600) as http, concurrent.futures.ThreadPoolExecutor(8) as pool:
                t0 = time.perf_counter()
                posts = [pool.submit(http.post, url, json=_body(args, i), headers=headers) for i in range(8)]
                for post in posts:
                    post.result().raise_for_status()
                times.append(time.perf_counter() - t0)
    return times[0], times[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--engine", default=ENGINE)
    ap.add_argument("--executor", choices=("local", "ray"), default="local")
    ap.add_argument("--workers", default="1,2,4", help="worker counts for the throughput rows")
    ap.add_argument("--latency-workers", type=int, default=1)
    args = ap.parse_args()

    throughput = {}
    for n in (int(w) for w in args.workers.split(",")):
        with serve(n, args.executor) as server:
            warm(server, args, 2 * n)
            throughput[n] = load(server, args, 2 * n)
    latency = {}
    with serve(args.latency_workers, args.executor) as server:
        warm(server, args, 2 * args.latency_workers)
        for users in (1, 4, 16):
            latency[users] = load(server, args, users)
    batch = batched(args)

    cores = os.cpu_count()
    print(
        f"{args.engine} (demo) {args.size}x{args.size}, {args.steps} steps, executor {args.executor}, "
        f"{cores} CPU cores, {args.seconds:.0f} s per measurement, locust"
    )
    base = throughput[min(throughput)]["rps"]
    print("workers  req/s   p50 ms   p95 ms  failures  efficiency")
    for n, row in throughput.items():
        eff = row["rps"] / (n * base) if base else float("nan")
        figures = f"{row['rps']:5.2f}  {row['p50']:7.0f}  {row['p95']:7.0f}  {row['failures']:8d}"
        print(f"{n:7d}  {figures}  {eff:10.2f}")
    print(f"latency with {args.latency_workers} worker(s):")
    print("clients  req/s   p50 ms   p95 ms  failures")
    for users, row in latency.items():
        print(f"{users:7d}  {row['rps']:5.2f}  {row['p50']:7.0f}  {row['p95']:7.0f}  {row['failures']:8d}")
    if batch is None:
        print("micro-batching: only with --executor ray (Ray Serve @serve.batch)")
    else:
        print(
            f"8 compatible requests: batched {batch[0]:.2f} s, one at a time {batch[1]:.2f} s, "
            f"ratio {batch[1] / batch[0]:.2f}x"
        )


if __name__ == "__main__":
    main()
