"""IP-Adapter style conditioning: locating, loading and applying an engine's IP-Adapter.

An engine with ``ip_adapter`` (``core.engines.IPAdapterSource``) gets it attached right after
its base pipeline is loaded (``attach_ip_adapter``, called by ``loading.load_engine``):
diffusers ``pipe.load_ip_adapter(folder, subfolder=..., weight_name=...,
image_encoder_folder=...)`` adds a CLIP image encoder (``CLIPVisionModelWithProjection``), a
``CLIPImageProcessor`` feature extractor, the image projection (``unet.encoder_hid_proj``) and
IP-Adapter attention processors on every cross-attention layer of the UNet.

Where the weights come from (``ip_adapter_location``):
- a Hugging Face repo (``h94/IP-Adapter``): its files in the model cache ``<home>/models``,
  fetched by ``stableserve models pull`` (``pull_ip_adapter``); loading never downloads;
- a local folder (``repo`` is an existing directory) laid out like that repo;
- demo engines (or ``repo: demo``): a tiny IP-Adapter built here (``ensure_demo_ip_adapter``)
  in the very same on-disk format, fitted to the family's demo UNet: ``models/image_encoder``
  (a small ``CLIPVisionModelWithProjection`` saved with ``save_pretrained`` plus a
  ``CLIPImageProcessor`` config) and ``models/ip-adapter_sd15.safetensors`` holding the
  ``image_proj.*`` / ``ip_adapter.*`` tensors of the original IP-Adapter release.

At generation time ``style_conditioning`` gives the pipeline call its ``ip_adapter_image``
and sets the adapter scale (``style_strength``). Once an adapter is loaded the UNet needs image
embeddings on every call, so a request without a style image runs at scale 0 with a neutral
image: the IP-Adapter attention is skipped and the result is the plain generation's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from stableserve.core.engines import (
    DEMO_IP_ADAPTER_REPO,
    IP_ADAPTER_FAMILIES,
    EngineSpec,
    Family,
    IPAdapterSource,
)
from stableserve.core.images import decode_image
from stableserve.core.types import GenerationRequest
from stableserve.errors import EngineNotReady, InvalidRequest
from stableserve.inference.imaging import to_rgb
from stableserve.settings import Settings

DEFAULT_STYLE_STRENGTH = 0.5
"""IP-Adapter scale used when a request has a style image but no ``style_strength``."""

DEMO_LAYOUT = IPAdapterSource(repo=DEMO_IP_ADAPTER_REPO)
"""File layout of every demo IP-Adapter (that of ``h94/IP-Adapter``'s SD 1.5 adapter):
``models/ip-adapter_sd15.safetensors`` and ``models/image_encoder``."""

IP_ADAPTER_DEMO_VERSION = "1"
"""Version of the demo IP-Adapter configuration (folder name); bump on any change."""

DEMO_IMAGE_ENCODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 32,
    "projection_dim": 32,
}
"""Tiny CLIP vision tower of the demo adapter (the real SD 1.5 one is ViT-H/14: width 1280,
32 layers, patch 14, projection 1024); same 224-pixel input, so the same preprocessing."""

DEMO_IMAGE_TOKENS = 4
"""Image tokens of the projection (the original IP-Adapter's ``num_tokens``)."""

_DEMO_SEEDS: dict[Family, int] = {
    Family.SD1: 8000,
    Family.SD2_512: 8100,
    Family.SD2_768: 8200,
    Family.INPAINT: 8300,
    Family.SDXL: 8400,
    Family.SDXL_BETA: 8500,
}
"""Base seed of each family's demo adapter (the families of ``core.engines.IP_ADAPTER_FAMILIES``)."""

_NEUTRAL_SIZE = 64
"""Side in pixels of the neutral (black) image fed at scale 0 when a request has no style image."""


# ---------------------------------------------------------------------------------------------
# Locating the weights


def encoder_subfolder(src: IPAdapterSource) -> str:
    """The image encoder's folder inside ``src.repo``, by diffusers' rule: a bare name
    (``image_encoder``) lies inside ``src.subfolder``, a path (``models/image_encoder``) is
    relative to the repo root."""
    folder = src.image_encoder_folder
    return folder if "/" in folder else f"{src.subfolder}/{folder}"


def _allow_patterns(src: IPAdapterSource) -> list[str]:
    enc = encoder_subfolder(src)
    return [f"{src.subfolder}/{src.weight_name}", f"{enc}/*.json", f"{enc}/*.safetensors"]


def _missing_files(folder: Path, src: IPAdapterSource) -> list[str]:
    enc = encoder_subfolder(src)
    wanted = [f"{src.subfolder}/{src.weight_name}", f"{enc}/config.json"]
    return [w for w in wanted if not (folder / w).is_file()]


def uses_demo_adapter(engine: EngineSpec) -> bool:
    """True when ``engine``'s IP-Adapter is the locally built demo one (demo engines always;
    any engine whose ``ip_adapter.repo`` is ``DEMO_IP_ADAPTER_REPO``)."""
    src = engine.ip_adapter
    return src is not None and (engine.is_demo or src.repo == DEMO_IP_ADAPTER_REPO)


def adapter_layout(engine: EngineSpec) -> IPAdapterSource:
    """The file layout to load ``engine``'s adapter with: ``DEMO_LAYOUT`` for demo adapters,
    else ``engine.ip_adapter``. Raises ``ValueError`` for an engine without ``ip_adapter``."""
    if engine.ip_adapter is None:
        raise ValueError(f"engine {engine.id} has no ip_adapter")
    return DEMO_LAYOUT if uses_demo_adapter(engine) else engine.ip_adapter


def ip_adapter_location(engine: EngineSpec, settings: Settings) -> Path:
    """The local folder holding ``engine``'s IP-Adapter (the ``repo`` root of its layout).

    Demo adapters are built on first use under ``settings.demo_dir``. For a Hugging Face
    repo only the model cache is looked at (no network). Raises ``EngineNotReady``
    ("engine X is not ready: ...; run `stableserve models pull X`") when the weight file or
    the image encoder's ``config.json`` is missing, ``ValueError`` without ``ip_adapter``.
    """
    src = adapter_layout(engine)
    if uses_demo_adapter(engine):
        return ensure_demo_ip_adapter(engine.family, settings.demo_dir)
    local = Path(src.repo).expanduser()
    if local.is_dir():
        folder = local
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(
                snapshot_download(
                    src.repo,
                    cache_dir=settings.models_dir,
                    local_files_only=True,
                    allow_patterns=_allow_patterns(src),
                )
            )
        except Exception:
            raise EngineNotReady(
                f"engine {engine.id} is not ready: IP-Adapter {src.repo} is not in the model cache "
                f"{settings.models_dir}; run `stableserve models pull {engine.id}`"
            ) from None
    missing = _missing_files(folder, src)
    if missing:
        raise EngineNotReady(
            f"engine {engine.id} is not ready: IP-Adapter {src.repo} lacks {', '.join(missing)}; "
            f"run `stableserve models pull {engine.id}`"
        )
    return folder


def pull_ip_adapter(engine: EngineSpec, settings: Settings) -> Path:
    """Fetch (Hugging Face repo) or build (demo) ``engine``'s IP-Adapter; returns its folder.

    Downloads only the weight file and the image encoder (``*.json``, ``*.safetensors``) into
    ``settings.models_dir``. Raises ``loading.HubUnreachable`` when the hub cannot be reached,
    ``EngineNotReady`` when a local folder lacks files.
    """
    src = adapter_layout(engine)
    if not uses_demo_adapter(engine) and not Path(src.repo).expanduser().is_dir():
        from huggingface_hub import snapshot_download

        from stableserve.inference.loading import HubUnreachable

        where = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        try:
            snapshot_download(src.repo, cache_dir=settings.models_dir, allow_patterns=_allow_patterns(src))
        except Exception as exc:  # the hub client raises many kinds (HTTP, connection, offline mode)
            raise HubUnreachable(
                f"could not download IP-Adapter {src.repo} for engine {engine.id} from {where}: "
                f"{type(exc).__name__}: {exc}. Check the network (or HF_ENDPOINT / HF_TOKEN), "
                f"or point ip_adapter.repo at a local copy."
            ) from None
    return ip_adapter_location(engine, settings)


def attach_ip_adapter(pipe: Any, engine: EngineSpec, settings: Settings) -> None:
    """Load ``engine``'s IP-Adapter into ``pipe`` (a diffusers pipeline with ``IPAdapterMixin``).

    Calls ``pipe.load_ip_adapter`` on the local folder of ``ip_adapter_location`` with the
    layout's ``subfolder``, ``weight_name`` and ``image_encoder_folder`` (offline:
    ``local_files_only``). Adds the ``image_encoder`` and ``feature_extractor`` components
    (when the pipeline has none yet) and leaves the adapter at scale 1.0. Raises
    ``EngineNotReady`` for missing weights, ``ValueError`` when the pipeline cannot take an
    IP-Adapter (e.g. an upscaler).
    """
    if not hasattr(pipe, "load_ip_adapter") or getattr(pipe, "unet", None) is None:
        raise ValueError(f"engine {engine.id}: {type(pipe).__name__} cannot load an IP-Adapter")
    folder = ip_adapter_location(engine, settings)
    src = adapter_layout(engine)
    pipe.load_ip_adapter(
        str(folder),
        subfolder=src.subfolder,
        weight_name=src.weight_name,
        image_encoder_folder=src.image_encoder_folder,
        local_files_only=True,
    )


# ---------------------------------------------------------------------------------------------
# Generation


def has_ip_adapter(pipe: Any) -> bool:
    """True when ``pipe``'s UNet carries IP-Adapter image projections (then every call of the
    pipeline needs ``ip_adapter_image`` or ``ip_adapter_image_embeds``)."""
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    unet = getattr(pipe, "unet", None)
    return isinstance(getattr(unet, "encoder_hid_proj", None), MultiIPAdapterImageProjection)


def neutral_style_image() -> Image.Image:
    """The image fed at scale 0 to an IP-Adapter pipeline when a request has no style image:
    black RGB, ``_NEUTRAL_SIZE`` pixels square (its content has no effect at scale 0)."""
    return Image.new("RGB", (_NEUTRAL_SIZE, _NEUTRAL_SIZE))


def style_conditioning(pipe: Any, request: GenerationRequest) -> dict[str, Any]:
    """Extra keyword arguments of the pipeline call for ``request``'s style image.

    For a pipeline with an IP-Adapter (``has_ip_adapter``): sets its scale (mutates the shared
    UNet's attention processors; the runner runs one request at a time per engine) to
    ``request.style_strength`` (0..1; ``None`` = ``DEFAULT_STYLE_STRENGTH``) and returns
    ``{"ip_adapter_image": <style image as RGB>}``; without a style image the scale is 0 and the
    image neutral, so the output equals a generation without IP-Adapter. For other pipelines
    returns ``{}``, or raises ``InvalidRequest`` (param ``style_image``) if a style image was
    given (``core.validation.resolve`` normally refuses it first). A style image that is not
    PNG/JPEG/WEBP raises ``InvalidRequest`` (param ``style_image``).
    """
    if not has_ip_adapter(pipe):
        if request.style_image is not None:
            raise InvalidRequest(
                f"style_image: engine {request.engine_id} has no IP-Adapter and takes no style image",
                code="bad_request",
                param="style_image",
            )
        return {}
    if request.style_image is None:
        pipe.set_ip_adapter_scale(0.0)
        return {"ip_adapter_image": neutral_style_image()}
    strength = DEFAULT_STYLE_STRENGTH if request.style_strength is None else request.style_strength
    image = decode_image(request.style_image.data, param="style_image")
    pipe.set_ip_adapter_scale(float(strength))
    return {"ip_adapter_image": to_rgb(image)}


# ---------------------------------------------------------------------------------------------
# The demo IP-Adapter


def demo_ip_adapter_folder(family: Family, root: Path) -> Path:
    """Where ``ensure_demo_ip_adapter`` keeps ``family``'s demo IP-Adapter (may not exist yet):
    ``root/f"ip-adapter-{family}-{DEMO_VERSION}.{IP_ADAPTER_DEMO_VERSION}"``."""
    from stableserve.inference.demo import DEMO_VERSION

    family = Family(family)
    return Path(root).expanduser() / f"ip-adapter-{family.value}-{DEMO_VERSION}.{IP_ADAPTER_DEMO_VERSION}"


def _cross_attention_sizes(unet_config: dict[str, Any]) -> list[tuple[int, int]]:
    """(hidden_size, cross_attention_dim) of each cross-attention processor of a UNet built
    from ``unet_config``, in ``unet.attn_processors`` order (diffusers' rule in
    ``UNet2DConditionLoadersMixin._convert_ip_adapter_attn_to_diffusers``)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    channels = list(unet.config.block_out_channels)
    cross = unet.config.cross_attention_dim
    sizes = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        sizes.append((hidden, cross))
    return sizes


def build_demo_ip_adapter(family: Family, dest: Path, unet_config: dict[str, Any]) -> None:
    """Build the tiny IP-Adapter fitting a UNet of ``unet_config`` and save it at ``dest``.

    Writes ``dest/models/image_encoder`` (``CLIPVisionModelWithProjection`` of
    ``DEMO_IMAGE_ENCODER``, ``save_pretrained``, plus a ``CLIPImageProcessor`` config: 224 x 224
    CLIP preprocessing) and ``dest/models/ip-adapter_sd15.safetensors`` in the original
    release's key scheme: ``image_proj.proj.weight`` (4 * cross_attention_dim, projection_dim),
    ``image_proj.proj.bias``, ``image_proj.norm.{weight,bias}`` (cross_attention_dim), and for
    the k-th cross-attention processor (k = 0, 1, ...) ``ip_adapter.{2k+1}.to_k_ip.weight`` and
    ``ip_adapter.{2k+1}.to_v_ip.weight`` (hidden_size, cross_attention_dim). Weights are drawn
    from fixed seeds (same bytes on every build); the caller's RNG is left untouched. Raises
    ``ValueError`` for a family without a cross-attention UNet.
    """
    from diffusers.models.embeddings import ImageProjection
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from stableserve.inference.demo import _isolated_rng, _quiet_progress_bars, _Seeds

    family = Family(family)
    if family not in IP_ADAPTER_FAMILIES:
        raise ValueError(f"no demo IP-Adapter for family {family.value!r}")
    dest = Path(dest)
    models = dest / DEMO_LAYOUT.subfolder
    sizes = _cross_attention_sizes(unet_config)
    cross = int(unet_config["cross_attention_dim"])
    with _isolated_rng():
        seeds = _Seeds(_DEMO_SEEDS[family])
        seeds.next()
        config = CLIPVisionConfig(hidden_act="quick_gelu", layer_norm_eps=1e-5, **DEMO_IMAGE_ENCODER)
        encoder = CLIPVisionModelWithProjection(config).eval()
        seeds.next()
        projection = ImageProjection(
            image_embed_dim=DEMO_IMAGE_ENCODER["projection_dim"],
            cross_attention_dim=cross,
            num_image_text_embeds=DEMO_IMAGE_TOKENS,
        )
        state = {
            f"image_proj.{k.replace('image_embeds', 'proj')}": v for k, v in projection.state_dict().items()
        }
        seeds.next()
        for i, (hidden, dim) in enumerate(sizes):
            for part in ("to_k_ip", "to_v_ip"):
                layer = torch.nn.Linear(dim, hidden, bias=False)
                state[f"ip_adapter.{2 * i + 1}.{part}.weight"] = layer.weight
    encoder_dir = dest / encoder_subfolder(DEMO_LAYOUT)
    with _quiet_progress_bars():
        encoder.save_pretrained(str(encoder_dir), safe_serialization=True)
    side = DEMO_IMAGE_ENCODER["image_size"]
    CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    ).save_pretrained(str(encoder_dir))
    models.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    # One metadata key only: safetensors writes a multi-key header in hash order (not reproducible).
    save_file(tensors, str(models / DEMO_LAYOUT.weight_name), metadata={"format": "pt"})


def _is_complete(folder: Path) -> bool:
    return not _missing_files(folder, DEMO_LAYOUT)


def ensure_demo_ip_adapter(family: Family, root: Path) -> Path:
    """Return ``demo_ip_adapter_folder(family, root)``, building the demo IP-Adapter on first use.

    Builds (or reuses) ``family``'s demo pipeline first (``demo.ensure_demo_pipeline``) and
    fits the adapter to its UNet config. Safe under concurrency like
    ``ensure_demo_pipeline``: a ``flock`` on ``root/.<name>.lock``, a build into a temporary
    folder and an atomic rename. Takes well under a second on CPU. Raises ``ValueError`` for
    a family without a cross-attention UNet (SD3, upscalers, segmenters).
    """
    from diffusers import UNet2DConditionModel

    from stableserve.inference.demo import build_once, ensure_demo_pipeline

    family = Family(family)
    if family not in IP_ADAPTER_FAMILIES:
        raise ValueError(f"no demo IP-Adapter for family {family.value!r}")
    final = demo_ip_adapter_folder(family, root)
    if _is_complete(final):
        return final
    base = ensure_demo_pipeline(family, root)
    unet_config = dict(UNet2DConditionModel.load_config(str(base / "unet")))
    return build_once(final, _is_complete, lambda tmp: build_demo_ip_adapter(family, tmp, unet_config))


