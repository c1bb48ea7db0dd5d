"""Speed of the tiny demo pipelines: median seconds per image for each engine family.

Each family's demo pipeline is built (or reused) with ``ensure_demo_pipeline``, loaded with the
real loaders (``DiffusionPipeline.from_pretrained``; spandrel for ESRGAN) in float32 on CPU,
then run once as a warm-up and ``--runs`` times measured, at the family's default size with
``--steps`` steps and classifier-free guidance ``--cfg``:

- 512x512: sd1, sd2-512, inpaint; 768x768: sd2-768; 1024x1024: sdxl, sd3; 512x896 (w x h):
  sdxl-beta;
- upscalers on a 128x128 input (upscaler-latent-x4 -> 512x512 with the same steps and cfg,
  upscaler-esrgan -> 256x256, one forward pass).

Target: sd1 at 512x512, 30 steps, cfg 7 under 5 s on 2 CPU cores.

    .venv/bin/python benchmarks/demo_speed.py [--families sd1 sdxl ...] [--runs 3] [--steps 30]
        [--cfg 7] [--root DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stableserve.core.engines import Family
from stableserve.inference.demo import ESRGAN_WEIGHTS, ensure_demo_pipeline

PROMPT = "a lighthouse on a cliff at sunset, highly detailed"
NEGATIVE = "blurry, low quality"

SIZES: dict[Family, tuple[int, int]] = {
    Family.SD1: (512, 512),
    Family.SD2_512: (512, 512),
    Family.INPAINT: (512, 512),
    Family.SD2_768: (768, 768),
    Family.SDXL: (1024, 1024),
    Family.SD3: (1024, 1024),
    Family.SDXL_BETA: (512, 896),
    Family.UPSCALER_LATENT_X4: (128, 128),
    Family.UPSCALER_ESRGAN: (128, 128),
}
"""(width, height) in pixels: of the output for generators, of the input for upscalers."""


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _runner(family: Family, folder: Path, steps: int, cfg: float) -> tuple[Callable[[], object], str]:
    """A zero-argument callable producing one image, and a label of what it does."""
    width, height = SIZES[family]
    if family == Family.UPSCALER_ESRGAN:
        from stableserve.inference.spandrel_compat import import_spandrel

        model = import_spandrel().ModelLoader().load_from_file(str(folder / ESRGAN_WEIGHTS)).eval()
        x = torch.rand(1, 3, height, width)

        def esrgan() -> object:
            with torch.inference_mode():
                return model(x)

        return esrgan, f"{width}x{height} -> {width * model.scale}x{height * model.scale}"

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder))  # float32, on CPU
    pipe.set_progress_bar_config(disable=True)
    common = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "num_inference_steps": steps,
        "guidance_scale": cfg,
    }
    if family == Family.UPSCALER_LATENT_X4:
        image = _noise_image(width, height)
        label = f"{width}x{height} -> {4 * width}x{4 * height}, {steps} steps"
        return lambda: pipe(image=image, **common), label
    if family == Family.INPAINT:
        image = _noise_image(width, height)
        mask = Image.new("L", (width, height), 0)
        mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
        return (
            lambda: pipe(image=image, mask_image=mask, width=width, height=height, **common),
            f"{width}x{height}, {steps} steps",
        )
    return lambda: pipe(width=width, height=height, **common), f"{width}x{height}, {steps} steps"


def main() -> None:
    """Parse arguments, run the benchmark, print one line per family."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--families", nargs="+", default=[f.value for f in Family], choices=[f.value for f in Family]
    )
    ap.add_argument("--runs", type=int, default=3, help="measured runs per family (after one warm-up)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--cfg", type=float, default=7.0, help="guidance scale (> 1: classifier-free guidance)")
    ap.add_argument("--root", type=Path, default=None, help="demo cache folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="stableserve-demo-speed-") as tmp:
        root = args.root or Path(tmp)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU, cfg {args.cfg}")
        for name in args.families:
            family = Family(name)
            folder = ensure_demo_pipeline(family, root)
            run, label = _runner(family, folder, args.steps, args.cfg)
            run()  # warm-up
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            print(
                f"{family.value:<20} {label:<34} median {statistics.median(times):6.2f} s"
                f"  (runs: {', '.join(f'{t:.2f}' for t in times)})",
                flush=True,
            )


if __name__ == "__main__":
    main()
