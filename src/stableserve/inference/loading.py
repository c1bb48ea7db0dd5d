"""Loading an engine's weights: readiness, ``models pull`` and the real diffusers/spandrel loaders.

Real engines come from the Hugging Face Hub (``from_pretrained`` over a cache in
``<home>/models``), a local diffusers folder, a single-file checkpoint (``from_single_file``)
or a weights URL; demo engines are tiny pipelines built by ``inference.demo`` and then loaded
by the very same ``from_pretrained`` code from their local folder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stableserve.core.engines import EngineSpec, Family
from stableserve.errors import EngineNotReady
from stableserve.settings import Settings

# Components of a diffusers repo worth downloading: configs, tokenizers and the safetensors
# weights inside component folders (not the multi-GB root-level single-file checkpoints).
_HF_ALLOW = ["*.json", "*.txt", "*.model", "*/*.safetensors"]


def _pipeline_class(family: Family):
    import diffusers

    return {
        Family.SD1: diffusers.StableDiffusionPipeline,
        Family.SD2_512: diffusers.StableDiffusionPipeline,
        Family.SD2_768: diffusers.StableDiffusionPipeline,
        Family.SDXL: diffusers.StableDiffusionXLPipeline,
        Family.SDXL_BETA: diffusers.StableDiffusionXLPipeline,
        Family.SD3: diffusers.StableDiffusion3Pipeline,
        Family.INPAINT: diffusers.StableDiffusionInpaintPipeline,
        Family.UPSCALER_LATENT_X4: diffusers.StableDiffusionUpscalePipeline,
    }[family]


@dataclass(frozen=True)
class Readiness:
    """Whether an engine can run now; ``reason`` says why not (or where its weights are)."""

    ready: bool
    reason: str


@dataclass
class LoadedEngine:
    """A loaded engine: a diffusers ``pipeline``, a spandrel ``upscaler`` (ImageModelDescriptor)
    or a transformers ``model`` with its ``processor`` (CLIPSeg / ViTMatte, ``inference.segmentation``).

    ``nbytes``: parameter bytes held (for the model cache budget); ``device``/``dtype``: where
    and how it runs.
    """

    engine: EngineSpec
    device: torch.device
    dtype: torch.dtype
    pipeline: Any = None
    upscaler: Any = None
    model: Any = None
    processor: Any = None
    controlnet: Any = None  # diffusers.ControlNetModel of a ControlNet engine (inference.controlnet)
    nbytes: int = 0


def quiet_libraries() -> None:
    """Silence diffusers/transformers/huggingface_hub info logs and loading progress bars.

    The CLI and the server call this once; downloads keep their own progress display.
    """
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import diffusers  # after transformers: importing diffusers logs transformers warnings

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def select_device(setting: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; otherwise ``torch.device(setting)``."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def select_dtype(engine: EngineSpec, device: torch.device) -> torch.dtype:
    """The engine's dtype on an accelerator; always float32 on CPU (half precision is slow there)."""
    if device.type == "cpu":
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[engine.dtype]


def _url_path(engine: EngineSpec, settings: Settings) -> Path:
    name = Path(engine.source.url or "weights.pth").name
    return settings.models_dir / "url" / engine.id / name


def _hf_cached(repo: str, revision: str, settings: Settings, filename: str | None = None) -> Path:
    """Local path of a cached HF repo snapshot (or one file); raises when not cached."""
    from huggingface_hub import hf_hub_download, snapshot_download

    if filename:
        return Path(
            hf_hub_download(
                repo, filename, revision=revision, cache_dir=settings.models_dir, local_files_only=True
            )
        )
    return Path(
        snapshot_download(
            repo,
            revision=revision,
            cache_dir=settings.models_dir,
            local_files_only=True,
            allow_patterns=_HF_ALLOW,
        )
    )


def _folder_marker(family: Family) -> str:
    """The file a complete local folder of ``family`` holds: ``model_index.json`` (diffusers)
    or ``config.json`` (the transformers CLIPSeg / ViTMatte families)."""
    if family in (Family.SEGMENTER_CLIPSEG, Family.MATTING_VITMATTE):
        return "config.json"
    return "model_index.json"


def weights_location(engine: EngineSpec, settings: Settings) -> Path:
    """Where the engine's weights are on disk: a diffusers folder or a weights file.

    Raises ``EngineNotReady`` ("engine X is not ready: ...; run `stableserve models pull X`")
    when they are missing. Demo engines are built here on first use.
    """
    src = engine.source

    def missing(why: str) -> EngineNotReady:
        return EngineNotReady(
            f"engine {engine.id} is not ready: {why}; run `stableserve models pull {engine.id}`"
        )

    if src.kind == "demo":
        from stableserve.inference.demo import ESRGAN_SCALES, ensure_demo_pipeline

        # ESRGAN engines get the demo network of their own scale (x2plus- or x4plus-style);
        # another factor falls back to the x2 one (the runner resizes to the requested size).
        scale = None
        if engine.family == Family.UPSCALER_ESRGAN and engine.upscale_factor in ESRGAN_SCALES:
            scale = engine.upscale_factor
        return ensure_demo_pipeline(engine.family, settings.demo_dir, scale=scale)
    if src.kind == "local":
        path = Path(src.path or "").expanduser()
        if not path.exists():
            raise EngineNotReady(f"engine {engine.id} is not ready: {path} does not exist")
        if (
            path.is_dir()
            and engine.family != Family.UPSCALER_ESRGAN
            and not (path / _folder_marker(engine.family)).exists()
        ):
            marker = _folder_marker(engine.family)
            raise EngineNotReady(f"engine {engine.id} is not ready: {path} has no {marker}")
        return path
    if src.kind == "url":
        path = _url_path(engine, settings)
        if not path.is_file():
            raise missing(f"{path.name} has not been downloaded")
        return path
    if src.kind == "single_file" and src.path:
        path = Path(src.path).expanduser()
        if not path.is_file():
            raise EngineNotReady(f"engine {engine.id} is not ready: {path} does not exist")
        return path
    try:
        return _hf_cached(src.repo or "", src.revision, settings, src.filename)
    except Exception:
        raise missing(f"{src.repo}@{src.revision} is not in the model cache {settings.models_dir}") from None


def readiness(engine: EngineSpec, settings: Settings) -> Readiness:
    """Ready or not, and why, without loading anything (demo engines are always ready)."""
    if engine.is_demo:
        return Readiness(True, "demo pipeline (built locally on first use)")
    try:
        path = weights_location(engine, settings)
    except EngineNotReady as exc:
        return Readiness(False, exc.message)
    if engine.ip_adapter is not None:
        from stableserve.inference.ip_adapter import ip_adapter_location

        try:
            ip_adapter_location(engine, settings)
        except EngineNotReady as exc:
            return Readiness(False, exc.message)
    if engine.controlnet is not None:
        from stableserve.inference.controlnet import controlnet_location

        try:
            controlnet_location(engine, settings)
        except EngineNotReady as exc:
            return Readiness(False, exc.message)
    return Readiness(True, str(path))


def _absent_components(folder: Path) -> dict[str, None]:
    """Optional components a diffusers folder lists as null (e.g. SD3 without T5), passed as None."""
    import json

    index = folder / "model_index.json"
    if not index.is_file():
        return {}
    entries = json.loads(index.read_text())
    return {k: None for k, v in entries.items() if isinstance(v, list) and v == [None, None]}


def _nbytes(modules: list[torch.nn.Module]) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def load_engine(engine: EngineSpec, settings: Settings, device: torch.device | None = None) -> LoadedEngine:
    """Load an engine's weights onto ``device`` (default: settings' runner device).

    An engine with ``ip_adapter`` gets it loaded into its pipeline (``ip_adapter.attach_ip_adapter``).
    Raises ``EngineNotReady`` when weights (the IP-Adapter's included) are missing.
    """
    device = device or select_device(settings.runner.device)
    dtype = select_dtype(engine, device)
    location = weights_location(engine, settings)
    if engine.family == Family.UPSCALER_ESRGAN:
        from stableserve.inference.spandrel_compat import import_spandrel

        spandrel = import_spandrel()
        weights = location / "model.safetensors" if location.is_dir() else location
        model = spandrel.ModelLoader(device=device).load_from_file(str(weights)).eval()
        return LoadedEngine(engine, device, dtype, upscaler=model, nbytes=_nbytes([model.model]))

    if engine.family in (Family.SEGMENTER_CLIPSEG, Family.MATTING_VITMATTE):
        from stableserve.inference.segmentation import load_transformers_engine

        return load_transformers_engine(engine, location, device, dtype)

    cls = _pipeline_class(engine.family)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if engine.family in (Family.SD1, Family.SD2_512, Family.SD2_768, Family.INPAINT):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    src = engine.source
    if src.kind == "single_file":
        config = src.config or ""
        if Path(config).expanduser().is_dir():
            config = str(Path(config).expanduser())
        pipe = cls.from_single_file(str(location), config=config, **kwargs)
    else:
        if src.variant and src.kind == "hf":
            kwargs["variant"] = src.variant
        kwargs.update(_absent_components(location))
        pipe = cls.from_pretrained(str(location), **kwargs)
    if engine.ip_adapter is not None:
        from stableserve.inference.ip_adapter import attach_ip_adapter

        attach_ip_adapter(pipe, engine, settings)
    if device.type != "cpu":
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    controlnet = None
    if engine.controlnet is not None:
        from stableserve.inference.controlnet import load_controlnet

        controlnet = load_controlnet(engine, settings, device, dtype)
        modules.append(controlnet)
    return LoadedEngine(
        engine, device, dtype, pipeline=pipe, controlnet=controlnet, nbytes=_nbytes(modules)
    )


class HubUnreachable(EngineNotReady):
    """``models pull`` could not reach the hub or URL holding the weights."""


def pull(
    engine: EngineSpec, settings: Settings, progress: Callable[[int, int | None], None] | None = None
) -> Path:
    """Download (or build, for demo engines) the engine's weights; returns their location.

    ``progress(done_bytes, total_bytes)`` is called during URL downloads; hub downloads show
    huggingface_hub's own progress bars. Raises ``HubUnreachable`` with a clear message when
    the network or hub cannot be reached, ``EngineNotReady`` for a missing local path.
    """
    if engine.ip_adapter is not None:
        from stableserve.inference.ip_adapter import pull_ip_adapter

        pull_ip_adapter(engine, settings)
    if engine.controlnet is not None:
        from stableserve.inference.controlnet import pull_controlnet

        pull_controlnet(engine, settings, progress)
    src = engine.source
    if src.kind in ("demo", "local") or (src.kind == "single_file" and src.path):
        return weights_location(engine, settings)
    if src.kind == "url":
        return _download_url(engine, settings, progress)
    from huggingface_hub import hf_hub_download, snapshot_download

    where = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        if src.kind == "single_file":
            hf_hub_download(
                src.repo or "", src.filename or "", revision=src.revision, cache_dir=settings.models_dir
            )
            if src.config and not Path(src.config).expanduser().is_dir():
                snapshot_download(
                    src.config, cache_dir=settings.models_dir, allow_patterns=["*.json", "*.txt"]
                )
        elif src.filename:
            hf_hub_download(
                src.repo or "", src.filename, revision=src.revision, cache_dir=settings.models_dir
            )
        else:
            allow = _HF_ALLOW
            if engine.family in (Family.SEGMENTER_CLIPSEG, Family.MATTING_VITMATTE):
                from stableserve.inference.segmentation import hf_allow_patterns

                allow = hf_allow_patterns(src.repo or "", src.revision)  # weights at the repo root
            elif src.variant:
                allow = ["*.json", "*.txt", "*.model", f"*/*.{src.variant}.safetensors"]
            snapshot_download(
                src.repo or "", revision=src.revision, cache_dir=settings.models_dir, allow_patterns=allow
            )
    except Exception as exc:  # the hub client raises many kinds (HTTP, connection, offline mode)
        raise HubUnreachable(
            f"could not download {src.repo}@{src.revision} for engine {engine.id} from {where}: "
            f"{type(exc).__name__}: {exc}. Check the network (or HF_ENDPOINT / HF_TOKEN), "
            f"or point the registry at a local copy (source kind 'local')."
        ) from None
    return weights_location(engine, settings)


def _download_url(engine: EngineSpec, settings: Settings, progress) -> Path:
    import httpx

    url = engine.source.url or ""
    dest = _url_path(engine, settings)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    digest = hashlib.sha256()
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=30) as resp:
            resp.raise_for_status()
            total = int(resp.headers.get("content-length", 0)) or None
            done = 0
            with tmp.open("wb") as fh:
                for chunk in resp.iter_bytes(1 << 20):
                    fh.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    except httpx.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        raise HubUnreachable(
            f"could not download {url} for engine {engine.id}: {type(exc).__name__}: {exc}. "
            f"Check the network, or download the file yourself and use source kind 'local'."
        ) from None
    if engine.source.sha256 and digest.hexdigest() != engine.source.sha256:
        tmp.unlink(missing_ok=True)
        raise EngineNotReady(f"engine {engine.id}: {url} does not match its sha256 {engine.source.sha256}")
    os.replace(tmp, dest)
    return dest
