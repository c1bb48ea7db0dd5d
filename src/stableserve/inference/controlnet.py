"""ControlNet engines: the ControlNet's weights (location, pull, load), its demo and its pipeline call.

An engine with ``controlnet`` set (``EngineSpec.controlnet``, an ``EngineSource``) loads its
base pipeline as usual plus a ``diffusers.ControlNetModel`` kept on
``LoadedEngine.controlnet``; requests with a ``control_image`` then run
``StableDiffusionControlNetPipeline`` (text-to-image) or
``StableDiffusionControlNetImg2ImgPipeline`` (image-to-image) over the base components plus
that ControlNet, conditioned on ``inference.control.control_map`` of the control image.
ControlNets exist here for the SD 1.x / 2.x families (``CONTROLNET_FAMILIES``).

Sources of the ControlNet weights (the kinds of ``EngineSource``):
- ``hf``: a diffusers ControlNet repo (``config.json`` + ``diffusion_pytorch_model[.variant]
  .safetensors`` at its root, e.g. ``lllyasviel/control_v11p_sd15_canny``), cached under
  ``<home>/models``; with ``filename``, one original-format file of the repo.
- ``local``: a diffusers ControlNet folder (``config.json``) or one weights file.
- ``single_file`` / ``url``: one original-format file (``ControlNetModel.from_single_file``
  with ``config`` when given); URLs download to ``<home>/models/url/<engine id>-controlnet/``.
- ``demo``: a tiny ControlNet made from the engine family's demo UNet
  (``ControlNetModel.from_unet``, fixed seeds), saved under
  ``<home>/demo/controlnet-<family>-<DEMO_VERSION>.<DEMO_CONTROLNET_VERSION>`` and loaded
  back with ``from_pretrained``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from stableserve.core.engines import EngineSpec, Family
from stableserve.core.images import decode_image, has_alpha
from stableserve.core.types import GenerationRequest, Task
from stableserve.errors import EngineNotReady
from stableserve.inference.control import control_map
from stableserve.inference.imaging import fit
from stableserve.settings import Settings

CONTROLNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
"""File name of a diffusers ControlNet's weights inside its folder (the demo's too)."""

DEFAULT_CONTROL_STRENGTH = 0.7
"""``controlnet_conditioning_scale`` when ``GenerationRequest.control_strength`` is None
(REST v2beta control/sketch and control/structure default)."""

DEMO_CONDITIONING_CHANNELS = (16, 16, 32, 32)
"""Widths of the demo ControlNet's conditioning-image encoder (real: 16, 32, 96, 256); four
levels = three stride-2 convolutions, so it maps pixels to the latent grid (VAE factor 8). For a
base pipeline with a larger VAE factor (the shapes model's 16) the last width is repeated, one
more level per factor of 2 (``demo_conditioning_channels``)."""

DEMO_HINT_GAIN = 3.0
"""Factor on the demo ControlNet's last conditioning-encoder weights (after a variance-keeping
He initialisation of the whole encoder): PyTorch's default initialisation shrinks the
conditioning image about threefold per layer, so it would barely reach the output; with these
the control image changes the result visibly, as with trained ControlNets."""

DEMO_CONTROLNET_VERSION = "1"
"""Version of the demo ControlNet recipe, in its folder name with ``demo.DEMO_VERSION`` (bump on change)."""

_DEMO_SEEDS: dict[Family, int] = {Family.SD1: 8000, Family.SD2_512: 8100, Family.SD2_768: 8200}
"""Base seed of each family's demo ControlNet (the seed + 1 draws its output convolutions)."""

CONTROLNET_FAMILIES = frozenset(_DEMO_SEEDS)
"""Families whose engines can carry a ControlNet (the ``StableDiffusionControlNet*`` pipelines)."""


def _unsupported(engine: EngineSpec) -> EngineNotReady:
    names = ", ".join(sorted(f.value for f in CONTROLNET_FAMILIES))
    return EngineNotReady(
        f"engine {engine.id} is not ready: a ControlNet needs a base of family {names}, "
        f"not {engine.family.value}"
    )


def control_pipeline_class(family: Family, task: Task):
    """The diffusers ControlNet pipeline class of ``task`` for ``family``.

    ``StableDiffusionControlNetPipeline`` (text-to-image) or
    ``StableDiffusionControlNetImg2ImgPipeline`` (image-to-image). Raises ``ValueError`` for
    a family outside ``CONTROLNET_FAMILIES`` or another task.
    """
    import diffusers as d

    if family not in CONTROLNET_FAMILIES:
        raise ValueError(f"no ControlNet pipeline for family {family.value!r}")
    table = {
        Task.TEXT_TO_IMAGE: d.StableDiffusionControlNetPipeline,
        Task.IMAGE_TO_IMAGE: d.StableDiffusionControlNetImg2ImgPipeline,
    }
    if task not in table:
        raise ValueError(f"no ControlNet pipeline for task {task.value!r}")
    return table[task]


def control_inputs(
    request: GenerationRequest, kind: str, size: tuple[int, int]
) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """Pipeline keyword arguments for the request's control image, and the size to return.

    ``request.control_image`` is decoded (``InvalidRequest`` with param ``control_image``
    when it is not an image), resized (Lanczos) to ``size`` = (width, height) in pixels, the
    size the pipeline runs at, and preprocessed with ``control_map(kind, ...)``. Returns
    ``({"image" (text-to-image) or "control_image" (image-to-image): RGB map,
    "controlnet_conditioning_scale": control_strength or 0.7}, result_size)``, where
    ``result_size`` is the control image's own size for text-to-image (results are resized
    back to it) and None for image tasks (they keep their init image's size).
    """
    assert request.control_image is not None
    source = decode_image(request.control_image.data, param="control_image")
    source = source.convert("RGBA" if has_alpha(source) else "RGB")
    cond = control_map(kind, fit(source, size))
    strength = DEFAULT_CONTROL_STRENGTH if request.control_strength is None else request.control_strength
    text = request.task == Task.TEXT_TO_IMAGE
    kwargs: dict[str, Any] = {
        "image" if text else "control_image": cond,
        "controlnet_conditioning_scale": float(strength),
    }
    return kwargs, (source.size if text else None)


def resize_results(images: list[Image.Image], size: tuple[int, int] | None) -> list[Image.Image]:
    """``images`` resized (Lanczos) to ``size`` (width, height); unchanged when ``size`` is None."""
    return images if size is None else [fit(img, size) for img in images]


# ---------------------------------------------------------------------------------------------
# Demo ControlNet


def demo_controlnet_folder(family: Family, root: Path) -> Path:
    """Where the demo ControlNet of ``family`` lives (may not exist yet):
    ``root/controlnet-<family>-<demo.DEMO_VERSION>.<DEMO_CONTROLNET_VERSION>``."""
    from stableserve.inference.demo import DEMO_VERSION

    name = f"controlnet-{Family(family).value}-{DEMO_VERSION}.{DEMO_CONTROLNET_VERSION}"
    return Path(root).expanduser() / name


def demo_conditioning_channels(vae_folder: Path) -> tuple[int, ...]:
    """Conditioning-encoder widths whose stride-2 convolutions match the VAE saved at
    ``vae_folder`` (``2 ** (len(block_out_channels) - 1)`` pixels per latent pixel):
    :data:`DEMO_CONDITIONING_CHANNELS`, plus its last width once per extra factor of 2."""
    config = json.loads((Path(vae_folder) / "config.json").read_text())
    levels = len(config["block_out_channels"])
    extra = max(0, levels - len(DEMO_CONDITIONING_CHANNELS))
    return DEMO_CONDITIONING_CHANNELS + (DEMO_CONDITIONING_CHANNELS[-1],) * extra


def build_demo_controlnet(family: Family, unet_folder: Path, dest: Path) -> None:
    """Build the tiny ControlNet of ``family`` from the UNet saved at ``unet_folder``; save it at ``dest``.

    ``ControlNetModel.from_unet`` copies the UNet's encoder (as ControlNet training starts)
    under the family's fixed seed, with a small conditioning encoder
    (``demo_conditioning_channels`` of the VAE beside ``unet_folder``). from_unet
    zero-initialises the output ("zero") convolutions, which training makes non-zero. Here,
    from the next seed, the conditioning encoder is re-drawn with He-normal weights (zero
    biases), its last convolution scaled by
    ``DEMO_HINT_GAIN``, and the output convolutions get PyTorch's default initialisation, so
    the control image and ``control_strength`` change the result as with trained weights.
    ``dest`` gets ``config.json`` and ``CONTROLNET_WEIGHTS`` (float32); same bytes on every
    build; the caller's RNG state is untouched. Raises ``ValueError`` for a family outside
    ``CONTROLNET_FAMILIES``.
    """
    from diffusers import ControlNetModel, UNet2DConditionModel

    from stableserve.inference.demo import _isolated_rng

    family = Family(family)
    if family not in _DEMO_SEEDS:
        raise ValueError(f"no demo ControlNet for family {family.value!r}")
    unet = UNet2DConditionModel.from_pretrained(str(unet_folder))
    with _isolated_rng():
        torch.manual_seed(_DEMO_SEEDS[family])
        channels = demo_conditioning_channels(Path(unet_folder).parent / "vae")
        model = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
        torch.manual_seed(_DEMO_SEEDS[family] + 1)
        hint = model.controlnet_cond_embedding
        with torch.no_grad():
            for conv in [hint.conv_in, *hint.blocks, hint.conv_out]:
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                torch.nn.init.zeros_(conv.bias)
            hint.conv_out.weight.mul_(DEMO_HINT_GAIN)
        for conv in [*model.controlnet_down_blocks, model.controlnet_mid_block]:
            conv.reset_parameters()
    model.save_pretrained(str(dest), safe_serialization=True)


def ensure_demo_controlnet(family: Family, root: Path) -> Path:
    """``demo_controlnet_folder(family, root)``, built on first use (with the family's demo pipeline).

    Same concurrency scheme as ``demo.ensure_demo_pipeline``: an ``flock`` on
    ``root/.<name>.lock``, a temporary folder renamed into place atomically. Raises
    ``ValueError`` for a family outside ``CONTROLNET_FAMILIES``.
    """
    from stableserve.inference.demo import build_once, ensure_demo_pipeline

    family = Family(family)
    if family not in _DEMO_SEEDS:
        raise ValueError(f"no demo ControlNet for family {family.value!r}")
    final = demo_controlnet_folder(family, root)
    if (final / CONTROLNET_WEIGHTS).is_file():
        return final
    base = ensure_demo_pipeline(family, root)
    return build_once(
        final,
        lambda folder: (folder / CONTROLNET_WEIGHTS).is_file(),
        lambda tmp: build_demo_controlnet(family, base / "unet", tmp),
    )


# ---------------------------------------------------------------------------------------------
# Real weights


def _url_engine(engine: EngineSpec) -> EngineSpec:
    """``engine`` seen as its ControlNet, for the URL helpers of ``inference.loading``."""
    return engine.model_copy(update={"id": f"{engine.id}-controlnet", "source": engine.controlnet})


def _allow(variant: str | None) -> list[str]:
    weights = f"diffusion_pytorch_model.{variant}.safetensors" if variant else CONTROLNET_WEIGHTS
    return ["config.json", weights]


def controlnet_location(engine: EngineSpec, settings: Settings) -> Path:
    """Where ``engine``'s ControlNet weights are: a diffusers folder or a weights file.

    Demo ControlNets are built here on first use. Raises ``EngineNotReady`` ("... run
    `stableserve models pull ID`") when they are missing or the family cannot take a
    ControlNet, ``ValueError`` when ``engine.controlnet`` is None.
    """
    src = engine.controlnet
    if src is None:
        raise ValueError(f"engine {engine.id} has no ControlNet")
    if engine.family not in CONTROLNET_FAMILIES:
        raise _unsupported(engine)

    def missing(why: str) -> EngineNotReady:
        return EngineNotReady(
            f"engine {engine.id} is not ready: its ControlNet {why}; "
            f"run `stableserve models pull {engine.id}`"
        )

    if src.kind == "demo":
        return ensure_demo_controlnet(engine.family, settings.demo_dir)
    if src.kind == "local" or (src.kind == "single_file" and src.path):
        path = Path(src.path or "").expanduser()
        if not path.exists():
            raise EngineNotReady(f"engine {engine.id} is not ready: ControlNet {path} does not exist")
        if path.is_dir() and not (path / "config.json").is_file():
            raise EngineNotReady(f"engine {engine.id} is not ready: ControlNet {path} has no config.json")
        return path
    if src.kind == "url":
        from stableserve.inference.loading import _url_path

        path = _url_path(_url_engine(engine), settings)
        if not path.is_file():
            raise missing(f"{path.name} has not been downloaded")
        return path
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if src.filename:
            return Path(
                hf_hub_download(
                    src.repo or "",
                    src.filename,
                    revision=src.revision,
                    cache_dir=settings.models_dir,
                    local_files_only=True,
                )
            )
        folder = Path(
            snapshot_download(
                src.repo or "",
                revision=src.revision,
                cache_dir=settings.models_dir,
                local_files_only=True,
                allow_patterns=_allow(src.variant),
            )
        )
    except Exception:
        raise missing(f"{src.repo}@{src.revision} is not in the model cache {settings.models_dir}") from None
    if not all((folder / name).is_file() for name in _allow(src.variant)):
        raise missing(f"{src.repo}@{src.revision} is incomplete in the model cache {settings.models_dir}")
    return folder


def pull_controlnet(
    engine: EngineSpec, settings: Settings, progress: Callable[[int, int | None], None] | None = None
) -> Path:
    """Download (or build, for demo) ``engine``'s ControlNet weights; returns their location.

    Hub repos download ``config.json`` and the safetensors weights only; ``progress(done,
    total)`` follows URL downloads. Raises ``loading.HubUnreachable`` when the hub or URL
    cannot be reached, ``EngineNotReady`` as ``controlnet_location``.
    """
    from stableserve.inference.loading import HubUnreachable, _download_url

    src = engine.controlnet
    if src is None:
        raise ValueError(f"engine {engine.id} has no ControlNet")
    if engine.family not in CONTROLNET_FAMILIES:
        raise _unsupported(engine)
    if src.kind in ("demo", "local") or (src.kind == "single_file" and src.path):
        return controlnet_location(engine, settings)
    if src.kind == "url":
        return _download_url(_url_engine(engine), settings, progress)
    from huggingface_hub import hf_hub_download, snapshot_download

    where = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        if src.filename:
            hf_hub_download(
                src.repo or "", src.filename, revision=src.revision, cache_dir=settings.models_dir
            )
            if src.config and not Path(src.config).expanduser().is_dir():
                snapshot_download(src.config, cache_dir=settings.models_dir, allow_patterns=["*.json"])
        else:
            snapshot_download(
                src.repo or "",
                revision=src.revision,
                cache_dir=settings.models_dir,
                allow_patterns=_allow(src.variant),
            )
    except Exception as exc:  # the hub client raises many kinds (HTTP, connection, offline mode)
        raise HubUnreachable(
            f"could not download the ControlNet {src.repo}@{src.revision} for engine {engine.id} from "
            f"{where}: {type(exc).__name__}: {exc}. Check the network (or HF_ENDPOINT / HF_TOKEN), "
            f"or point the registry's controlnet at a local copy (kind 'local')."
        ) from None
    return controlnet_location(engine, settings)


def load_controlnet(engine: EngineSpec, settings: Settings, device: torch.device, dtype: torch.dtype):
    """Load ``engine``'s ``diffusers.ControlNetModel`` onto ``device`` in ``dtype`` (eval mode).

    A folder loads with ``from_pretrained`` (``variant`` for hub repos), a single file with
    ``from_single_file`` (``config``: a hub repo id or local folder of the ControlNet's
    diffusers config). Raises ``EngineNotReady`` as ``controlnet_location``.
    """
    from diffusers import ControlNetModel

    src = engine.controlnet
    location = controlnet_location(engine, settings)
    if location.is_dir():
        kwargs: dict[str, Any] = {"dtype": dtype}
        if src is not None and src.kind == "hf" and src.variant:
            kwargs["variant"] = src.variant
        model = ControlNetModel.from_pretrained(str(location), **kwargs)
    else:
        config = src.config if src is not None else None
        if config and Path(config).expanduser().is_dir():
            config = str(Path(config).expanduser())
        extra = {"config": config} if config else {}
        model = ControlNetModel.from_single_file(str(location), torch_dtype=dtype, **extra)
    if device.type != "cpu":
        model = model.to(device)
    return model.eval()
