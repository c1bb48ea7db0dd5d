"""The procedural caption/image generator: determinism, caption/attribute agreement, split."""

from __future__ import annotations

import numpy as np

from training import data


def test_same_seed_same_scene_and_pixels():
    a, b = data.make_scene(123, 256, 256), data.make_scene(123, 256, 256)
    assert a == b
    assert np.array_equal(np.asarray(data.render(a)), np.asarray(data.render(b)))
    assert data.make_scene(124, 256, 256) != a


def test_caption_names_every_object_and_attributes_are_valid():
    for seed in range(200):
        scene = data.make_scene(seed, 256, 256)
        assert 1 <= len(scene.objects) <= 3
        colors = [o.color for o in scene.objects]
        assert len(set(colors)) == len(colors) and scene.background_color not in colors
        assert len({o.position for o in scene.objects}) == len(scene.objects)
        for obj in scene.objects:
            assert obj.shape in data.SHAPES and obj.size in data.SIZES
            assert f"{obj.color} {obj.shape}" in scene.caption
            assert any(p in scene.caption for p in data._POSITION_PHRASES[obj.position])
        if "background" in scene.caption:
            assert scene.background_color in scene.caption


def test_rendered_object_has_its_colour_at_its_centre():
    scene = data.make_scene(7, 256, 256)
    rgb = np.asarray(data.render(scene))
    for obj in scene.objects:
        if obj.shape == "ring":
            continue
        y, x = int(obj.cy * scene.height), int(obj.cx * scene.width)
        assert tuple(rgb[y, x]) == data.PALETTE[obj.color]


def test_held_out_split_is_disjoint_from_training():
    held = data.held_out_scenes(20, 64, 64)
    assert all(data.is_held_out(s.caption) for s in held)
    assert len({s.caption for s in held}) == 20
    assert not any(data.is_held_out(data.training_scene(i, 64, 64).caption) for i in range(200))


def test_other_canvas_sizes():
    scene = data.make_scene(3, 384, 640)
    assert data.render(scene).size == (384, 640)
