"""The shapes model on this machine's CPU: generation speed and what training it costs.

Usage (from the repository root)::

    .venv/bin/python benchmarks/shapes_model.py [--threads 2] [--repeats 3] [--train-steps 4]

1. Text-to-image, 512x512, 30 steps, guidance 7, batch 1 (issue 11's target: under 10 s on two
   CPU cores), through the stock ``StableDiffusionPipeline`` loading the shipped weights
   (``stableserve/data/shapes``) in float32; the median of ``--repeats`` runs after a warm-up,
   split into denoising (UNet, both guidance branches) and the VAE decode, printed side by side
   with the target as a ratio.
2. Training cost: the training stages themselves (:mod:`training.stages`, the shipped run's
   settings from ``training_info.json``) run for a few steps in a temporary directory, in plain
   float32 with whole batches and with the CPU runtime (:class:`training.stages.Runtime`:
   bfloat16 autocast, micro-batches of 32, classic attention) side by side: seconds per VAE step,
   per latent-cache scene (rendering included) and per UNet step (its size buckets included),
   extrapolated to the run's step counts, next to the 3-hour budget of a 2-core CPU run.
   ``--train-steps N``: N float32 UNet steps and 3N with the CPU runtime (the VAE and latent
   counts scale with it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.checkpoint import load_state  # noqa: E402
from training.stages import Config, Runtime, encode_latents, train_unet, train_vae  # noqa: E402

from stableserve.inference.demo_shapes import SHAPES_MODEL  # noqa: E402

TARGET_SECONDS = 10.0
BUDGET_HOURS = 3.0


def generation(repeats: int) -> None:
    """Print the median 512x512 / 30-step generation time and its parts."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_MODEL, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a large red circle on the left on a blue background"

    def run(seed: int, kind: str):
        generator = torch.Generator().manual_seed(seed)
        return pipe(
            prompt,
            num_inference_steps=30,
            guidance_scale=7.0,
            height=512,
            width=512,
            generator=generator,
            output_type=kind,
        ).images

    run(0, "latent")
    totals, denoise = [], []
    for seed in range(repeats):
        t = time.perf_counter()
        latents = run(seed, "latent")
        t_latent = time.perf_counter() - t
        with torch.no_grad():
            pipe.vae.decode(latents / pipe.vae.config.scaling_factor)
        totals.append(time.perf_counter() - t)
        denoise.append(t_latent)
    total, unet = statistics.median(totals), statistics.median(denoise)
    print("text-to-image 512x512, 30 steps, guidance 7, batch 1:")
    print(
        f"  {'total':<22}{total:8.2f} s   ratio to the {TARGET_SECONDS:.0f} s target: "
        f"{total / TARGET_SECONDS:.2f}"
    )
    print(f"  {'denoising (60 UNet)':<22}{unet:8.2f} s")
    print(f"  {'VAE decode':<22}{total - unet:8.2f} s")


def _timed(fn, steps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def _stage_seconds(cfg: Config, rt: Runtime, counts: dict[str, int]) -> dict[str, float]:
    """Seconds per VAE step, per latent-cache scene and per UNet step under ``rt``: the training
    stages themselves (:mod:`training.stages`) run in a temporary run directory with the shipped
    run's settings but ``counts`` steps / scenes, their recorded wall time divided by the count
    (a VAE pool of 16 scenes, so the stage's set-up is negligible)."""
    short = dataclasses.replace(
        cfg,
        vae_steps=counts["vae"],
        vae_pool=16,
        num_latents=counts["latents"],
        unet_steps=counts["unet"],
        checkpoint_minutes=1e6,
    )
    with tempfile.TemporaryDirectory(prefix="shapes-bench-") as tmp:
        run = Path(tmp)
        train_vae(run, short, rt)
        encode_latents(run, short, rt)
        train_unet(run, short, rt)
        spent = {
            "vae": load_state(run / "vae_final.pt")["spent"],
            "latents": load_state(run / "latents.pt")["spent"],
            "unet": load_state(run / "unet_final.pt")["spent"],
        }
    return {k: spent[k] / counts[k] for k in spent}


def training_cost(steps: int) -> None:
    """Print seconds per step of each stage, plain float32 and the CPU runtime side by side, and
    the hours they extrapolate to for the shipped run's step counts."""
    info = json.loads((SHAPES_MODEL / "training_info.json").read_text())
    cfg = Config(**info["config"])
    plain, fast = Runtime(), Runtime.for_device("cpu")
    a = _stage_seconds(cfg, plain, {"vae": 4 * steps, "latents": 32 * steps, "unet": steps})
    b = _stage_seconds(cfg, fast, {"vae": 8 * steps, "latents": 64 * steps, "unet": 3 * steps})
    counts = {"vae": cfg.vae_steps, "latents": cfg.num_latents, "unet": info["unet_steps"]}
    what = {
        "vae": f"VAE step (batch {cfg.vae_batch}, {cfg.vae_crop} px)",
        "latents": "latent cache, per scene",
        "unet": f"UNet + text step (batch {cfg.unet_batch})",
    }
    print(
        f"training cost on {torch.get_num_threads()} CPU threads, the shipped run's settings: "
        f"float32 whole batches vs the CPU runtime ({fast}):"
    )
    print(f"  {'stage':<38}{'float32':>10}{'CPU runtime':>13}{'speed-up':>10}{'count':>8}{'hours':>8}")
    total = 0.0
    for k in counts:
        hours = b[k] * counts[k] / 3600
        total += hours
        print(f"  {what[k]:<38}{a[k]:9.3f}s{b[k]:12.3f}s{a[k] / b[k]:9.2f}x{counts[k]:>8}{hours:8.2f}")
    plain_total = sum(a[k] * counts[k] for k in counts) / 3600
    print(
        f"  total: {plain_total:.2f} h in float32, {total:.2f} h with the CPU runtime; "
        f"ratio to the {BUDGET_HOURS:.0f} h budget: {total / BUDGET_HOURS:.2f}"
    )


def main() -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    generation(args.repeats)
    training_cost(args.train_steps)


if __name__ == "__main__":
    main()
