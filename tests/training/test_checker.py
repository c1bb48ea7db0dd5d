"""The deterministic checker scores the generator's own images (near) perfectly, and wrong
images badly."""

from __future__ import annotations

import numpy as np

from training import checker, data


def test_ground_truth_images_score_near_100_percent():
    scores = []
    for scene in data.held_out_scenes(40, 256, 256):
        scores += checker.check_scene(np.asarray(data.render(scene)), scene)
    for k in ("color", "shape", "position"):
        assert np.mean([getattr(s, k) for s in scores]) >= 0.97, k


def test_wrong_image_fails():
    scene = data.make_scene(11, 256, 256)
    blank = np.zeros((256, 256, 3), np.uint8) + np.array(data.PALETTE[scene.background_color], np.uint8)
    for s in checker.check_scene(blank, scene):
        assert not (s.color or s.shape or s.position)


def test_shape_classes_of_single_objects():
    for shape in data.SHAPES:
        obj = data.SceneObject(shape, "red", "large", "center", 0.5, 0.5, 0.2)
        scene = data.Scene(0, 256, 256, "plain", "white", (obj,), f"a red {shape}")
        mask = np.asarray(data.object_mask(scene, obj)) > 127
        assert checker.shape_of(mask) == shape


def test_ssim_identity_and_difference():
    from training.evaluate import ssim

    img = np.asarray(data.render(data.make_scene(5, 128, 128)))
    assert ssim(img, img) > 0.999
    assert ssim(img, 255 - img) < 0.5
