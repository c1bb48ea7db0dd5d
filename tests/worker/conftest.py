"""Worker-tier fixtures: demo engines with relaxed size rules so tests run at 128 px on CPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from stableserve.core.engines import DimensionRule, EngineRegistry, load_registry
from stableserve.core.types import ImageInput
from stableserve.inference.runner import Runner
from stableserve.settings import Settings

SMALL = DimensionRule(kind="pixel_range", multiple=64, min_side=64, min_pixels=4096, max_pixels=1_048_576)


@pytest.fixture(scope="session")
def demo_registry() -> EngineRegistry:
    """The demo registry with every non-upscaler engine allowed down to 64x64 (speed only)."""
    reg = load_registry("demo")
    engines = tuple(
        e if e.dimensions.kind == "any" else e.model_copy(update={"dimensions": SMALL}) for e in reg.engines
    )
    return EngineRegistry(engines=engines, origin="demo (small sizes for tests)")


@pytest.fixture(scope="session")
def runner(demo_registry: EngineRegistry, stableserve_home) -> Runner:
    """One runner (and model cache) for the whole session."""
    return Runner(demo_registry, Settings(home=stableserve_home))


def encode(img: Image.Image, fmt: str = "PNG") -> ImageInput:
    """Encode a PIL image as an ImageInput."""
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return ImageInput(data=buf.getvalue())


def decode(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 array (H, W, C)."""
    return np.asarray(Image.open(io.BytesIO(data)))


def gradient(w: int, h: int, alpha: np.ndarray | None = None) -> Image.Image:
    """A smooth RGB (or RGBA with ``alpha``) test picture."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    if alpha is None:
        return Image.fromarray(rgb, "RGB")
    return Image.fromarray(np.dstack([rgb, alpha.astype(np.uint8)]), "RGBA")
