"""Procedural captioned images: coloured shapes on plain, gradient or textured backgrounds.

Every scene is a pure function of ``(seed, width, height)``: :func:`make_scene` draws its
attributes with ``random.Random(seed)``, :func:`render` paints them with PIL, so the same seed
gives the same pixels on every machine. A scene holds one to three objects, each with a shape
(:data:`SHAPES`), a colour (:data:`PALETTE`, all different and different from the background),
a size word (:data:`SIZES`) and a position word (:data:`POSITIONS`, all different); the caption
is one of several phrasings of those attributes, e.g. ``"a large red circle on the left on a
blue background"``.

Held-out split: a scene is held out when the SHA-1 of its caption falls in the last
``1/HELD_OUT_MODULUS`` of the hash space (:func:`is_held_out`); :func:`training_scene` skips
those, :func:`held_out_scenes` keeps only those, so no evaluation caption is ever trained on.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "ring")
"""Shape classes; squares are axis-aligned, triangles and stars point up."""

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 130, 0),
    "yellow": (250, 230, 40),
    "green": (40, 170, 60),
    "blue": (30, 70, 220),
    "purple": (130, 40, 190),
    "pink": (250, 130, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
"""Colour name -> sRGB (0-255). Pairwise Euclidean distances are at least ~100."""

SIZES: dict[str, float] = {"small": 0.08, "medium": 0.12, "large": 0.17}
"""Size word -> object radius as a fraction of the shorter canvas side."""

POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.22, 0.5),
    "right": (0.78, 0.5),
    "top": (0.5, 0.22),
    "bottom": (0.5, 0.78),
    "center": (0.5, 0.5),
}
"""Position word -> anchor ``(x, y)`` as fractions of width and height (y grows downwards)."""

JITTER = 0.04
"""Largest offset of an object's centre from its anchor, as a fraction of each side."""

BACKGROUNDS = ("plain", "gradient", "textured")
SHADE = 28
"""Largest brightness offset (0-255 levels) of gradient and texture backgrounds."""

HELD_OUT_MODULUS = 20
"""One caption in this many (by hash) is held out for evaluation."""

_POSITION_PHRASES = {
    "left": ("on the left", "at the left"),
    "right": ("on the right", "at the right"),
    "top": ("at the top", "on the top"),
    "bottom": ("at the bottom", "on the bottom"),
    "center": ("in the center", "in the middle"),
}
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class SceneObject:
    """One object: attribute words and its geometry.

    ``cx``, ``cy``: centre as fractions of width / height; ``radius``: fraction of the shorter
    side (circumscribed-circle radius for polygons, outer radius for rings).
    """

    shape: str
    color: str
    size: str
    position: str
    cx: float
    cy: float
    radius: float


@dataclass(frozen=True)
class Scene:
    """A whole image description: canvas size in pixels, background, objects and caption."""

    seed: int
    width: int
    height: int
    background: str
    background_color: str
    objects: tuple[SceneObject, ...]
    caption: str

    def to_dict(self) -> dict:
        """JSON-serialisable ground truth (attributes, geometry and caption)."""
        return asdict(self)


def _overlaps(a: SceneObject, b: SceneObject, width: int, height: int) -> bool:
    side = min(width, height)
    dx = (a.cx - b.cx) * width
    dy = (a.cy - b.cy) * height
    return math.hypot(dx, dy) < (a.radius + b.radius) * side + 0.02 * side


def _object_phrase(obj: SceneObject, rng: random.Random, with_size: bool) -> str:
    pos = rng.choice(_POSITION_PHRASES[obj.position])
    words = ([obj.size] if with_size else []) + [obj.color, obj.shape]
    return f"a {' '.join(words)} {pos}"


def _background_phrase(kind: str, color: str) -> str:
    if kind == "plain":
        return f"a {color} background"
    if kind == "gradient":
        return f"a {color} gradient background"
    return f"a textured {color} background"


def caption_for(
    objects: tuple[SceneObject, ...], background: str, background_color: str, rng: random.Random
) -> str:
    """One of four phrasings of the scene (the choice is drawn from ``rng``).

    Every phrasing names each object's colour, shape and position; sizes and the background
    are named in most of them.
    """
    style = rng.randrange(4)
    with_size = style != 3
    parts = [_object_phrase(o, rng, with_size) for o in objects]
    things = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    bg = _background_phrase(background, background_color)
    if style == 0:
        return f"{things} on {bg}"
    if style == 1:
        return f"a picture of {things}, {bg}"
    if style == 2:
        return f"{bg} with {things}"
    return things


def make_scene(seed: int, width: int = 512, height: int = 512) -> Scene:
    """Draw the attributes of scene ``seed`` on a ``width`` x ``height`` canvas (pixels)."""
    rng = random.Random(seed)
    background = rng.choice(BACKGROUNDS)
    bg_color = rng.choice(list(PALETTE))
    n = rng.choices((1, 2, 3), weights=(5, 3, 2))[0]
    colors = rng.sample([c for c in PALETTE if c != bg_color], n)
    positions = rng.sample(list(POSITIONS), n)
    objects: list[SceneObject] = []
    for color, position in zip(colors, positions, strict=True):
        ax, ay = POSITIONS[position]
        for _ in range(20):  # shrink until it fits beside the others
            size = rng.choice(list(SIZES))
            obj = SceneObject(
                shape=rng.choice(SHAPES),
                color=color,
                size=size,
                position=position,
                cx=ax + rng.uniform(-JITTER, JITTER),
                cy=ay + rng.uniform(-JITTER, JITTER),
                radius=SIZES[size] * rng.uniform(0.9, 1.1),
            )
            if not any(_overlaps(obj, o, width, height) for o in objects):
                break
        else:
            obj = SceneObject(obj.shape, color, "small", position, ax, ay, SIZES["small"] * 0.9)
        objects.append(obj)
    objs = tuple(objects)
    return Scene(
        seed, width, height, background, bg_color, objs, caption_for(objs, background, bg_color, rng)
    )


def is_held_out(caption: str) -> bool:
    """Whether ``caption`` belongs to the evaluation split (by SHA-1, about 1 in 20)."""
    digest = int.from_bytes(hashlib.sha1(caption.encode("utf-8")).digest()[:8], "big")
    return digest % HELD_OUT_MODULUS == 0


def training_scene(index: int, width: int = 512, height: int = 512) -> Scene:
    """The ``index``-th training scene: seeds ``index * 7919 + k`` for the first k whose
    caption is not held out (deterministic)."""
    k = 0
    while True:
        scene = make_scene(index * 7919 + k, width, height)
        if not is_held_out(scene.caption):
            return scene
        k += 1


def held_out_scenes(count: int, width: int = 512, height: int = 512, start: int = 10_000_000) -> list[Scene]:
    """The first ``count`` held-out scenes with seeds from ``start`` upwards (distinct captions)."""
    scenes: list[Scene] = []
    seen: set[str] = set()
    seed = start
    while len(scenes) < count:
        scene = make_scene(seed, width, height)
        if is_held_out(scene.caption) and scene.caption not in seen:
            scenes.append(scene)
            seen.add(scene.caption)
        seed += 1
    return scenes


# ---------------------------------------------------------------------------------------------
# Rendering


def _background(scene: Scene) -> np.ndarray:
    rng = np.random.default_rng(scene.seed)
    h, w = scene.height, scene.width
    base = np.array(PALETTE[scene.background_color], dtype=np.float32)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    if scene.background == "plain":
        return np.broadcast_to(base.astype(np.uint8), (h, w, 3)).copy()
    elif scene.background == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        t = (xs / w - 0.5) * math.cos(angle) + (ys / h - 0.5) * math.sin(angle)
        shade = SHADE * 2 * t  # |t| <= ~0.7
    else:
        period = rng.uniform(0.04, 0.1) * min(w, h)
        kind = rng.integers(3)
        if kind == 0:  # stripes
            angle = rng.uniform(0, math.pi)
            shade = np.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period)
        elif kind == 1:  # checks
            shade = np.sign(np.sin(2 * math.pi * xs / period) * np.sin(2 * math.pi * ys / period))
        else:  # dots
            shade = (np.sin(2 * math.pi * xs / period) + np.sin(2 * math.pi * ys / period)) / 2
        shade = SHADE * 0.7 * shade
    # Darken light colours and lighten dark ones so the shade is never clipped away.
    sign = -1.0 if base.mean() > 200 else 1.0
    offset = sign * np.abs(shade) if base.mean() > 200 or base.mean() < 40 else shade
    return np.clip(base + offset[..., None] + 0.5, 0, 255).astype(np.uint8)


def _polygon(cx: float, cy: float, r: float, shape: str) -> list[tuple[float, float]]:
    if shape == "square":
        s = r / math.sqrt(2)
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [
            (cx + r * math.cos(a), cy - r * math.sin(a))
            for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)
        ]
    pts = []  # star: five points, inner radius 0.45 r
    for k in range(10):
        a = math.pi / 2 + k * math.pi / 5
        rr = r if k % 2 == 0 else 0.45 * r
        pts.append((cx + rr * math.cos(a), cy - rr * math.sin(a)))
    return pts


def object_mask(scene: Scene, obj: SceneObject) -> Image.Image:
    """Antialiased coverage of ``obj`` (mode ``"L"``, scene size; 255 = fully inside)."""
    ss = _SUPERSAMPLE
    w, h = scene.width * ss, scene.height * ss
    cx, cy, r = obj.cx * w, obj.cy * h, obj.radius * min(w, h)
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if obj.shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if obj.shape == "ring":
            ri = 0.55 * r
            draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    else:
        draw.polygon(_polygon(cx, cy, r, obj.shape), fill=255)
    return mask.resize((scene.width, scene.height), Image.Resampling.BOX)


def render(scene: Scene) -> Image.Image:
    """Paint ``scene`` as an RGB image of ``scene.width`` x ``scene.height`` pixels."""
    img = Image.fromarray(_background(scene), "RGB")
    for obj in scene.objects:
        img.paste(PALETTE[obj.color], (0, 0, scene.width, scene.height), object_mask(scene, obj))
    return img
