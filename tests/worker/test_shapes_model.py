"""Semantic checks on the shipped shapes model (issue 11): the demo SD 1.x-family engines draw
what the prompt says, through the real runner. Colour is judged by hue: the most common hue (10°
bins) of the saturated pixels (HSV saturation and value at least 0.5 and 0.25, so backgrounds and their
faint tints do not count) must be nearer to the hue of the prompt's palette colour than to that of
any other chromatic colour of the palette."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
from PIL import Image, ImageDraw
from training.data import PALETTE

from stableserve.core.types import GenerationRequest, MaskSource, Task, WeightedPrompt
from tests.worker.conftest import decode, encode

SIZE = 512
STEPS = 20
HUES = {
    name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360
    for name, rgb in PALETTE.items()
    if name not in ("white", "black", "gray")
}
"""Hue in degrees of each chromatic colour of :data:`training.data.PALETTE`."""


def saturated_hue(rgb: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """(most common hue in degrees, share of ``region`` that is saturated) for uint8 ``rgb``;
    hues are counted in 10-degree bins, so an object's anti-aliased rim does not shift it."""
    hsv = np.asarray(Image.fromarray(rgb, "RGB").convert("HSV"), dtype=np.float32) / 255
    px = hsv[region]
    strong = px[(px[:, 1] >= 0.5) & (px[:, 2] >= 0.25)]
    if len(strong) == 0:
        return float("nan"), 0.0
    bins = np.bincount((strong[:, 0] * 36).astype(int) % 36, minlength=36)
    return float(bins.argmax() * 10 + 5), len(strong) / len(px)


def hue_name(hue: float) -> str:
    """The chromatic palette colour whose hue is nearest to ``hue`` (degrees, circular)."""
    return min(HUES, key=lambda name: abs((hue - HUES[name] + 180) % 360 - 180))


@pytest.mark.parametrize("color", ["red", "blue"])
def test_prompt_colour_dominates_the_image(runner, color):
    prompt = f"a large {color} circle in the center on a white background"
    req = GenerationRequest(
        engine_id="stable-diffusion-v1-5",
        prompts=(WeightedPrompt(text=prompt),),
        width=SIZE,
        height=SIZE,
        steps=STEPS,
        cfg_scale=7.0,
        seed=3,
    )
    rgb = np.ascontiguousarray(decode(runner.generate(req)[0].data)[..., :3])
    hue, share = saturated_hue(rgb, np.ones(rgb.shape[:2], bool))
    assert share > 0.02  # an object, not a blank canvas
    assert hue_name(hue) == color


def test_inpainting_recolours_only_the_mask(runner):
    source = Image.new("RGB", (SIZE, SIZE), PALETTE["white"])
    ImageDraw.Draw(source).rectangle((180, 180, 332, 332), fill=PALETTE["green"])
    box = np.zeros((SIZE, SIZE), dtype=np.uint8)
    box[150:362, 150:362] = 255
    req = GenerationRequest(
        engine_id="stable-inpainting-v1-0",
        task=Task.MASKING,
        prompts=(WeightedPrompt(text="a large red square in the center on a white background"),),
        init_image=encode(source),
        mask_image=encode(Image.fromarray(box, "L")),
        mask_source=MaskSource.MASK_IMAGE_WHITE,
        steps=STEPS,
        cfg_scale=7.0,
        seed=3,
    )
    out = np.ascontiguousarray(decode(runner.generate(req)[0].data)[..., :3])
    src = np.asarray(source)
    masked = box > 0
    assert hue_name(saturated_hue(src, masked)[0]) == "green"
    hue, share = saturated_hue(out, masked)
    assert share > 0.1
    assert hue_name(hue) == "red"
    assert np.array_equal(out[~masked], src[~masked])
