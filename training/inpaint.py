"""A 9-channel inpainting UNet fine-tuned from a trained shapes model, to compare with the
4-channel UNet's latent mask blending (issue 11: "whichever measures better").

Usage (from the repository root)::

    nice -n 19 .venv/bin/python -m training.inpaint --base src/stableserve/data/shapes \\
        --run-dir training/runs/inpaint9
    nice -n 19 .venv/bin/python -m training.evaluate src/stableserve/data/shapes --only inpaint \\
        --inpaint-model training/runs/inpaint9/model --out training/runs/inpaint9/eval

The recipe of ``stable-diffusion-inpainting`` (Rombach et al. 2022, model card), scaled down:

- the UNet's ``conv_in`` takes 9 channels in ``StableDiffusionInpaintPipeline``'s order (noisy
  latents, the mask at latent size, the VAE latents of the masked image); it starts from the
  base UNet with zero weights on the 5 new channels, so step 0 is the base model;
- masks (:func:`random_mask`): a box around one of the scene's objects (grown by 0-8 % of the
  side) half the time, a random rectangle a quarter, the whole image a quarter (plain
  text-to-image); the masked image is the render with the masked pixels set to 0 in [-1, 1],
  exactly as the pipeline prepares it; the caption is the scene's full caption;
- the VAE and text encoder are the base's, frozen; only the UNet trains (:func:`training.stages.unet_step`).

Writes ``<run-dir>/model``: a ``StableDiffusionInpaintPipeline`` folder (fp16 safetensors) with
the base's VAE, text encoder, tokenizer and scheduler and the new UNet.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from training import data, model
from training.checkpoint import (
    Clock,
    Ema,
    add_config_arguments,
    load_state,
    open_run,
    run_config,
    save_state,
    step_generator,
)
from training.stages import Config, Runtime, to_tensor, unet_step

log = logging.getLogger("training")


@dataclass
class InpaintConfig:
    """Hyper-parameters of the fine-tune (recorded in ``config.json`` of the run directory); the
    defaults are the run measured in ``training/README.md`` (14 min on 2 CPU cores)."""

    seed: int = 0
    scenes: int = 2000
    steps: int = 1000
    batch: int = 32
    lr: float = 2e-4
    full_mask: float = 0.25
    object_box: float = 0.5
    cfg_dropout: float = 0.1
    snr_gamma: float = 5.0
    ema_decay: float = 0.995
    checkpoint_minutes: float = 5.0


def random_mask(scene: data.Scene, rng: random.Random, cfg: InpaintConfig) -> Image.Image:
    """Mode-``"L"`` mask (255 = repaint) for ``scene``: the whole image (``cfg.full_mask``), a
    box around one of its objects grown by 0-8 % of the side (``cfg.object_box``), or else a
    random rectangle 10-60 % of each side."""
    w, h = scene.width, scene.height
    mask = Image.new("L", (w, h), 0)
    r = rng.random()
    if r < cfg.full_mask:
        return mask.point(lambda _: 255)
    if r < cfg.full_mask + cfg.object_box:
        obj = rng.choice(scene.objects)
        half = (obj.radius + rng.uniform(0.0, 0.08)) * min(w, h)
        box = (obj.cx * w - half, obj.cy * h - half, obj.cx * w + half, obj.cy * h + half)
    else:
        bw, bh = rng.uniform(0.1, 0.6) * w, rng.uniform(0.1, 0.6) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        box = (x0, y0, x0 + bw, y0 + bh)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def _pipeline_inputs(image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked image (3, H, W) in [-1, 1], binary mask (1, H, W))`` as
    ``StableDiffusionInpaintPipeline`` prepares them (mask binarised at 0.5, masked pixels 0)."""
    m = torch.from_numpy((np.asarray(mask, dtype=np.float32) / 255.0 >= 0.5).astype(np.float32))[None]
    return to_tensor(image) * (m < 0.5), m


@torch.no_grad()
def encode_pairs(run: Path, base: Path, cfg: InpaintConfig, rt: Runtime) -> None:
    """Render training scenes ``0..cfg.scenes-1`` at 512x512 with a :func:`random_mask` each and
    store ``inpaint_latents.pt``: clean and masked-image VAE latents (posterior means, scaled by
    the VAE's ``scaling_factor``, float16), masks at latent size (nearest, as the pipeline) and
    captions."""
    if (run / "inpaint_latents.pt").exists():
        return
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(base / "vae", dtype=torch.float32).to(rt.device).eval()
    scale = vae.config.scaling_factor
    rng = random.Random(cfg.seed)
    clean, masked, masks, captions = [], [], [], []
    clock = Clock()
    for start in range(0, cfg.scenes, 16):
        scenes = [data.training_scene(i) for i in range(start, min(start + 16, cfg.scenes))]
        images = [data.render(s) for s in scenes]
        pairs = [_pipeline_inputs(im, random_mask(s, rng, cfg)) for s, im in zip(scenes, images, strict=True)]
        x = torch.stack([to_tensor(im) for im in images] + [p[0] for p in pairs]).to(rt.device)
        with rt.autocast():
            z = vae.encode(x).latent_dist.mean.float().cpu() * scale
        clean.append(z[: len(scenes)].half())
        masked.append(z[len(scenes) :].half())
        m = torch.stack([p[1] for p in pairs])
        masks.append(torch.nn.functional.interpolate(m, size=z.shape[-2:]).bool())
        captions += [s.caption for s in scenes]
        if (start // 16) % 32 == 31:
            log.info("inpaint latents: %d / %d (%.0f s)", start + len(scenes), cfg.scenes, clock.spent)
    log.info("inpaint latents: %d scenes in %.0f s", cfg.scenes, clock.spent)
    save_state(
        run / "inpaint_latents.pt",
        {
            "clean": torch.cat(clean),
            "masked": torch.cat(masked),
            "masks": torch.cat(masks),
            "captions": captions,
            "spent": clock.spent,
        },
    )


def nine_channel_unet(base_unet) -> torch.nn.Module:
    """A 9-input-channel copy of ``base_unet`` (``UNet2DConditionModel``): same weights, ``conv_in``
    widened with zeros for the mask and masked-image channels (so it starts as the base)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config({**base_unet.config, "in_channels": 9})
    state = base_unet.state_dict()
    weight = state["conv_in.weight"]
    wide = torch.zeros(weight.shape[0], 9, *weight.shape[2:], dtype=weight.dtype)
    wide[:, : weight.shape[1]] = weight
    state["conv_in.weight"] = wide
    unet.load_state_dict(state)
    return unet


def train_inpaint(run: Path, base: Path, cfg: InpaintConfig, rt: Runtime) -> None:
    """Fine-tune :func:`nine_channel_unet` of the base on ``inpaint_latents.pt`` (epsilon
    prediction, min-SNR weights, caption dropout, EMA); writes ``inpaint_final.pt``."""
    if (run / "inpaint_final.pt").exists():
        return
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from transformers import CLIPTextModel

    cache = load_state(run / "inpaint_latents.pt")
    tok = model.tokenizer()
    ids = tok(cache["captions"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    empty = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    base_unet = UNet2DConditionModel.from_pretrained(base / "unet", dtype=torch.float32)
    unet = nine_channel_unet(base_unet).to(rt.device)
    if rt.device.type == "cpu":
        unet.set_attn_processor(AttnProcessor())
    text = CLIPTextModel.from_pretrained(base / "text_encoder", dtype=torch.float32).to(rt.device).eval()
    text.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.01)
    ema = Ema(unet, cfg.ema_decay)
    ac = model.scheduler().alphas_cumprod.to(rt.device)
    steps_cfg = Config(snr_gamma=cfg.snr_gamma)
    state = load_state(run / "inpaint_state.pt")
    step = 0
    if state:
        unet.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        ema.shadow = state["ema"]
        step = state["step"]
    clock = Clock(state["spent"] if state else 0.0, cfg.checkpoint_minutes)
    n = len(ids)
    unet.train()
    while step < cfg.steps:
        g = step_generator(cfg.seed + 2, step)
        sel = torch.randint(n, (cfg.batch,), generator=g)
        tokens = ids[sel].clone()
        tokens[torch.rand(cfg.batch, generator=g) < cfg.cfg_dropout] = empty
        x0 = cache["clean"][sel].float()
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (cfg.batch,), generator=g)
        cond = torch.cat([cache["masks"][sel].float(), cache["masked"][sel].float()], dim=1)
        batch = tuple(v.to(rt.device) for v in (x0, noise, t, tokens))
        lr = (
            cfg.lr
            * min(1.0, (step + 1) / 50)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        )
        for group in opt.param_groups:
            group["lr"] = lr
        loss, mse = unet_step(unet, text, opt, batch, ac, steps_cfg, rt, cond=cond.to(rt.device))
        step += 1
        ema.update(unet, step)
        if step % 25 == 0:
            log.info("inpaint step %d loss %.4f mse %.4f lr %.2e (%.0f s)", step, loss, mse, lr, clock.spent)
        if clock.due() or step == cfg.steps:
            state = {"model": unet.state_dict(), "opt": opt.state_dict(), "ema": ema.shadow}
            save_state(run / "inpaint_state.pt", state | {"step": step, "spent": clock.spent})
    save_state(run / "inpaint_final.pt", {"ema": ema.shadow, "spent": clock.spent, "steps": step})


def export(run: Path, base: Path, out: Path) -> Path:
    """Write the ``StableDiffusionInpaintPipeline`` folder (fp16): the base's components with the
    fine-tuned 9-channel UNet (EMA weights). Returns ``out``."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    final = load_state(run / "inpaint_final.pt") or load_state(run / "inpaint_state.pt")
    pipe = StableDiffusionPipeline.from_pretrained(base, dtype=torch.float32)
    unet = nine_channel_unet(pipe.unet)
    unet.load_state_dict(final["ema"])
    inpaint = StableDiffusionInpaintPipeline(**{**pipe.components, "unet": unet})
    inpaint.to(dtype=torch.float16)
    inpaint.save_pretrained(out, safe_serialization=True)
    info = {"steps": final.get("steps", final.get("step")), "seconds": final["spent"]}
    info["latent_seconds"] = load_state(run / "inpaint_latents.pt")["spent"]
    info["config"] = json.loads((run / "config.json").read_text())
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="a trained shapes model folder")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue with the run's config.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    add_config_arguments(parser, InpaintConfig)
    args = parser.parse_args(argv)
    run: Path = args.run_dir
    open_run(run, args.threads)
    cfg = run_config(run, InpaintConfig, args, args.resume)
    rt = Runtime.for_device(args.device)
    log.info("inpaint fine-tune %s from %s, %s: %s", run, args.base, rt, cfg)
    encode_pairs(run, args.base, cfg, rt)
    train_inpaint(run, args.base, cfg, rt)
    log.info("exported %s", export(run, args.base, run / "model"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
