"""The shapes model on this machine's CPU: generation speed and what training it costs.

Usage (from the repository root)::

    .venv/bin/python benchmarks/shapes_model.py [--threads 2] [--repeats 3] [--train-steps 3]

1. Text-to-image, 512x512, 30 steps, guidance 7, batch 1 (issue 11's target: under 10 s on two
   CPU cores), through the stock ``StableDiffusionPipeline`` loading the shipped weights
   (``stableserve/data/shapes``) in float32; the median of ``--repeats`` runs after a warm-up,
   split into denoising (UNet, both guidance branches) and the VAE decode, printed side by side
   with the target as a ratio.
2. Training cost: ``--train-steps`` timed steps of each training stage (after one warm-up step)
   with the hyper-parameters the shipped weights were trained with (``training_info.json``),
   extrapolated to their step counts, next to the 3-hour budget of a 2-core CPU run. The latent
   cache is timed on 64 scenes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.stages import Config, _to_tensor, _vae_batch  # noqa: E402

from stableserve.inference.demo_shapes import SHAPES_MODEL  # noqa: E402
from training import data, model  # noqa: E402

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


def training_cost(steps: int) -> None:
    """Print seconds per step of each stage and the extrapolated CPU hours."""
    info = json.loads((SHAPES_MODEL / "training_info.json").read_text())
    cfg = Config(**info["config"])
    g = torch.Generator().manual_seed(0)

    vae = cfg.make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    scenes = [data.training_scene(i) for i in range(16)]
    pool = torch.stack(
        [torch.from_numpy(__import__("numpy").array(data.render(s))).permute(2, 0, 1) for s in scenes]
    )
    centres = [[(o.cx, o.cy) for o in s.objects] for s in scenes]

    def vae_step() -> None:
        x = _vae_batch(pool, centres, cfg, g)
        post = vae.encode(x).latent_dist
        loss = (vae.decode(post.sample()).sample - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def latent_batch() -> None:
        with torch.no_grad():
            x = torch.stack([_to_tensor(data.render(data.training_scene(i))) for i in range(16)])
            vae.encode(x)

    unet, text = cfg.make_unet(), model.text_encoder()
    params = list(unet.parameters()) + list(text.parameters())
    uopt = torch.optim.AdamW(params, lr=1e-4)
    tokens = model.tokenizer()(
        [s.caption for s in scenes] * (cfg.unet_batch // 16 + 1),
        padding="max_length",
        max_length=77,
        return_tensors="pt",
    ).input_ids[: cfg.unet_batch]

    def unet_step() -> None:
        x = torch.randn(cfg.unet_batch, model.LATENT_CHANNELS, 32, 32, generator=g)
        t = torch.randint(0, 1000, (cfg.unet_batch,), generator=g)
        loss = unet(x, t, text(tokens)[0]).sample.square().mean()
        uopt.zero_grad()
        loss.backward()
        uopt.step()

    rows = [
        (
            "VAE",
            _timed(vae_step, steps),
            info["config"]["vae_steps"],
            f"batch {cfg.vae_batch}, {cfg.vae_crop} px",
        ),
        ("latent cache", _timed(latent_batch, 2) / 16, cfg.num_latents, "per scene"),
        (
            "UNet + text",
            _timed(unet_step, steps),
            info["unet_steps"],
            f"batch {cfg.unet_batch}, 32x32 latents",
        ),
    ]
    print(f"training cost on {torch.get_num_threads()} CPU threads (the shipped run's settings):")
    total = 0.0
    for name, per, count, what in rows:
        total += per * count
        print(f"  {name:<14}{per:8.3f} s x {count:>6} = {per * count / 3600:6.2f} h   ({what})")
    print(
        f"  {'total':<14}{total / 3600:36.2f} h   ratio to the {BUDGET_HOURS:.0f} h budget: "
        f"{total / 3600 / BUDGET_HOURS:.2f}"
    )


def main() -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    generation(args.repeats)
    training_cost(args.train_steps)


if __name__ == "__main__":
    main()
