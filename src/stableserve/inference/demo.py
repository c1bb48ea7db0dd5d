"""Tiny offline "demo" pipelines, one per engine family, built locally on first use.

The SD 1.x and inpainting families are the exception: their demo pipelines are the trained
"shapes" model shipped as package data (``inference.demo_shapes``), so offline their images
mean something (coloured shapes as the prompt describes). For every other family:

Each demo pipeline uses the REAL diffusers / transformers / spandrel classes of its family
(``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``StableDiffusion3Pipeline``,
``StableDiffusionInpaintPipeline``, ``StableDiffusionUpscalePipeline``, spandrel's RRDBNet) with
tiny configurations and random weights drawn from fixed seeds, so the server runs end to end
with no model download: every code path (tokenising, text encoding, classifier-free guidance,
schedulers, VAE scale factors, upscaler noise levels) is the one real weights take, only the
images are noise-like. Configurations follow the public model cards' ``config.json`` files
(stable-diffusion-v1-5, stable-diffusion-2-1(-base), stable-diffusion-2-inpainting,
stable-diffusion-xl-base-1.0, stable-diffusion-3-medium-diffusers, stable-diffusion-x4-upscaler,
Real-ESRGAN x2plus and x4plus) with every width shrunk, and the dummy components of diffusers' own tests.
What is kept from the real models:

- VAE scale factor 8 (4 VAE blocks; 3 for the x4 upscaler, factor 4), latent channels (4, or 16
  for SD3), scaling/shift factors;
- scheduler classes and their beta schedules, ``prediction_type`` (v-prediction for SD2-768 and
  the x4 upscaler), flow-matching shift 3.0 for SD3;
- UNet ``sample_size`` (hence the pipelines' default size), SDXL's micro-conditioning
  (``text_time``), SD3's three text encoders (CLIP-L, CLIP-G and T5, whose width the joint
  attention takes), the x4 upscaler's 7-channel UNet with noise-level
  class embeddings, the inpainting 9-channel UNet, Real-ESRGAN x2plus's pixel-unshuffle input
  and x4plus's plain RGB input with two x2 up-convolutions.

No CLIP vocabulary can be downloaded, so a deterministic byte-level BPE vocabulary is generated
here (CLIP's ``bytes_to_unicode`` alphabet, each symbol also with ``</w>``, merges learned from
a built-in list of common prompt words, then ``<|startoftext|>`` / ``<|endoftext|>`` last as
in CLIP), and likewise a small Unigram vocabulary for SD3's T5 tokenizer.

What differs, for CPU speed: UNets attend one level lower than the real ones (never at full
latent resolution), transformer/encoder depths are 1-2 layers, widths 8-128.

Pipelines are cached under ``<home>/demo/<family>-<DEMO_VERSION>`` (``ensure_demo_pipeline``),
the x4 ESRGAN network under ``<home>/demo/upscaler-esrgan-x4-<DEMO_VERSION>``: the ESRGAN family
has one demo per scale (``scale=2``, the default, x2plus-style; ``scale=4`` x4plus-style), the
other families one each. Bump ``DEMO_VERSION`` whenever a configuration, seed or the vocabulary
changes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from stableserve.core.engines import Family
from stableserve.inference.demo_segmentation import build_demo_clipseg, build_demo_vitmatte
from stableserve.inference.demo_shapes import SHAPES_FAMILIES, build_shapes_pipeline
from stableserve.inference.demo_tokenizers import (
    BOS_TOKEN,
    EOS_TOKEN,
    MAX_TOKENS,
    clip_tokenizer,
    demo_t5_vocabulary,
    demo_vocabulary,
    t5_tokenizer,
)

try:  # POSIX; elsewhere ensure_demo_pipeline relies on the atomic rename alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

DEMO_VERSION = "2"
"""Version of the demo configurations; part of the cache folder name (bump on any change)."""

ESRGAN_WEIGHTS = "model.safetensors"
"""File name of the ESRGAN demo weights inside its folder."""


# Base seed per family; component k of a family is created right after torch.manual_seed(seed + k).
_SEEDS: dict[Family, int] = {
    Family.SD1: 1000,
    Family.SD2_512: 2000,
    Family.SD2_768: 2100,
    Family.SDXL: 3000,
    Family.SDXL_BETA: 3100,
    Family.SD3: 4000,
    Family.INPAINT: 5000,
    Family.UPSCALER_LATENT_X4: 6000,
    Family.UPSCALER_ESRGAN: 7000,
    Family.SEGMENTER_CLIPSEG: 8000,
    Family.MATTING_VITMATTE: 8100,
}
_ESRGAN_X4_SEED = 7100
"""Base seed of the x4plus-style ESRGAN demo (the x2plus-style one uses the family's 7000)."""

ESRGAN_SCALES = (2, 4)
"""Scales of the ESRGAN demo networks (``scale`` of ``ensure_demo_pipeline``); 2 is the default."""


def _variant(family: Family, scale: int | None) -> str:
    """Folder-name suffix of the demo of ``family`` at ``scale``: ``""`` or ``"-x4"``.

    Raises ``ValueError`` for a scale other than None/2/4 on ESRGAN, or any scale elsewhere.
    """
    if family == Family.UPSCALER_ESRGAN:
        if scale is None or scale == 2:
            return ""
        if scale == 4:
            return "-x4"
        raise ValueError(f"no ESRGAN demo with scale {scale!r}; scales: {ESRGAN_SCALES}")
    if scale is not None:
        raise ValueError(f"family {family.value!r} has one demo pipeline; scale must be None, not {scale!r}")
    return ""


def _clip_config(hidden: int, layers: int, heads: int, projection_dim: int):
    from transformers import CLIPTextConfig

    vocab, _ = demo_vocabulary()
    eos = vocab[EOS_TOKEN]
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=eos,
        pad_token_id=eos,
    )


# ---------------------------------------------------------------------------------------------
# Components


class _Seeds:
    """Hands out ``base, base+1, ...``: call ``next()`` right before creating each component."""

    def __init__(self, base: int) -> None:
        self._next = base

    def next(self) -> None:
        torch.manual_seed(self._next)
        self._next += 1


def _sd_vae(seeds: _Seeds, *, blocks: int = 4, latent_channels: int = 4, **extra: Any):
    from diffusers import AutoencoderKL

    widths = (8, 16, 32, 32)[:blocks]
    seeds.next()
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=widths,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        **extra,
    )


def _sd_unet(seeds: _Seeds, *, sample_size: int, sd2: bool, in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    seeds.next()
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        # SD's four levels (attention, then none at the lowest), shifted down one level: real
        # SD also attends at full latent resolution, which on CPU would triple the time.
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        # SD1 gives one head count for all blocks; SD2 one per block and linear projections.
        attention_head_dim=(2, 2, 4, 4) if sd2 else 2,
        use_linear_projection=sd2,
        norm_num_groups=32,
    )


def _text_encoder(
    seeds: _Seeds, *, hidden: int = 32, projection_dim: int = 32, with_projection: bool = False
):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    seeds.next()
    config = _clip_config(hidden, 2, 4, projection_dim)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def _sd_betas() -> dict[str, Any]:
    return {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
    }


def _build_sd(family: Family, seeds: _Seeds):
    from diffusers import (
        DDIMScheduler,
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
    )

    sd2 = family != Family.SD1
    unet = _sd_unet(
        seeds,
        sample_size=96 if family == Family.SD2_768 else 64,
        sd2=sd2,
        in_channels=9 if family == Family.INPAINT else 4,
    )
    vae = _sd_vae(seeds, sample_size=768 if family == Family.SD2_768 else 512, scaling_factor=0.18215)
    text_encoder = _text_encoder(seeds)
    if family in (Family.SD1, Family.INPAINT):  # as in v1-5 and 2-inpainting
        scheduler = PNDMScheduler(**_sd_betas(), skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    else:
        scheduler = DDIMScheduler(
            **_sd_betas(),
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="v_prediction" if family == Family.SD2_768 else "epsilon",
        )
    cls = StableDiffusionInpaintPipeline if family == Family.INPAINT else StableDiffusionPipeline
    return cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl(family: Family, seeds: _Seeds):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    hidden_1, hidden_2, projection_2, time_dim = 32, 64, 32, 8
    seeds.next()
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        # SDXL attends on all but the top level; here on the lower two of four levels, with two
        # transformer layers at the lowest (SDXL: 2 and 10), to keep 1024x1024 affordable on CPU.
        block_out_channels=(16, 32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=(1, 2, 4, 4),
        transformer_layers_per_block=(1, 1, 1, 2),
        use_linear_projection=True,
        cross_attention_dim=hidden_1 + hidden_2,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # 6 micro-conditioning numbers (original size, crop, target size) + pooled text embeds
        projection_class_embeddings_input_dim=6 * time_dim + projection_2,
        norm_num_groups=16,
    )
    vae = _sd_vae(seeds, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
    text_encoder = _text_encoder(seeds, hidden=hidden_1)
    text_encoder_2 = _text_encoder(seeds, hidden=hidden_2, projection_dim=projection_2, with_projection=True)
    scheduler = EulerDiscreteScheduler(
        **_sd_betas(),
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        prediction_type="epsilon",
        use_karras_sigmas=False,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _build_sd3(family: Family, seeds: _Seeds):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel

    hidden_1, hidden_2, hidden_3 = 32, 64, 128  # CLIP-L, CLIP-G, T5 stand-ins (768, 1280, 4096)
    seeds.next()
    transformer = SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,  # 8-wide heads would run 2.5x slower in CPU SDPA
        num_attention_heads=2,
        # T5's width; the CLIP embeddings (32 + 64 wide) are zero-padded to it as in SD3.
        joint_attention_dim=hidden_3,
        caption_projection_dim=32,  # = heads * head dim, as in SD3
        pooled_projection_dim=hidden_1 + hidden_2,
        pos_embed_max_size=192,  # SD3-medium's: latent sides up to 384 (3072 pixels)
    )
    vae = _sd_vae(
        seeds,
        latent_channels=16,
        sample_size=1024,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    text_encoder = _text_encoder(seeds, hidden=hidden_1, projection_dim=hidden_1, with_projection=True)
    text_encoder_2 = _text_encoder(seeds, hidden=hidden_2, projection_dim=hidden_2, with_projection=True)
    seeds.next()
    text_encoder_3 = T5EncoderModel(
        T5Config(
            vocab_size=len(demo_t5_vocabulary()),
            d_model=hidden_3,
            d_kv=32,
            d_ff=2 * hidden_3,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",  # T5 v1.1, as SD3's t5-v1_1-xxl
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    ).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer(),
    )


def _build_latent_upscaler(family: Family, seeds: _Seeds):
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel

    seeds.next()
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=7,  # 4 latent + 3 low-resolution image channels
        out_channels=4,
        layers_per_block=1,
        # The x4 upscaler attends on its lower three levels, cross-attention only except at the
        # lowest; here on the lower two of four (latents are 128x128 for a 128x128 input).
        block_out_channels=(16, 32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        only_cross_attention=(True, True, True, False),
        attention_head_dim=4,
        use_linear_projection=True,
        cross_attention_dim=32,
        num_class_embeds=1000,  # noise level 0..max_noise_level of the low-resolution image
        norm_num_groups=16,
    )
    vae = _sd_vae(seeds, blocks=3, sample_size=512, scaling_factor=0.08333)
    text_encoder = _text_encoder(seeds)
    upscaler_betas = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "scaled_linear"}
    return StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        low_res_scheduler=DDPMScheduler(**upscaler_betas, num_train_timesteps=1000, clip_sample=False),
        scheduler=DDIMScheduler(
            **upscaler_betas,
            num_train_timesteps=1000,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="v_prediction",
        ),
        max_noise_level=350,
    )


def esrgan_demo_model(scale: int = 2):
    """The demo Real-ESRGAN network of ``scale`` (spandrel's ``RRDBNet``), random weights.

    ``scale=2`` (x2plus-style): old-arch RRDBNet with 12 input channels (pixel-unshuffle by 2
    of RGB), 16 features, 1 RRDB block, two x2 up-convolutions (x4 internally, x2 overall).
    ``scale=4`` (x4plus-style): 3 input channels (plain RGB, no unshuffle), 16 features, 1 RRDB
    block, two x2 up-convolutions (x4 overall). Either maps a (N, 3, H, W) float tensor in 0..1
    to (N, 3, H*scale, W*scale). The growth channels are 32: spandrel's class fixes them (its
    loader could not read another value back). Raises ``ValueError`` for another scale.
    """
    from stableserve.inference.spandrel_compat import import_spandrel

    if scale not in ESRGAN_SCALES:
        raise ValueError(f"no ESRGAN demo with scale {scale!r}; scales: {ESRGAN_SCALES}")
    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    if scale == 4:
        return ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=1, scale=4).eval()
    return ESRGAN(in_nc=12, out_nc=3, num_filters=16, num_blocks=1, scale=4, shuffle_factor=2).eval()


def _build_esrgan(dest: Path, seeds: _Seeds, scale: int = 2) -> None:
    from safetensors.torch import save_file

    seeds.next()
    model = esrgan_demo_model(scale)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    dest.mkdir(parents=True, exist_ok=True)
    # One metadata key only: safetensors writes a multi-key header in hash order (not reproducible).
    save_file(state, str(dest / ESRGAN_WEIGHTS), metadata={"format": "pt"})


_PIPELINE_BUILDERS: dict[Family, Callable[[Family, _Seeds], Any]] = {
    Family.SD1: _build_sd,
    Family.SD2_512: _build_sd,
    Family.SD2_768: _build_sd,
    Family.INPAINT: _build_sd,
    Family.SDXL: _build_sdxl,
    Family.SDXL_BETA: _build_sdxl,
    Family.SD3: _build_sd3,
    Family.UPSCALER_LATENT_X4: _build_latent_upscaler,
    # transformers model + processor folders (config.json), see inference.demo_segmentation
    Family.SEGMENTER_CLIPSEG: build_demo_clipseg,
    Family.MATTING_VITMATTE: build_demo_vitmatte,
}


@contextlib.contextmanager
def _isolated_rng() -> Iterator[None]:
    """Seeding inside does not disturb the caller's CPU RNG; components are built on CPU."""
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        yield


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """No "Writing model shards" bars from transformers while saving; restores the setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build_demo_pipeline(family: Family, dest: Path, *, scale: int | None = None) -> None:
    """Build the tiny pipeline of ``family`` with fixed seeds and save it at ``dest``.

    Diffusers families: ``save_pretrained`` writes a diffusers folder (``model_index.json``,
    one sub-folder per component, safetensors weights, float32) loadable with
    ``DiffusionPipeline.from_pretrained(dest)``; ``SD1`` and ``INPAINT`` are the shipped shapes
    model (``inference.demo_shapes.build_shapes_pipeline``), not random weights. ``UPSCALER_ESRGAN``: a single
    ``dest/model.safetensors`` holding a Real-ESRGAN RRDBNet state dict that
    ``spandrel.ModelLoader().load_from_file`` detects as ESRGAN of scale ``scale``: None or 2
    gives the x2plus-style network, 4 the x4plus-style one (``esrgan_demo_model``).
    ``SEGMENTER_CLIPSEG`` / ``MATTING_VITMATTE``: a transformers folder (``config.json``,
    ``model.safetensors``, processor files; ``inference.demo_segmentation``). Weights
    are identical on every build (same bytes); the caller's RNG state is left untouched.
    ``dest`` is created if needed; existing files in it are overwritten. Raises
    ``ValueError`` for an unknown family, or a ``scale`` other than None/2/4 for ESRGAN and
    other than None for the other families.
    """
    family = Family(family)
    dest = Path(dest)
    x4 = _variant(family, scale) == "-x4"
    with _isolated_rng():
        seeds = _Seeds(_ESRGAN_X4_SEED if x4 else _SEEDS[family])
        if family == Family.UPSCALER_ESRGAN:
            _build_esrgan(dest, seeds, 4 if x4 else 2)
            return
        if family in SHAPES_FAMILIES:
            with _quiet_progress_bars():
                build_shapes_pipeline(family, dest)
            return
        builder = _PIPELINE_BUILDERS.get(family)
        if builder is None:  # pragma: no cover - every Family member is mapped
            raise ValueError(f"no demo pipeline for family {family!r}")
        pipe = builder(family, seeds)
        with _quiet_progress_bars():
            pipe.save_pretrained(str(dest), safe_serialization=True)


def _is_complete(folder: Path, family: Family) -> bool:
    marker = ESRGAN_WEIGHTS if family == Family.UPSCALER_ESRGAN else "model_index.json"
    if family in (Family.SEGMENTER_CLIPSEG, Family.MATTING_VITMATTE):
        marker = "config.json"
    return (folder / marker).is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive ``fcntl.flock`` on ``path`` (created if missing); released on exit or death."""
    with path.open("a+b") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_demo_pipeline(family: Family, root: Path, *, scale: int | None = None) -> Path:
    """Return ``demo_folder(family, root, scale=scale)``, building the demo pipeline there on first use.

    That is ``root/f"{family.value}-{DEMO_VERSION}"``, or ``root/f"upscaler-esrgan-x4-{DEMO_VERSION}"``
    for the ESRGAN family with ``scale=4`` (see ``build_demo_pipeline`` for ``scale`` and its
    ``ValueError``).

    Safe under concurrency (threads and processes) through ``build_once``: a lock, a build
    into a temporary folder, an atomic rename. ``root`` is created if missing. Building takes
    a few seconds on CPU.
    """
    family = Family(family)
    final = demo_folder(family, root, scale=scale)
    # The default variant is built with the two-argument call (as before scales existed).
    variant = {"scale": scale} if _variant(family, scale) else {}
    return build_once(
        final,
        lambda folder: _is_complete(folder, family),
        lambda tmp: build_demo_pipeline(family, tmp, **variant),
    )


def build_once(final: Path, is_complete: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """Return ``final``, first calling ``build(tmp)`` and renaming ``tmp`` to ``final`` unless
    ``is_complete(final)`` already holds. Every demo artifact (pipelines, ControlNets,
    IP-Adapters) is made this way.

    Safe under concurrency (threads and processes): a ``fcntl.flock`` on
    ``<parent>/.<name>.lock`` lets one builder in at a time; ``build`` writes into a temporary
    folder next to ``final`` that is renamed into place atomically, so ``final`` either does
    not exist or is complete (a crash leaves only a temporary folder, removed by the next
    builder). If a builder that bypassed the lock won the rename, its folder is used. The
    parent folder is created if missing; ``build``'s exceptions propagate.
    """
    if is_complete(final):
        return final
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{final.name}.lock"):
        if is_complete(final):
            return final
        # We hold the lock: any temporary folder of this name is a crashed builder's leftover.
        for stale in root.glob(f".{final.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # incomplete (not ours, e.g. copied by hand): replace it
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
        try:
            build(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it 0700; the server may run as another user
            try:
                os.rename(tmp, final)  # atomic; fails if `final` appeared meanwhile
            except OSError:
                if not is_complete(final):
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def demo_folder(family: Family, root: Path, *, scale: int | None = None) -> Path:
    """Where ``ensure_demo_pipeline`` keeps ``family``'s demo pipeline at ``scale`` (may not exist yet).

    ``root/f"{family}-{DEMO_VERSION}"``; the x4 ESRGAN demo (``scale=4``) is
    ``root/f"upscaler-esrgan-x4-{DEMO_VERSION}"``. Raises ``ValueError`` for an unknown scale.
    """
    family = Family(family)
    return Path(root).expanduser() / f"{family.value}{_variant(family, scale)}-{DEMO_VERSION}"
