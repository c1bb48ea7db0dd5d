"""The three training stages: VAE on crops, latent cache, UNet + text encoder.

Each stage reads and writes files in the run directory and checkpoints itself every few
minutes (``<stage>_state.pt``), so a killed run continues with ``--resume`` where it stopped;
every random draw depends on ``(seed, step)`` only (:func:`training.checkpoint.step_generator`).
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training import data, model
from training.checkpoint import Clock, Ema, load_state, save_state, step_generator

log = logging.getLogger("training")


@dataclass
class Config:
    """Hyper-parameters of one run (all recorded in ``config.json`` of the run directory)."""

    seed: int = 0
    vae_widths: str = ",".join(map(str, model.VAE_WIDTHS))
    vae_groups: int = model.VAE_GROUPS
    unet_widths: str = ",".join(map(str, model.UNET_WIDTHS))
    unet_attention: str = model.UNET_ATTENTION
    vae_steps: int = 4000
    vae_batch: int = 6
    vae_crop: int = 128
    vae_pool: int = 300
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    num_latents: int = 12000
    buckets: str = "512x512:8,512x768:1,768x512:1"
    unet_steps: int = 3000
    unet_batch: int = 128
    unet_lr: float = 5e-4
    cfg_dropout: float = 0.1
    offset_noise: float = 0.05
    snr_gamma: float = 5.0
    ema_decay: float = 0.999
    checkpoint_minutes: float = 5.0

    def make_vae(self, scaling_factor: float = 1.0):
        """The run's ``AutoencoderKL`` (:func:`training.model.vae` with its widths and groups)."""
        widths = tuple(int(w) for w in self.vae_widths.split(","))
        return model.vae(scaling_factor, widths=widths, groups=self.vae_groups)

    def make_unet(self):
        """The run's ``UNet2DConditionModel`` (:func:`training.model.unet`)."""
        widths = tuple(int(w) for w in self.unet_widths.split(","))
        return model.unet(widths=widths, attention=self.unet_attention)

    def bucket_list(self) -> list[tuple[int, int, int]]:
        """``[(width, height, weight), ...]`` parsed from :attr:`buckets`."""
        out = []
        for item in self.buckets.split(","):
            size, weight = item.split(":")
            w, h = size.split("x")
            out.append((int(w), int(h), int(weight)))
        return out


@dataclass(frozen=True)
class Runtime:
    """Where and how a run computes; not a hyper-parameter: every :class:`Runtime` draws the
    same samples from the same :class:`Config` (results differ only by arithmetic rounding).

    - ``device``: where the models train;
    - ``bf16``: autocast convolutions and matmuls to bfloat16 (``torch.autocast``), master
      weights and losses in float32. On these CPUs (AVX512-BF16, oneDNN) the VAE step is ~1.5x
      faster, the latent encoder ~2x, and with the two settings below the UNet step of 128
      ~4x (``benchmarks/shapes_model.py``);
    - ``micro_batch``: split each UNet batch into chunks of this many samples and accumulate the
      gradients (0 = the whole batch at once). A CPU step over 128 samples costs ~1.9x more per
      sample than over 32 (caches), so CPU runs accumulate 4 x 32 with the same batch of 128.

    On a CPU the UNet also uses diffusers' classic ``AttnProcessor`` (baddbmm + softmax) and the
    text encoder eager attention: their backward passes are faster there than PyTorch's SDPA
    kernel (a UNet step of 128: 3.1 s against 4.2 s).
    """

    device: torch.device = torch.device("cpu")
    bf16: bool = False
    micro_batch: int = 0

    @classmethod
    def for_device(cls, device: str | torch.device) -> Runtime:
        """The fast settings for ``device``: CPU -> bf16 with micro-batches of 32; CUDA -> float32
        (TF32 matmuls, set by ``training.train``), whole batches."""
        device = torch.device(device)
        if device.type == "cpu":
            return cls(device, bf16=True, micro_batch=32)
        return cls(device)

    def autocast(self):
        """Context manager: bfloat16 autocast when :attr:`bf16`, else a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def chunks(self, batch: int) -> list[slice]:
        """Slices of a batch of ``batch`` samples, :attr:`micro_batch` at a time."""
        step = self.micro_batch or batch
        return [slice(i, min(i + step, batch)) for i in range(0, batch, step)]


def to_tensor(img) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1


# ---------------------------------------------------------------------------------------------
# Stage 1: VAE


def vae_batch(pool: torch.Tensor, centres: list, cfg: Config, g: torch.Generator) -> torch.Tensor:
    """``cfg.vae_batch`` random crops (half centred near an object) with random flips."""
    n, _, h, w = pool.shape
    c = cfg.vae_crop
    crops = []
    for _ in range(cfg.vae_batch):
        i = int(torch.randint(n, (1,), generator=g))
        if torch.rand(1, generator=g) < 0.5 and centres[i]:
            cx, cy = centres[i][int(torch.randint(len(centres[i]), (1,), generator=g))]
            jitter = (torch.rand(2, generator=g) - 0.5) * c * 0.6
            x0, y0 = int(cx * w - c / 2 + jitter[0]), int(cy * h - c / 2 + jitter[1])
        else:
            x0, y0 = (int(v) for v in torch.randint(0, max(1, w - c), (2,), generator=g))
        x0, y0 = min(max(x0, 0), w - c), min(max(y0, 0), h - c)
        crop = pool[i, :, y0 : y0 + c, x0 : x0 + c]
        if torch.rand(1, generator=g) < 0.5:
            crop = crop.flip(-1)
        crops.append(crop)
    return torch.stack(crops).float() / 127.5 - 1


def vae_step(vae, opt, x: torch.Tensor, g: torch.Generator, cfg: Config, rt: Runtime) -> tuple[float, float]:
    """One optimiser step of the VAE on images ``x`` ``(B, 3, H, W)`` in [-1, 1] (on
    ``rt.device``): L1 + MSE reconstruction of a posterior sample (noise from ``g``) plus
    ``cfg.kl_weight`` x KL. Returns ``(loss, reconstruction loss)``."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    with rt.autocast():
        moments = vae.encode(x).latent_dist.parameters
    post = DiagonalGaussianDistribution(moments.float())
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(x.device)
    with rt.autocast():
        out = vae.decode(z).sample.float()
    rec = F.l1_loss(out, x) + F.mse_loss(out, x)
    loss = rec + cfg.kl_weight * post.kl().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    opt.step()
    return loss.item(), rec.item()


def train_vae(run: Path, cfg: Config, rt: Runtime) -> None:
    """Stage 1: train the ``AutoencoderKL`` (:func:`vae_step`) on crops of a pool of 512x512
    scenes (training scenes ``0..vae_pool-1``). Writes ``vae_final.pt`` (state dict)."""
    if (run / "vae_final.pt").exists():
        return
    torch.manual_seed(cfg.seed)
    vae = cfg.make_vae().to(rt.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    with torch.no_grad():  # posterior std starts at exp(-3) ~ 0.05 everywhere (log-variance rows)
        vae.encoder.conv_out.weight[model.LATENT_CHANNELS :] = 0.0
        vae.encoder.conv_out.bias[model.LATENT_CHANNELS :] = -6.0
    state = load_state(run / "vae_state.pt")
    step = 0
    if state:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    clock = Clock(state["spent"] if state else 0.0, cfg.checkpoint_minutes)
    scenes = [data.training_scene(i) for i in range(cfg.vae_pool)]
    pool = torch.stack([torch.from_numpy(np.array(data.render(s))).permute(2, 0, 1) for s in scenes])
    centres = [[(o.cx, o.cy) for o in s.objects] for s in scenes]
    log.info(
        "vae: %d params, pool %d, from step %d", sum(p.numel() for p in vae.parameters()), len(pool), step
    )
    vae.train()
    recent: list[float] = []
    while step < cfg.vae_steps:
        g = step_generator(cfg.seed, step)
        x = vae_batch(pool, centres, cfg, g).to(rt.device)
        lr = (
            cfg.vae_lr
            * min(1.0, (step + 1) / 100)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps)))
        )
        for group in opt.param_groups:
            group["lr"] = lr
        loss, rec = vae_step(vae, opt, x, g, cfg, rt)
        step += 1
        recent = (recent + [rec])[-25:]
        if step % 25 == 0:
            mean = sum(recent) / len(recent)
            log.info(
                "vae step %d loss %.4f rec %.4f (mean of 25: %.4f) (%.0f s)",
                step,
                loss,
                rec,
                mean,
                clock.spent,
            )
        if clock.due() or step == cfg.vae_steps:
            save_state(
                run / "vae_state.pt",
                {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step, "spent": clock.spent},
            )
    save_state(run / "vae_final.pt", {"model": vae.state_dict(), "spent": clock.spent, "steps": step})


# ---------------------------------------------------------------------------------------------
# Stage 2: latent cache


def _bucket_of(index: int, buckets: list[tuple[int, int, int]]) -> tuple[int, int]:
    total = sum(b[2] for b in buckets)
    r = (index * 2654435761) % 1000 / 1000 * total
    for w, h, weight in buckets:
        if r < weight:
            return w, h
        r -= weight
    return buckets[-1][0], buckets[-1][1]


@torch.no_grad()
def encode_latents(run: Path, cfg: Config, rt: Runtime) -> None:
    """Stage 2: render training scenes ``0..num_latents-1`` (size bucket by index hash) and store
    the posterior means of the trained VAE (float16) in ``latents.pt`` with their captions."""
    if (run / "latents.pt").exists():
        return
    vae = cfg.make_vae().to(rt.device).eval()
    vae.load_state_dict(load_state(run / "vae_final.pt")["model"])
    state = load_state(run / "latents_state.pt") or {"latents": {}, "captions": {}, "done": 0, "spent": 0.0}
    clock = Clock(state["spent"], cfg.checkpoint_minutes)
    buckets = cfg.bucket_list()
    chunk = 256
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(state["done"], cfg.num_latents, chunk):
            idx = list(range(start, min(start + chunk, cfg.num_latents)))
            scenes = [data.training_scene(i, *_bucket_of(i, buckets)) for i in idx]
            images = list(pool.map(data.render, scenes, chunksize=8))
            by_size: dict[tuple[int, int], list[int]] = {}
            for j, s in enumerate(scenes):
                by_size.setdefault((s.width, s.height), []).append(j)
            for (w, h), js in by_size.items():
                for b in range(0, len(js), 16):
                    part = js[b : b + 16]
                    x = torch.stack([to_tensor(images[j]) for j in part]).to(rt.device)
                    with rt.autocast():
                        z = vae.encode(x).latent_dist.mean.float().cpu().half()
                    key = f"{w}x{h}"
                    state["latents"].setdefault(key, []).append(z)
                    state["captions"].setdefault(key, []).extend(scenes[j].caption for j in part)
            state["done"] = idx[-1] + 1
            if clock.due():
                state["spent"] = clock.spent
                save_state(run / "latents_state.pt", state)
                log.info("latents: %d / %d (%.0f s)", state["done"], cfg.num_latents, clock.spent)
    latents = {k: torch.cat(v) for k, v in state["latents"].items()}
    flat = torch.cat([v.float().flatten() for v in latents.values()])
    scaling = 1.0 / flat.std().item()
    log.info(
        "latents done: %s, std %.4f -> scaling_factor %.5f",
        {k: tuple(v.shape) for k, v in latents.items()},
        flat.std().item(),
        scaling,
    )
    save_state(
        run / "latents.pt",
        {"latents": latents, "captions": state["captions"], "scaling_factor": scaling, "spent": clock.spent},
    )


# ---------------------------------------------------------------------------------------------
# Stage 3: UNet + text encoder


def _snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al. 2023): min(SNR, g) / SNR."""
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    return torch.clamp(snr, max=gamma) / snr


def make_unet_and_text(cfg: Config, rt: Runtime) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The run's fresh UNet and text encoder on ``rt.device`` (seeded by ``cfg.seed + 1``); on
    a CPU the UNet uses the classic attention processor and the text encoder transformers'
    eager attention (see :class:`Runtime`)."""
    from diffusers.models.attention_processor import AttnProcessor

    torch.manual_seed(cfg.seed + 1)
    unet, text = cfg.make_unet().to(rt.device), model.text_encoder().to(rt.device)
    if rt.device.type == "cpu":
        unet.set_attn_processor(AttnProcessor())
        text.set_attn_implementation("eager")
    return unet, text


def unet_step(
    unet,
    text,
    opt,
    batch: tuple[torch.Tensor, ...],
    ac: torch.Tensor,
    cfg: Config,
    rt: Runtime,
    cond: torch.Tensor | None = None,
) -> tuple[float, float]:
    """One optimiser step of the UNet (and of the text encoder where ``opt`` holds its
    parameters) on ``batch = (x0, noise, t, tokens)`` (latents ``(B, 4, h, w)``, noise like
    them, timesteps ``(B,)`` in 0..999, token ids ``(B, 77)``, all on ``rt.device``); ``ac`` =
    the schedule's ``alphas_cumprod``. ``cond`` ``(B, C, h, w)``, when given, is concatenated to
    the noisy latents along the channels (an inpainting UNet's mask and masked-image latents).

    Epsilon-prediction MSE with min-SNR weights, averaged over the batch; the gradient is
    accumulated over ``rt.chunks`` (the same gradient as one pass, up to rounding).
    Returns ``(weighted loss, plain MSE)``.
    """
    x0, noise, t, tokens = batch
    a = ac[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    if cond is not None:
        xt = torch.cat([xt, cond], dim=1)
    weights = _snr_weights(ac, t, cfg.snr_gamma)
    n = len(t)
    opt.zero_grad(set_to_none=True)
    loss_sum = mse_sum = 0.0
    for part in rt.chunks(n):
        with rt.autocast():
            pred = unet(xt[part], t[part], text(tokens[part])[0]).sample
        per = F.mse_loss(pred.float(), noise[part], reduction="none").mean(dim=(1, 2, 3))
        loss = (per * weights[part]).sum() / n
        loss.backward()
        loss_sum += loss.item()
        mse_sum += per.sum().item() / n
    params = [p for group in opt.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss_sum, mse_sum


def train_unet(run: Path, cfg: Config, rt: Runtime) -> None:
    """Stage 3: train UNet and text encoder jointly (:func:`unet_step`) on the cached latents
    (epsilon prediction, SD 1.5's noise schedule, min-SNR weights, offset noise, caption dropout
    ``cfg_dropout`` to the empty prompt for classifier-free guidance). Writes ``unet_final.pt``
    with the EMA weights."""
    if (run / "unet_final.pt").exists():
        return
    cache = load_state(run / "latents.pt")
    scale = cache["scaling_factor"]
    tok = model.tokenizer()
    keys = sorted(cache["latents"])
    latents = {k: cache["latents"][k].float() * scale for k in keys}
    ids = {
        k: tok(
            cache["captions"][k], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        for k in keys
    }
    empty = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    weights = torch.tensor([float(len(latents[k])) for k in keys])

    unet, text = make_unet_and_text(cfg, rt)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    both = torch.nn.ModuleDict({"unet": unet, "text": text})
    ema = Ema(both, cfg.ema_decay)
    ac = model.scheduler().alphas_cumprod.to(rt.device)
    state = load_state(run / "unet_state.pt")
    step = 0
    if state:
        both.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        ema.shadow = state["ema"]
        step = state["step"]
    clock = Clock(state["spent"] if state else 0.0, cfg.checkpoint_minutes)
    log.info(
        "unet: %d params, text %d params, from step %d, %s",
        sum(p.numel() for p in unet.parameters()),
        sum(p.numel() for p in text.parameters()),
        step,
        rt,
    )
    both.train()
    recent: list[float] = []
    while step < cfg.unet_steps:
        g = step_generator(cfg.seed + 1, step)
        k = keys[int(torch.multinomial(weights, 1, generator=g))]
        sel = torch.randint(len(latents[k]), (cfg.unet_batch,), generator=g)
        x0 = latents[k][sel]
        tokens = ids[k][sel].clone()
        drop = torch.rand(cfg.unet_batch, generator=g) < cfg.cfg_dropout
        tokens[drop] = empty
        noise = torch.randn(x0.shape, generator=g)
        noise += cfg.offset_noise * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=g)
        t = torch.randint(0, 1000, (cfg.unet_batch,), generator=g)
        batch = tuple(v.to(rt.device) for v in (x0, noise, t, tokens))
        lr = (
            cfg.unet_lr
            * min(1.0, (step + 1) / 200)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.unet_steps)))
        )
        for group in opt.param_groups:
            group["lr"] = lr
        loss, mse = unet_step(unet, text, opt, batch, ac, cfg, rt)
        step += 1
        ema.update(both, step)
        recent = (recent + [loss])[-25:]
        if step % 25 == 0:
            log.info(
                "unet step %d loss %.4f (mean of 25: %.4f) mse %.4f lr %.2e (%.0f s)",
                step,
                loss,
                sum(recent) / len(recent),
                mse,
                lr,
                clock.spent,
            )
        if clock.due() or step == cfg.unet_steps:
            save_state(
                run / "unet_state.pt",
                {
                    "model": both.state_dict(),
                    "opt": opt.state_dict(),
                    "ema": ema.shadow,
                    "step": step,
                    "spent": clock.spent,
                },
            )
    save_state(run / "unet_final.pt", {"ema": ema.shadow, "spent": clock.spent, "steps": step})
