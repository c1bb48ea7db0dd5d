"""Image preparation for the edit endpoints (Pillow and numpy only; no torch): masks resized
to their image, outpainting canvases, and the light direction of a reference image.

CONTRACT.md §3.3 (erase / inpaint / outpaint / replace-background-and-relight).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from stableserve.core.images import MAX_DECODE_PIXELS, decode_image
from stableserve.errors import InvalidRequest


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def mask_for(mask: bytes, size: tuple[int, int], *, param: str = "mask") -> bytes:
    """A mask image as an L PNG of ``size`` (width, height): black keeps, white replaces,
    grey in between; resized (bilinear) when its size differs (v2beta masks are "resized to
    the image size"). Raises ``InvalidRequest`` (``param``) for an undecodable image."""
    img = decode_image(mask, param=param)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        flat = Image.new("RGBA", img.size, (0, 0, 0, 255))  # transparent mask pixels = keep
        img = Image.alpha_composite(flat, img)
    lum = img.convert("L")
    if lum.size != tuple(size):
        lum = lum.resize(tuple(size), Image.Resampling.BILINEAR)
    return _png(lum)


def outpaint_canvas(image: bytes, left: int, right: int, up: int, down: int) -> tuple[bytes, bytes]:
    """The enlarged canvas and its mask for outpainting ``image`` by ``left``/``right``/``up``/
    ``down`` pixels (each >= 0).

    Returns (canvas PNG, mask PNG): the canvas has the image at (left, up) and its edge
    pixels stretched into the new area (a start the inpainting model repaints); the mask is
    white on the new area and black on the original pixels, which therefore come back
    unchanged. Raises ``InvalidRequest`` naming ``right`` when the canvas would exceed
    ``MAX_DECODE_PIXELS``.
    """
    img = decode_image(image, param="image").convert("RGB")
    w, h = img.size
    cw, ch = w + left + right, h + up + down
    if cw * ch > MAX_DECODE_PIXELS:
        raise InvalidRequest(
            f"right: the outpainted image would be {cw}x{ch} = {cw * ch} pixels; at most "
            f"{MAX_DECODE_PIXELS} are allowed",
            param="right",
        )
    pixels = np.pad(np.asarray(img), ((up, down), (left, right), (0, 0)), mode="edge")
    mask = np.full((ch, cw), 255, np.uint8)
    mask[up : up + h, left : left + w] = 0
    return _png(Image.fromarray(pixels, mode="RGB")), _png(Image.fromarray(mask, mode="L"))


def light_direction(reference: bytes, *, param: str = "light_reference") -> str:
    """Where the light comes from in a reference image: ``left``, ``right``, ``above`` or
    ``below``, whichever half is brightest (mean luminance)."""
    lum = np.asarray(decode_image(reference, param=param).convert("L"), dtype=np.float32)
    h, w = lum.shape
    halves = {
        "left": lum[:, : w // 2].mean(),
        "right": lum[:, w - w // 2 :].mean(),
        "above": lum[: h // 2].mean(),
        "below": lum[h - h // 2 :].mean(),
    }
    return max(halves, key=lambda k: halves[k])
