"""Runner overhead: stableserve's runner vs a direct diffusers call on the same tiny pipeline.

Both sides use the SD 1.x demo pipeline (loaded with ``from_pretrained`` from the same
folder), the same size, steps, guidance scale, noise scheduler (DPM++ 2M) and seed. Runs
are interleaved after a warm-up; the script prints the median seconds of each side and the
ratio runner / direct (aim: <= 1.05).

    .venv/bin/python benchmarks/runner_overhead.py [--size 512] [--steps 30] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from stableserve.core.engines import load_registry
from stableserve.core.types import GenerationRequest, Sampler, WeightedPrompt
from stableserve.inference.loading import weights_location
from stableserve.inference.runner import Runner
from stableserve.settings import get_settings

PROMPT = "a lighthouse on a cliff at sunset"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="stable-diffusion-v1-5")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    settings = get_settings().model_copy(update={"engines": "demo"})
    registry = load_registry("demo")
    engine = registry.get(args.engine)
    runner = Runner(registry, settings)
    folder = weights_location(engine, settings)

    direct = StableDiffusionPipeline.from_pretrained(
        str(folder), safety_checker=None, requires_safety_checker=False
    )
    direct.scheduler = DPMSolverMultistepScheduler.from_config(
        direct.scheduler.config, algorithm_type="dpmsolver++"
    )
    direct.set_progress_bar_config(disable=True)
    request = GenerationRequest(
        engine_id=engine.id,
        prompts=(WeightedPrompt(text=PROMPT),),
        width=args.size,
        height=args.size,
        steps=args.steps,
        cfg_scale=7.0,
        sampler=Sampler.K_DPMPP_2M,
        seed=42,
    )

    def run_direct() -> None:
        direct(
            PROMPT,
            width=args.size,
            height=args.size,
            num_inference_steps=args.steps,
            guidance_scale=7.0,
            generator=torch.Generator("cpu").manual_seed(42),
        )

    def run_runner() -> None:
        runner.generate(request)

    for fn in (run_direct, run_runner):  # warm-up (also loads the runner's model cache)
        fn()
    times: dict[str, list[float]] = {"direct": [], "runner": []}
    for _ in range(args.runs):
        for name, fn in (("direct", run_direct), ("runner", run_runner)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    d, r = statistics.median(times["direct"]), statistics.median(times["runner"])
    print(
        f"engine {engine.id} (demo) {args.size}x{args.size}, {args.steps} steps, cfg 7, {args.runs} runs, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"direct diffusers call: median {d:.3f} s")
    print(f"stableserve runner:    median {r:.3f} s")
    print(f"ratio runner/direct:   {r / d:.3f}  (aim <= 1.05)")


if __name__ == "__main__":
    main()
