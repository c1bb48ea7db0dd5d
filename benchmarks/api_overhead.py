"""API overhead: the server's end-to-end time vs a direct runner call for the same tiny request.

Starts ``stableserve serve`` (demo engines, a throwaway data directory, one worker process),
creates an organization and key, then alternates N times between an HTTP text-to-image call
(``Accept: image/png``) and ``Runner.generate`` in this process on the same request (both warm).
Prints the p50 of each, the p50 overhead in milliseconds (aim: <= 10 ms) and the ratio.

    .venv/bin/python benchmarks/api_overhead.py [--runs 20] [--steps 10] [--size 128]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from stableserve.core.engines import load_registry
from stableserve.core.types import GenerationRequest, WeightedPrompt
from stableserve.inference.runner import Runner
from stableserve.settings import Settings

ENGINE = "stable-diffusion-xl-beta-v2-2-2"  # accepts 128x128


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--pause", type=float, default=0.5, help="idle seconds before each timed call")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="stableserve-bench-"))
    env = {**os.environ, "STABLESERVE_HOME": str(home)}
    cli = [sys.executable, "-m", "stableserve"]
    subprocess.run(
        [*cli, "orgs", "create", "bench", "--credits", "100000"], env=env, check=True, capture_output=True
    )
    key = subprocess.run(
        [*cli, "keys", "create", "--org", "bench"], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    port = _port()
    server = subprocess.Popen(
        [*cli, "serve", "--port", str(port), "--engines", "demo", "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1/generation/{ENGINE}/text-to-image"
    body = {
        "text_prompts": [{"text": "a lighthouse on a cliff"}],
        "width": args.size,
        "height": args.size,
        "steps": args.steps,
        "seed": 42,
        "sampler": "K_EULER",
    }
    headers = {"Authorization": f"Bearer {key}", "Accept": "image/png"}
    request = GenerationRequest(
        engine_id=ENGINE,
        prompts=(WeightedPrompt(text="a lighthouse on a cliff"),),
        width=args.size,
        height=args.size,
        steps=args.steps,
        seed=42,
        sampler="K_EULER",
    )
    runner = Runner(load_registry("demo"), Settings(home=home))
    try:
        with httpx.Client(timeout=300) as http:
            deadline = time.time() + 120
            while True:
                try:
                    http.get(f"http://127.0.0.1:{port}/v1/engines/list")
                    break
                except httpx.TransportError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.3)

            def via_server() -> None:
                r = http.post(url, json=body, headers=headers)
                r.raise_for_status()

            def direct() -> None:
                runner.generate(request)

            for fn in (via_server, direct):  # warm-up: model loads, first-call costs
                fn()
                fn()
            times: dict[str, list[float]] = {"server": [], "direct": []}
            for _ in range(args.runs):
                for name, fn in (("server", via_server), ("direct", direct)):
                    # Let this process's OpenMP threads go idle: they spin for a while after a
                    # direct run and would steal one of the cores from the server's worker.
                    time.sleep(args.pause)
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
    finally:
        server.terminate()
        server.wait(timeout=30)
    s, d = statistics.median(times["server"]), statistics.median(times["direct"])
    print(f"{ENGINE} (demo) {args.size}x{args.size}, {args.steps} steps, {args.runs} runs each, alternating")
    print(f"direct runner call: p50 {d * 1000:.1f} ms")
    print(f"server end to end:  p50 {s * 1000:.1f} ms")
    print(f"p50 overhead:       {(s - d) * 1000:.1f} ms  (aim <= 10 ms); ratio {s / d:.3f}")


if __name__ == "__main__":
    main()
