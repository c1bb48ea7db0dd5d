"""Evaluate a shapes model folder: held-out captions, img2img and inpainting, scored by the checker.

Usage::

    nice -n 19 .venv/bin/python -m training.evaluate MODEL_DIR --out training/runs/shapes-v1/eval

Writes ``metrics.json`` (rates below) and ``grid.png`` (the first 16 text-to-image results with
their captions). Every image uses generator seed = its index, so a rerun gives the same figures.

- text-to-image: ``--count`` held-out captions (:func:`training.data.held_out_scenes`) at
  512x512, ``--steps`` (30) steps, guidance ``--guidance`` (7). Per object and per image (all of
  its objects right): colour, shape and position rates (:mod:`training.checker`).
- image-to-image on the ground-truth renders of the first ``--edit-count`` scenes: SSIM to the
  input at strength 0.2 with the same caption; at strength 0.9 with the first object recoloured in
  the caption, the rate at which the checker sees the new colour there.
- inpainting (``StableDiffusionInpaintPipeline`` on the same components, 4-channel UNet with
  the pipeline's latent mask blending): the first object's box (grown by 4 % of the side) masked
  and recoloured in the caption; the result composited over the source outside the mask as the
  server does (``stableserve.inference.imaging.composite``). Reported: the rate of the new colour
  inside, the largest change (0-255) of any unmasked pixel after compositing (0 = unchanged),
  and, before compositing, the pipeline's mean absolute change of pixels more than 16 px
  outside the mask (the VAE's round trip). ``--inpaint-model DIR`` uses the inpainting pipeline
  of that folder instead (a 9-channel UNet from :mod:`training.inpaint`); ``--only inpaint``
  runs the inpainting check alone.
"""

from __future__ import annotations

import argparse
import json
import random
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from stableserve.inference.imaging import composite
from training import checker, data


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two ``(H, W, 3)`` uint8 images on luma, 11-px Gaussian window (sigma 1.5),
    constants of Wang et al. 2004 (K1 0.01, K2 0.03, L 255)."""
    from scipy.ndimage import gaussian_filter

    def luma(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])

    x, y = luma(a), luma(b)
    f = lambda z: gaussian_filter(z, 1.5, truncate=3.5)  # noqa: E731
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def recolored(scene: data.Scene, rng: random.Random) -> tuple[str, str]:
    """``(new_caption, new_colour)``: the first object's colour swapped for one used nowhere in
    the scene (caption edited in place, so the phrasing is kept)."""
    obj = scene.objects[0]
    used = {o.color for o in scene.objects} | {scene.background_color}
    new = rng.choice([c for c in data.PALETTE if c not in used])
    return scene.caption.replace(f"{obj.color} {obj.shape}", f"{new} {obj.shape}", 1), new


def object_box_mask(scene: data.Scene, obj: data.SceneObject, grow: float = 0.04) -> Image.Image:
    """Mode-``"L"`` mask (255 inside) of ``obj``'s bounding box grown by ``grow`` of the side."""
    side = min(scene.width, scene.height)
    r = (obj.radius + grow) * side
    cx, cy = obj.cx * scene.width, obj.cy * scene.height
    mask = Image.new("L", (scene.width, scene.height), 0)
    ImageDraw.Draw(mask).rectangle((cx - r, cy - r, cx + r, cy + r), fill=255)
    return mask


def _rates(scores: list[list[checker.ObjectScore]]) -> dict[str, float]:
    flat = [s for img in scores for s in img]
    out = {}
    for k in ("color", "shape", "position"):
        out[f"{k}_per_object"] = float(np.mean([getattr(s, k) for s in flat]))
        out[f"{k}_per_image"] = float(np.mean([all(getattr(s, k) for s in img) for img in scores]))
    out["all_per_image"] = float(
        np.mean([all(s.color and s.shape and s.position for s in img) for img in scores])
    )
    return out


def grid(images: list[Image.Image], captions: list[str], cols: int = 4, cell: int = 256) -> Image.Image:
    """Thumbnails (``cell`` px) with their captions underneath, ``cols`` per row."""
    rows = (len(images) + cols - 1) // cols
    text_h = 44
    out = Image.new("RGB", (cols * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(out)
    for i, (im, cap) in enumerate(zip(images, captions, strict=True)):
        x, y = (i % cols) * cell, (i // cols) * (cell + text_h)
        out.paste(im.resize((cell, cell)), (x, y))
        lines = textwrap.wrap(cap, 42)[:3]
        draw.multiline_text((x + 3, y + cell + 2), "\n".join(lines), fill="black", spacing=1)
    return out


def _img2img(i2i, caption: str, src: Image.Image, strength: float, generator, args) -> np.ndarray:
    """``(H, W, 3)`` uint8 image-to-image result of ``src`` with ``caption`` at ``strength``."""
    out = i2i(
        caption,
        image=src,
        strength=strength,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=generator,
    ).images[0]
    return np.asarray(out)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; writes ``metrics.json`` and ``grid.png`` under ``--out``."""
    from diffusers import (
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
    )

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--edit-count", type=int, default=50)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=7.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--inpaint-model", type=Path, help="a StableDiffusionInpaintPipeline folder (9-channel UNet) to use"
    )
    ap.add_argument("--only", choices=("all", "inpaint"), default="all", help="'inpaint': skip the rest")
    args = ap.parse_args(argv)
    only_inpaint = args.only == "inpaint"
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionPipeline.from_pretrained(args.model, dtype=torch.float32).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    scenes = data.held_out_scenes(args.count)
    gen = lambda i: torch.Generator().manual_seed(i)  # noqa: E731
    t2i, shown, times = [], [], []
    for i, s in enumerate([] if only_inpaint else scenes):
        t = time.perf_counter()
        im = pipe(
            s.caption, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=gen(i)
        ).images[0]
        times.append(time.perf_counter() - t)
        t2i.append(checker.check_scene(np.asarray(im), s))
        if i < 16:
            shown.append(im)
        if (i + 1) % 10 == 0:
            print(f"text-to-image {i + 1}/{len(scenes)} ({np.median(times):.1f} s each)", flush=True)
    metrics: dict = {}
    if not only_inpaint:
        metrics["text_to_image"] = _rates(t2i) | {
            "count": len(scenes),
            "median_seconds": float(np.median(times)),
        }
        grid(shown, [s.caption for s in scenes[:16]]).save(args.out / "grid.png")

    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    if args.inpaint_model:
        inp = StableDiffusionInpaintPipeline.from_pretrained(args.inpaint_model, dtype=torch.float32)
        inp = inp.to(args.device)
    else:
        inp = StableDiffusionInpaintPipeline(**pipe.components)
    for p in (i2i, inp):
        p.set_progress_bar_config(disable=True)
    rng = random.Random(0)
    ssims, follow, inside, outside, raw_outside = [], [], [], [], []
    for i, s in enumerate(scenes[: args.edit_count]):
        if i % 10 == 0:
            print(f"edits {i}/{args.edit_count}", flush=True)
        src = data.render(s)
        caption, color = recolored(s, rng)
        if not only_inpaint:
            ssims.append(ssim(np.asarray(src), _img2img(i2i, s.caption, src, 0.2, gen(i), args)))
            classes = checker.classify_pixels(_img2img(i2i, caption, src, 0.9, gen(i), args))
            follow.append(checker.check_object(classes, s, s.objects[0], color).color)
        mask = object_box_mask(s, s.objects[0])
        out = inp(
            caption,
            image=src,
            mask_image=mask,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=gen(i),
        ).images[0]
        far = np.asarray(mask.filter(ImageFilter.MaxFilter(33))) == 0
        diff = np.abs(np.asarray(out, np.float32) - np.asarray(src, np.float32)).mean(-1)
        raw_outside.append(float(diff[far].mean()))
        # as the server does (inference.runner): the source's pixels back wherever the mask is 0
        out = composite(src, out, np.asarray(mask, np.float32) / 255.0)
        classes = checker.classify_pixels(np.asarray(out))
        inside.append(checker.check_object(classes, s, s.objects[0], color).color)
        unmasked = np.asarray(mask) == 0
        changed = np.abs(np.asarray(out, np.int16) - np.asarray(src, np.int16)).max(-1)
        outside.append(int(changed[unmasked].max()))
    if not only_inpaint:
        metrics["img2img"] = {
            "ssim_at_0.2_mean": float(np.mean(ssims)),
            "ssim_at_0.2_min": float(np.min(ssims)),
            "ssim_at_0.2_rate_ge_0.8": float(np.mean(np.array(ssims) >= 0.8)),
            "new_color_at_0.9": float(np.mean(follow)),
            "count": len(ssims),
        }
    metrics["inpaint"] = {
        "unet_in_channels": inp.unet.config.in_channels,
        "new_color_inside": float(np.mean(inside)),
        "max_change_unmasked": int(np.max(outside)),
        "pipeline_mean_abs_change_far_outside": float(np.mean(raw_outside)),
        "count": len(inside),
    }
    metrics["settings"] = {
        "steps": args.steps,
        "guidance": args.guidance,
        "size": "512x512",
        "threads": args.threads,
        "device": args.device,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
