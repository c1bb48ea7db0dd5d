"""Masks for the v2beta edit endpoints: grow_mask feathering, a working size different from
the image's size, and pixels outside the (grown) mask coming back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from stableserve.core.types import GenerationRequest, ImageInput, MaskSource, Task, WeightedPrompt
from stableserve.inference.imaging import fit_mask, grow_mask, pipeline_mask
from tests.worker.conftest import decode, encode, gradient

INPAINT = "stable-inpainting-v1-0"


def test_grow_mask_grows_and_feathers_by_px():
    m = np.zeros((21, 21), np.float32)
    m[10, 10] = 1.0
    g = grow_mask(m, 3)
    assert g[10, 10] == 1.0
    assert 0 < g[10, 13] < g[10, 12] < g[10, 11] < 1  # linear feather outwards
    assert g[10, 14] == 0 and g[0, 0] == 0  # beyond px: untouched
    assert grow_mask(m, 0) is m
    assert not grow_mask(np.zeros((4, 4), np.float32), 5).any()


def test_fit_mask_never_loses_a_masked_pixel():
    m = np.zeros((64, 64), np.float32)
    m[31, 31] = 1.0
    small = np.asarray(fit_mask(pipeline_mask(m), (16, 16)))
    assert small.max() == 255 and set(np.unique(small)) <= {0, 255}


def _mask_png(w: int, h: int, box: tuple[int, int, int, int]) -> bytes:
    from PIL import Image

    mask = Image.new("L", (w, h), 0)
    mask.paste(255, box)
    return encode(mask).data


@pytest.mark.parametrize("grow", [0, 6])
def test_inpaint_at_a_working_size_keeps_unmasked_pixels_exactly(runner, grow):
    init = gradient(100, 70)
    box = (30, 20, 60, 45)
    req = GenerationRequest(
        engine_id=INPAINT,
        task=Task.MASKING,
        prompts=(WeightedPrompt(text="a red apple"),),
        init_image=encode(init),
        mask_image=ImageInput(data=_mask_png(100, 70, box)),
        mask_source=MaskSource.MASK_IMAGE_WHITE,
        grow_mask=grow,
        width=128,
        height=64,  # the pipeline's working size; the artifact keeps 100 x 70
        steps=2,
        seed=3,
    )
    art = runner.generate(req)[0]
    assert (art.width, art.height) == (100, 70)
    out, src = decode(art.data).astype(int), np.asarray(init).astype(int)
    keep = np.ones((70, 100), bool)
    x0, y0, x1, y1 = box
    keep[max(0, y0 - grow) : y1 + grow, max(0, x0 - grow) : x1 + grow] = False
    assert (out[keep] == src[keep]).all()  # outside the grown mask: bit for bit
    assert (out[y0:y1, x0:x1] != src[y0:y1, x0:x1]).any()  # inside: repainted
    if grow:
        band = np.zeros((70, 100), bool)
        band[y0 - grow : y1 + grow, x0 - grow : x1 + grow] = True
        band[y0:y1, x0:x1] = False
        assert (out[band] != src[band]).any()  # the feathered band changed too
