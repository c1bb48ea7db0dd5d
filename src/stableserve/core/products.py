"""Products: the named services of REST v2beta (``ultra``, ``core``, ``sd3.5-large`` ...,
``upscale-fast`` ...) and which engine serves each, plus the size rules they share.

A product is configuration in the engine registry (``products:``; ``product_aliases:`` for
legacy names such as ``sd3-large``); its flat price per image is the 2026-09 column of
CONTRACT.md §3.3. This module knows no wire field names beyond the product names: adapters
map their parameters onto ``GenerationRequest`` with the helpers here.

Aspect ratios (CONTRACT.md §3.1; the official spec does not give pixel sizes) map to fixed
pixel sizes per engine (``aspect_size``):

============  ===========  ========================================
aspect_ratio  1 MP engines  engines with a fixed size list (SDXL 1.0)
============  ===========  ========================================
21:9          1536 x 640   1536 x 640
16:9          1344 x 768   1344 x 768
3:2           1216 x 832   1216 x 832
5:4           1088 x 896   1152 x 896
1:1           1024 x 1024  1024 x 1024
4:5           896 x 1088   896 x 1152
2:3           832 x 1216   832 x 1216
9:16          768 x 1344   768 x 1344
9:21          640 x 1536   640 x 1536
============  ===========  ========================================

"1 MP engines" are engines whose default size is 1024 x 1024 and whose rule admits the size
(SD 3.5). Any other engine gets its default area at that ratio, sides rounded to the rule's
multiple (e.g. a 512 x 512 SD 1.5 engine: 16:9 -> 704 x 384); an engine with a fixed size
list gets the listed size nearest in aspect.
"""

from __future__ import annotations

import io
import math

from PIL import Image

from stableserve.core.engines import EngineSpec
from stableserve.core.validation import check_dimensions
from stableserve.errors import InvalidRequest

ASPECT_RATIOS = ("21:9", "16:9", "3:2", "5:4", "1:1", "4:5", "2:3", "9:16", "9:21")
"""The v2beta ``aspect_ratio`` values (CONTRACT.md §3.1), default ``1:1``."""

ASPECT_SIZES_1MP: dict[str, tuple[int, int]] = {
    "21:9": (1536, 640),
    "16:9": (1344, 768),
    "3:2": (1216, 832),
    "5:4": (1088, 896),
    "1:1": (1024, 1024),
    "4:5": (896, 1088),
    "2:3": (832, 1216),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
}
"""(width, height) per aspect ratio for 1-megapixel engines (the SDXL/SD3 buckets)."""


def parse_ratio(ratio: str) -> float:
    """``"16:9"`` -> 1.777...; raises ``InvalidRequest`` (param ``aspect_ratio``) for other values."""
    if ratio not in ASPECT_RATIOS:
        raise InvalidRequest(f"aspect_ratio: must be one of {', '.join(ASPECT_RATIOS)}", param="aspect_ratio")
    w, h = ratio.split(":")
    return int(w) / int(h)


def _round_to(value: float, multiple: int, minimum: int) -> int:
    return max(minimum, multiple * round(value / multiple))


def size_for_aspect(engine: EngineSpec, aspect: float) -> tuple[int, int]:
    """The engine's output size (pixels) nearest to ``aspect`` (width / height, > 0).

    Fixed-size engines: the listed size nearest in log-aspect. Others: about the engine's
    default area at that aspect, each side a multiple of the rule's ``multiple`` (rounded
    down or up, whichever pair satisfies the rule's side and pixel limits and comes closest
    to ``aspect``).
    """
    rule = engine.dimensions
    if rule.kind == "fixed" and rule.sizes:
        return min(rule.sizes, key=lambda s: abs(math.log(s[0] / s[1]) - math.log(aspect)))
    area = engine.default_width * engine.default_height
    multiple = rule.multiple if rule.kind != "any" else 8
    minimum = rule.min_side if rule.kind != "any" else 8

    def sides(value: float) -> set[int]:
        low = max(minimum, multiple * math.floor(value / multiple))
        return {low, max(minimum, low + multiple)}

    candidates = [(w, h) for w in sides(math.sqrt(area * aspect)) for h in sides(math.sqrt(area / aspect))]

    def valid(size: tuple[int, int]) -> bool:
        try:
            check_dimensions(rule, *size)
        except InvalidRequest:
            return False
        return True

    def score(size: tuple[int, int]) -> tuple[float, float]:
        return abs(math.log(size[0] / size[1]) - math.log(aspect)), abs(size[0] * size[1] - area)

    fitting = [c for c in candidates if valid(c)] or candidates
    return min(fitting, key=score)


def aspect_size(engine: EngineSpec, ratio: str) -> tuple[int, int]:
    """(width, height) in pixels for a v2beta ``aspect_ratio`` on ``engine`` (module table).

    Raises ``InvalidRequest`` (``aspect_ratio``) for an unknown ratio.
    """
    aspect = parse_ratio(ratio)
    rule = engine.dimensions
    if rule.kind != "fixed" and (engine.default_width, engine.default_height) == (1024, 1024):
        size = ASPECT_SIZES_1MP[ratio]
        try:
            check_dimensions(rule, *size)
            return size
        except InvalidRequest:
            pass
    return size_for_aspect(engine, aspect)


def fit_image(engine: EngineSpec, data: bytes, *, param: str = "image") -> bytes:
    """Resize an input image to the engine's size nearest its aspect ratio, as PNG bytes.

    v2beta image-to-image takes any image with sides >= 64 while engines need sizes of their
    rule (SD 3.5: multiples of 64); the image is resized (Lanczos) to ``size_for_aspect`` and
    returned unchanged when it already has that size. Raises ``InvalidRequest`` (``param``)
    for an undecodable image.
    """
    from stableserve.core.images import decode_image

    img = decode_image(data, param=param)
    size = size_for_aspect(engine, img.width / img.height)
    if img.size == size:
        return data
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
    buf = io.BytesIO()
    img.resize(size, Image.Resampling.LANCZOS).save(buf, format="PNG")
    return buf.getvalue()


def scale_to_area(width: int, height: int, pixels: int) -> tuple[int, int]:
    """(w, h) with the aspect of ``width`` x ``height`` and about ``pixels`` pixels (each >= 1)."""
    factor = math.sqrt(pixels / (width * height))
    return max(1, round(width * factor)), max(1, round(height * factor))
