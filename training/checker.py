"""Deterministic checker: does an image show a scene's objects (colour, shape, position)?

It reads only pixels and the generator's ground-truth attributes (:class:`training.data.Scene`):

- colour: pixels are classified to the nearest :data:`training.data.PALETTE` colour (RGB
  Euclidean, none beyond :data:`MAX_DISTANCE`); inside the object's expected region (the cell
  of its position anchor, within :data:`REGION_RADIUS` of it) the most frequent class other than
  the background colour (pixels weighted by nearness to the anchor) must be the object's colour;
- position: the centroid of the largest connected component of the object's colour must lie
  nearest to the object's anchor among :data:`training.data.POSITIONS`;
- shape: that component is classified by simple moments: hole ratio (ring), solidity = area /
  convex-hull area (star), extent = area / bounding-box area (square > circle > triangle).

Applied to the generator's own renders it scores (close to) 100 % (``tests/training``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from training.data import PALETTE, POSITIONS, Scene, SceneObject

MAX_DISTANCE = 110.0
"""Largest RGB distance (0-255 units) at which a pixel still counts as a palette colour."""

REGION_RADIUS = 0.3
"""Half-size of an object's expected region, as a fraction of each side."""

REGION_SIGMA = 0.12
"""Spread (fraction of each side) of the region weights: pixels near the anchor count most."""

_NAMES = list(PALETTE)
_COLORS = np.array([PALETTE[n] for n in _NAMES], dtype=np.float32)
_ANCHORS = np.array(list(POSITIONS.values()), dtype=np.float32)
_POSITION_NAMES = list(POSITIONS)


def classify_pixels(rgb: np.ndarray) -> np.ndarray:
    """Palette index per pixel of an ``(H, W, 3)`` uint8 image; -1 where no colour is near."""
    px = rgb.reshape(-1, 3).astype(np.float32)
    d2 = ((px[:, None, :] - _COLORS[None, :, :]) ** 2).sum(-1)
    idx = d2.argmin(1)
    idx[d2[np.arange(len(idx)), idx] > MAX_DISTANCE**2] = -1
    return idx.reshape(rgb.shape[:2])


def nearest_position(x: float, y: float) -> str:
    """Position word whose anchor is nearest to ``(x, y)`` (fractions of width, height)."""
    return _POSITION_NAMES[int(((_ANCHORS - np.array([x, y])) ** 2).sum(1).argmin())]


def region_weights(position: str, width: int, height: int) -> np.ndarray:
    """``(H, W)`` weights of the expected region of ``position``: the anchor's cell within
    :data:`REGION_RADIUS`, weighted by a Gaussian of :data:`REGION_SIGMA` around the anchor."""
    ys = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    xs = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width
    d2 = (xs[None] - _ANCHORS[:, 0, None, None]) ** 2 + (ys[None] - _ANCHORS[:, 1, None, None]) ** 2
    k = _POSITION_NAMES.index(position)
    ax, ay = _ANCHORS[k]
    near = (np.abs(xs - ax) <= REGION_RADIUS) & (np.abs(ys - ay) <= REGION_RADIUS)
    return ((d2.argmin(0) == k) & near) * np.exp(-d2[k] / (2 * REGION_SIGMA**2))


def shape_of(mask: np.ndarray) -> str:
    """Shape class of a boolean object mask (one connected component)."""
    area = float(mask.sum())
    if area < 20:
        return "none"
    filled = ndimage.binary_fill_holes(mask)
    if (filled.sum() - area) / filled.sum() > 0.12:
        return "ring"
    ys, xs = np.nonzero(filled)
    extent = filled.sum() / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))
    pts = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    try:
        solidity = filled.sum() / ConvexHull(pts).volume
    except QhullError:
        return "none"
    if solidity < 0.78:
        return "star"
    if extent > 0.9:
        return "square"
    return "circle" if extent > 0.64 else "triangle"


@dataclass(frozen=True)
class ObjectScore:
    """Checker verdicts for one object, with what was seen."""

    color: bool
    shape: bool
    position: bool
    seen_color: str
    seen_shape: str
    seen_position: str


def check_object(
    classes: np.ndarray, scene: Scene, obj: SceneObject, color: str | None = None
) -> ObjectScore:
    """Score ``obj`` of ``scene`` in an image given its :func:`classify_pixels` map.

    ``color`` overrides the expected colour (img2img / inpainting with a recoloured prompt).
    """
    color = color or obj.color
    h, w = classes.shape
    bg = _NAMES.index(scene.background_color)
    weights = region_weights(obj.position, w, h)
    keep = (classes >= 0) & (classes != bg) & (weights > 0)
    counts = np.bincount(classes[keep], weights=weights[keep], minlength=len(_NAMES))
    seen_color = _NAMES[int(counts.argmax())] if counts.sum() > 0 else "none"
    labels, n = ndimage.label(classes == _NAMES.index(color))
    if n == 0:
        return ObjectScore(seen_color == color, False, False, seen_color, "none", "none")
    sizes = np.bincount(labels.ravel())[1:]
    component = labels == int(sizes.argmax()) + 1
    ys, xs = np.nonzero(component)
    seen_pos = nearest_position((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
    seen_shape = shape_of(component)
    return ObjectScore(
        seen_color == color,
        seen_shape == obj.shape,
        seen_pos == obj.position,
        seen_color,
        seen_shape,
        seen_pos,
    )


def check_scene(rgb: np.ndarray, scene: Scene) -> list[ObjectScore]:
    """Scores of every object of ``scene`` in the ``(H, W, 3)`` uint8 image ``rgb``."""
    classes = classify_pixels(rgb)
    return [check_object(classes, scene, obj) for obj in scene.objects]
