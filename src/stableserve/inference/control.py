"""ControlNet preprocessors: an input image -> the conditioning image a ControlNet was trained on.

Two kinds (``EngineSpec.control_preprocess``), both returning an RGB ``PIL.Image`` of the
input's size whose three channels are equal, 255 on a line and 0 elsewhere:

- ``sketch`` (REST v2beta control/sketch; ``lllyasviel/control_v11p_sd15_scribble``): the
  scribble models take white lines on a black background. A drawing with dark lines on a
  light background (the usual pencil or pen sketch, or a transparent PNG drawn over nothing)
  is inverted; faint strokes are kept by a threshold on a slightly blurred image
  (``sketch_map``).
- ``canny`` (REST v2beta control/structure; ``lllyasviel/control_v11p_sd15_canny``): Canny
  edges (``canny_map``) with OpenCV's conventions, which the canny ControlNets were trained
  with (``cv2.Canny(image, 100, 200)``): thresholds apply to the L1 magnitude ``|gx| + |gy|``
  of 3x3 Sobel derivatives of 0..255 values, no blur unless asked. OpenCV is not a
  dependency; this is a small NumPy/SciPy implementation (Sobel, non-maximum suppression,
  hysteresis by connected components).

Only NumPy, SciPy (``scipy.ndimage``, as ``inference.imaging``) and Pillow; no torch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

ControlKind = Literal["sketch", "canny"]
CONTROL_KINDS: tuple[ControlKind, ...] = ("sketch", "canny")
"""The preprocessors ``control_map`` knows (the values of ``EngineSpec.control_preprocess``)."""

CANNY_LOW = 100
"""Default lower hysteresis threshold of ``canny_map`` (OpenCV / ControlNet annotator default)."""
CANNY_HIGH = 200
"""Default upper hysteresis threshold of ``canny_map``."""

SKETCH_THRESHOLD = 64
"""A pixel is a stroke when its blurred, polarity-normalised value is above this (0..255):
a quarter of the way from background to ink, so light pencil strokes count."""


def _grey(img: Image.Image) -> np.ndarray:
    """Luminance as float32 (H, W) in 0..255; transparent pixels count as white paper."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    return np.asarray(img.convert("L"), dtype=np.float32)


def _rgb_map(lines: np.ndarray) -> Image.Image:
    """bool (H, W) -> RGB image, 255 where True, 0 elsewhere."""
    grey = np.where(lines, 255, 0).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), mode="RGB")


def sketch_map(img: Image.Image, *, threshold: int = SKETCH_THRESHOLD) -> Image.Image:
    """Scribble conditioning of a drawing: white (255) strokes on black (0), RGB, ``img``'s size.

    ``img``: any PIL mode; transparency is composited over white first (a sketch drawn on a
    transparent layer reads as ink on paper). Polarity: when the median luminance is above
    127 (a light background, i.e. dark strokes), the image is inverted so strokes are bright.
    The result is blurred lightly (Gaussian, sigma 0.5 px per 512 px of the shorter side, at
    least 0.5) to join broken pencil lines, contrast-stretched so the background (median) is 0,
    and thresholded at ``threshold`` (0..255). A blank image gives an all-black map (no
    strokes: the ControlNet then adds nothing of substance).
    """
    from scipy.ndimage import gaussian_filter

    grey = _grey(img)
    if np.median(grey) > 127:
        grey = 255.0 - grey
    sigma = max(0.5, 0.5 * min(grey.shape) / 512)
    grey = gaussian_filter(grey, sigma=sigma)
    background = float(np.median(grey))
    ink = float(grey.max())
    if ink - background < 1.0:  # flat: nothing drawn
        return _rgb_map(np.zeros(grey.shape, dtype=bool))
    stretched = (grey - background) * (255.0 / (ink - background))
    return _rgb_map(stretched > threshold)


def _sobel(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 Sobel derivatives (gx along width, gy along height) of float (H, W), OpenCV's scale
    (a 0 -> 255 step gives 1020) with reflected borders."""
    from scipy.ndimage import sobel

    return sobel(channel, axis=1, mode="reflect"), sobel(channel, axis=0, mode="reflect")


def _non_max_suppression(mag: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Keep a pixel's magnitude where it is a maximum across the edge (gradient direction
    quantised to 0, 45, 90 or 135 degrees); 0 elsewhere. Ties keep the first of two equal
    neighbours only (``>`` on one side, ``>=`` on the other), so a step edge is 1 px wide."""
    h, w = mag.shape
    padded = np.pad(mag, 1)
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    # (dy, dx) of the neighbour along the gradient for each quantised direction.
    directions = [
        ((angle < 22.5) | (angle >= 157.5), (0, 1)),
        ((angle >= 22.5) & (angle < 67.5), (1, 1)),
        ((angle >= 67.5) & (angle < 112.5), (1, 0)),
        ((angle >= 112.5) & (angle < 157.5), (1, -1)),
    ]
    keep = np.zeros_like(mag, dtype=bool)
    for where, (dy, dx) in directions:
        ahead = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        behind = padded[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        keep |= where & (mag > behind) & (mag >= ahead)
    return np.where(keep, mag, 0.0)


def canny_map(
    img: Image.Image, low: float = CANNY_LOW, high: float = CANNY_HIGH, *, sigma: float = 0.0
) -> Image.Image:
    """Canny edges of ``img``: white (255) 1-px edges on black (0), RGB, ``img``'s size.

    Steps: optional Gaussian blur of each channel (``sigma`` px, 0 = none, as OpenCV's
    ``cv2.Canny``); 3x3 Sobel derivatives per RGB channel, keeping at each pixel the channel
    with the largest L1 magnitude ``|gx| + |gy|`` (as OpenCV does for colour input);
    non-maximum suppression across the edge; hysteresis: pixels with magnitude >= ``high``
    are edges, pixels >= ``low`` are edges when 8-connected to one of those. ``low`` and
    ``high`` are in OpenCV's units (a full black-to-white step is 1020); raises
    ``ValueError`` unless 0 <= ``low`` <= ``high``. Transparent pixels count as white.
    """
    from scipy.ndimage import gaussian_filter, label

    if not 0 <= low <= high:
        raise ValueError(f"canny thresholds need 0 <= low <= high, got low={low}, high={high}")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        paper = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, img.convert("RGBA"))
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    best = gx_best = gy_best = None
    for c in range(3):
        channel = rgb[..., c]
        if sigma > 0:
            channel = gaussian_filter(channel, sigma=sigma)
        gx, gy = _sobel(channel)
        mag = np.abs(gx) + np.abs(gy)
        if best is None:
            best, gx_best, gy_best = mag, gx, gy
        else:
            larger = mag > best
            best = np.where(larger, mag, best)
            gx_best = np.where(larger, gx, gx_best)
            gy_best = np.where(larger, gy, gy_best)
    assert best is not None and gx_best is not None and gy_best is not None
    thin = _non_max_suppression(best, gx_best, gy_best)
    weak = thin >= max(low, 1e-6)  # a zero gradient is never an edge, even with low = 0
    strong = thin >= max(high, 1e-6)
    components, count = label(weak, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return _rgb_map(weak)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(components[strong])] = True
    keep[0] = False
    return _rgb_map(keep[components])


def control_map(kind: str, img: Image.Image) -> Image.Image:
    """The conditioning image of preprocessor ``kind`` (``sketch`` or ``canny``) for ``img``.

    RGB, ``img``'s size, strokes/edges 255 on 0 (``sketch_map``, ``canny_map`` with default
    thresholds). Raises ``ValueError`` for another ``kind``.
    """
    if kind == "sketch":
        return sketch_map(img)
    if kind == "canny":
        return canny_map(img)
    raise ValueError(f"unknown control preprocessor {kind!r}; known: {', '.join(CONTROL_KINDS)}")
