"""The 9-channel inpainting fine-tune: its starting point, its masks and its pipeline inputs."""

from __future__ import annotations

import random

import numpy as np
import torch
from training.inpaint import InpaintConfig, _pipeline_inputs, nine_channel_unet, random_mask

from training import data, model


def test_nine_channel_unet_starts_as_the_base():
    torch.manual_seed(0)
    base = model.unet().eval()
    nine = nine_channel_unet(base).eval()
    assert nine.config.in_channels == 9 and nine.conv_in.weight.shape[1] == 9
    x, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 8, 8)
    text = torch.randn(2, 77, model.TEXT_WIDTH)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        expected = base(x, t, text).sample
        got = nine(torch.cat([x, cond], 1), t, text).sample
    assert torch.allclose(got, expected, atol=1e-5)


def test_random_masks_mix_whole_object_box_and_rectangles_deterministically():
    cfg = InpaintConfig()
    scenes = [data.make_scene(i, 128, 128) for i in range(200)]

    def draw(seed: int) -> list[np.ndarray]:
        return [np.asarray(random_mask(s, random.Random(seed * 1000 + i), cfg)) for i, s in enumerate(scenes)]

    masks = draw(1)
    assert all(np.array_equal(a, b) for a, b in zip(masks, draw(1), strict=True))
    assert all(set(np.unique(m)) <= {0, 255} for m in masks)
    whole = np.mean([m.min() == 255 for m in masks])
    assert 0.15 < whole < 0.35  # cfg.full_mask = 0.25
    # an object-box mask covers the centre of one of the scene's objects
    covered = [
        any(m[int(o.cy * 128), int(o.cx * 128)] == 255 for o in s.objects)
        for s, m in zip(scenes, masks, strict=True)
        if m.min() == 0
    ]
    assert np.mean(covered) > cfg.object_box


def test_pipeline_inputs_zero_the_masked_pixels_like_the_inpaint_pipeline():
    scene = data.make_scene(4, 64, 64)
    image = data.render(scene)
    mask = random_mask(scene, random.Random(2), InpaintConfig(full_mask=0.0, object_box=0.0))
    masked, m = _pipeline_inputs(image, mask)
    inside = torch.from_numpy(np.asarray(mask) >= 128)
    assert m.shape == (1, 64, 64) and torch.equal(m[0].bool(), inside)
    assert masked.shape == (3, 64, 64) and masked[:, inside].abs().max() == 0
    assert masked[:, ~inside].abs().sum() > 0
