"""Image safety: which output images are unsafe, and blurring them (worker side).

A request with ``image_safety="blur"`` (set from the organization's moderation mode) has its
output images checked by the worker's ``ImageSafetyChecker`` for that engine; a flagged image
is Gaussian-blurred and its artifact marked ``CONTENT_FILTERED`` (gRPC ``FILTER``). The
checker is, in order:

1. the plugin named by ``settings.moderation.image_checker`` (``module:attr`` or an entry
   point of group ``stableserve.image_safety``): any object with
   ``check(images: list[PIL.Image.Image]) -> list[bool]`` (True = unsafe), or a function of
   that shape; an offline classifier of your choice, e.g. an NSFW image model you ship;
2. diffusers' ``StableDiffusionSafetyChecker`` when the engine's weights folder ships one
   (``safety_checker/`` + ``feature_extractor/``, as the SD 1.x repositories do) and
   ``settings.moderation.safety_checker`` is on; loaded once per worker and engine, on the
   engine's device (about 1.2 GB of float32 weights, outside the model cache's budget);
3. none: images pass unchecked (the demo engines ship no checker).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image, ImageFilter

from stableserve.core.moderation import IMAGE_CHECKER_GROUP, load_plugin
from stableserve.settings import Settings

log = logging.getLogger(__name__)

BLUR_FRACTION = 0.08
"""Gaussian blur radius as a fraction of the image's longer side (at least ``MIN_BLUR_RADIUS``)."""
MIN_BLUR_RADIUS = 8.0


@runtime_checkable
class ImageSafetyChecker(Protocol):
    """Flags unsafe images: ``check(images)`` -> one bool per image, True = unsafe."""

    def check(self, images: Sequence[Image.Image]) -> list[bool]: ...


class _FunctionChecker:
    def __init__(self, function: Callable[[Sequence[Image.Image]], Sequence[bool]]):
        self.function = function

    def check(self, images: Sequence[Image.Image]) -> list[bool]:
        return [bool(v) for v in self.function(images)]


def load_image_checker(spec: str) -> ImageSafetyChecker:
    """The image checker plugin ``spec`` names (``core.moderation.load_plugin``, group
    ``stableserve.image_safety``); a plain function is wrapped. ``ValueError`` when it cannot
    be loaded or has no ``check``."""
    plugin = load_plugin(spec, IMAGE_CHECKER_GROUP)
    if isinstance(plugin, ImageSafetyChecker):
        return plugin
    if callable(plugin):
        return _FunctionChecker(plugin)
    raise ValueError(f"image checker {spec!r} has no check(images) method")


class DiffusersSafetyChecker:
    """diffusers' ``StableDiffusionSafetyChecker`` with its CLIP ``feature_extractor``, loaded
    from an SD 1.x weights folder. ``check`` uses only its verdicts (``has_nsfw_concepts``);
    blurring is done by ``blur`` rather than diffusers' black images."""

    def __init__(self, folder: Path, device: Any, dtype: Any):
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        self.processor = CLIPImageProcessor.from_pretrained(str(folder / "feature_extractor"))
        model = StableDiffusionSafetyChecker.from_pretrained(str(folder / "safety_checker"))
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = device, dtype

    @staticmethod
    def ships_with(folder: Path) -> bool:
        """True when ``folder`` holds ``safety_checker/config.json`` and a feature extractor."""
        return (folder / "safety_checker" / "config.json").is_file() and (
            folder / "feature_extractor" / "preprocessor_config.json"
        ).is_file()

    def check(self, images: Sequence[Image.Image]) -> list[bool]:
        """One verdict per image (True = NSFW concept found)."""
        import numpy as np
        import torch

        rgb = [img.convert("RGB") for img in images]
        clip = self.processor(rgb, return_tensors="pt").pixel_values.to(self.device, self.dtype)
        arrays = np.stack([np.asarray(img, dtype=np.float32) / 255.0 for img in rgb])
        with torch.inference_mode():
            _images, flags = self.model(images=arrays, clip_input=clip)
        return [bool(f) for f in flags]


def checker_for(loaded: Any, settings: Settings) -> ImageSafetyChecker | None:
    """The checker for a loaded engine (module docstring order), or None.

    ``loaded``: ``inference.loading.LoadedEngine``. Raises ``ValueError`` for a plugin that
    cannot be loaded (a configuration error)."""
    config = settings.moderation
    if config.image_checker:
        return load_image_checker(config.image_checker)
    if not config.safety_checker or loaded.pipeline is None:
        return None
    from stableserve.inference.loading import weights_location

    try:
        folder = weights_location(loaded.engine, settings)
    except Exception:  # noqa: BLE001 - no folder, no checker
        return None
    if not folder.is_dir() or not DiffusersSafetyChecker.ships_with(folder):
        return None
    log.info("loading the safety checker of %s", loaded.engine.id)
    return DiffusersSafetyChecker(folder, loaded.device, loaded.dtype)


def blur(image: Image.Image) -> Image.Image:
    """``image`` Gaussian-blurred beyond recognition: radius ``BLUR_FRACTION`` of its longer
    side (at least ``MIN_BLUR_RADIUS`` pixels); same size and mode (alpha blurred too)."""
    radius = max(MIN_BLUR_RADIUS, BLUR_FRACTION * max(image.size))
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return image.filter(ImageFilter.GaussianBlur(radius))


def screen(
    images: list[Image.Image], checker: ImageSafetyChecker | None
) -> tuple[list[Image.Image], list[bool]]:
    """``images`` with the flagged ones blurred, and the flags (one per image).

    No checker: the images unchanged and all False. Raises what the checker raises, or
    ``ValueError`` when it answers with the wrong number of verdicts."""
    if checker is None or not images:
        return images, [False] * len(images)
    flags = [bool(f) for f in checker.check(images)]
    if len(flags) != len(images):
        raise ValueError(f"image safety checker answered {len(flags)} verdicts for {len(images)} images")
    return [blur(img) if flag else img for img, flag in zip(images, flags, strict=True)], flags
