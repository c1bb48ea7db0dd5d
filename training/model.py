"""The four components of the shapes model, as Stable Diffusion 1.5 lays them out.

Same classes and folder layout as ``stable-diffusion-v1-5`` (``model_index.json`` of a
``StableDiffusionPipeline``; ``vae/``, ``text_encoder/``, ``tokenizer/``, ``unet/``,
``scheduler/``), so ``StableDiffusionPipeline.from_pretrained`` (and the img2img / inpaint
pipelines) load it with no special code. What differs from SD 1.5, for a model that trains on
two CPU cores:

- ``AutoencoderKL`` with five levels (``vae_scale_factor`` = 2**4 = 16 instead of 8): a 512x512
  image is a 32x32x4 latent. No attention in its mid-block (``mid_block_add_attention=False``),
  so it is fully convolutional and trains on crops. Widths 16..128 instead of 128..512, and
  GroupNorm with 4 groups (4 channels per group at full resolution, as SD's 128 channels / 32
  groups): one channel per group would erase the colour of flat regions.
- ``UNet2DConditionModel`` with three levels (32, 16, 8 latent pixels at 512x512),
  cross-attention on the two lower levels and in the mid-block (SD 1.5: four levels, attention
  on the upper three; self-attention over 1024 tokens is what costs most on a CPU), widths
  64/128/128 instead of 320/640/1280/1280, ``cross_attention_dim`` 128 instead of 768.
- ``CLIPTextModel``: 2 layers of width 128 instead of 12 of 768, over a small byte-level BPE
  vocabulary learned from the caption words (:func:`vocabulary`), CLIP's 77-token context.
- Noise scheduler: SD 1.5's ``PNDMScheduler`` config verbatim (scaled-linear betas
  0.00085..0.012 over 1000 steps, epsilon prediction, ``skip_prk_steps``, ``steps_offset`` 1).
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from stableserve.inference.demo_tokenizers import (
    BOS_TOKEN,
    EOS_TOKEN,
    MAX_TOKENS,
    PROMPT_WORDS,
    bytes_to_unicode,
    learn_merges,
)
from training import data

LATENT_CHANNELS = 4
VAE_WIDTHS = (16, 32, 64, 128, 128)
"""Channels of the VAE's levels, full resolution first (SD 1.5: 128, 256, 512, 512)."""
VAE_GROUPS = 4
"""GroupNorm groups of the VAE (4 channels per group at full resolution, as SD's 128 / 32)."""
VAE_SCALE_FACTOR = 2 ** (len(VAE_WIDTHS) - 1)
"""Pixels per latent pixel along each side (diffusers: ``2 ** (len(block_out_channels) - 1)``)."""

CAPTION_WORDS = sorted(
    set(data.SHAPES)
    | set(data.PALETTE)
    | set(data.SIZES)
    | set(data.POSITIONS)
    | set(
        [
            "a",
            "picture",
            "of",
            "on",
            "the",
            "at",
            "in",
            "middle",
            "background",
            "gradient",
            "textured",
            "with",
            "and",
        ]
    )
)
"""Every word the caption generator uses (each becomes one BPE token)."""

TEXT_WIDTH = 128


@lru_cache(maxsize=1)
def vocabulary() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """CLIP-format BPE ``(vocab, merges)`` learned from the caption words plus the demo prompt
    words of ``stableserve.inference.demo_tokenizers`` (same algorithm and id layout: 256 byte
    symbols, the same with ``</w>``, one id per merge, then ``<|startoftext|>``,
    ``<|endoftext|>``)."""
    alphabet = bytes_to_unicode()
    symbols = list(alphabet.values())
    merges = learn_merges(sorted(set(CAPTION_WORDS) | set(PROMPT_WORDS)), alphabet)
    vocab: dict[str, int] = {}
    for tok in symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges] + [BOS_TOKEN, EOS_TOKEN]:
        vocab.setdefault(tok, len(vocab))
    return vocab, tuple(merges)


def tokenizer():
    """A ``CLIPTokenizer`` over :func:`vocabulary` (pad = ``<|endoftext|>``, 77 tokens)."""
    from transformers import CLIPTokenizer

    vocab, merges = vocabulary()
    with tempfile.TemporaryDirectory(prefix="shapes-tok-") as tmp:
        vf, mf = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vf.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        mf.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        tok = CLIPTokenizer(str(vf), str(mf), pad_token=EOS_TOKEN)
    tok.model_max_length = MAX_TOKENS
    return tok


def text_encoder():
    """A randomly initialised ``CLIPTextModel`` (2 layers, width 128, 4 heads, quick-GELU as CLIP)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab, _ = vocabulary()
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_WIDTH,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    return CLIPTextModel(config)


def vae(scaling_factor: float = 1.0, widths: tuple[int, ...] = VAE_WIDTHS, groups: int = VAE_GROUPS):
    """A randomly initialised ``AutoencoderKL``: ``len(widths)`` levels (factor
    ``2 ** (len(widths) - 1)``, 16 by default), 4 latent channels, GroupNorm with ``groups``
    groups (must divide every width).

    ``scaling_factor`` is set after training to 1 / std of the latents (SD 1.5: 0.18215).
    """
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=tuple(widths),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=groups,
        sample_size=512,
        scaling_factor=scaling_factor,
        mid_block_add_attention=False,
    )


UNET_WIDTHS = (64, 128, 128)
UNET_ATTENTION = "low"
"""Where the UNet has cross-attention: ``"low"`` on the two lower levels (16x16 and 8x8 latent
pixels at 512x512) and the mid-block, ``"all"`` on the two upper levels (32x32 and 16x16)."""


def unet(
    in_channels: int = LATENT_CHANNELS, widths: tuple[int, ...] = UNET_WIDTHS, attention: str = UNET_ATTENTION
):
    """A randomly initialised ``UNet2DConditionModel`` for 32x32 latents (512x512 images).

    ``in_channels`` 9 gives the inpainting layout (latents + mask + masked-image latents);
    ``attention``: see :data:`UNET_ATTENTION` (``ValueError`` for another value).
    """
    from diffusers import UNet2DConditionModel

    if attention == "low":
        down = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
        up = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    elif attention == "all":
        down = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
        up = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    else:
        raise ValueError(f"attention must be 'low' or 'all', not {attention!r}")
    return UNet2DConditionModel(
        sample_size=512 // VAE_SCALE_FACTOR,
        in_channels=in_channels,
        out_channels=LATENT_CHANNELS,
        block_out_channels=tuple(widths),
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=32,
    )


SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
}
"""``stable-diffusion-v1-5/scheduler/scheduler_config.json`` (``PNDMScheduler``)."""


def scheduler():
    """SD 1.5's default noise scheduler (``PNDMScheduler`` with :data:`SCHEDULER_CONFIG`)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(SCHEDULER_CONFIG)


def pipeline(vae_model, text_model, unet_model, *, inpaint: bool = False):
    """Assemble a ``StableDiffusionPipeline`` (or ``StableDiffusionInpaintPipeline``) without a
    safety checker, as ``save_pretrained`` will write it."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    return cls(
        vae=vae_model,
        text_encoder=text_model,
        tokenizer=tokenizer(),
        unet=unet_model,
        scheduler=scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
