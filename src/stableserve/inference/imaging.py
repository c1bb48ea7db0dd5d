"""Pixel-level helpers of the runner: masks from the three v1 mask sources, compositing, encoding.

Mask convention inside stableserve: a float array ``m`` of shape (H, W) in 0..1 where 1 means
"replace this pixel fully" and 0 "keep it exactly" (CONTRACT.md §2.4 ``mask_source``).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from stableserve.core.images import decode_image
from stableserve.core.types import GenerationRequest, MaskSource, OutputFormat

LOSSY_QUALITY = 95
"""Quality (Pillow's 1..100 scale) of the lossy JPEG and WEBP encodings."""


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of ``img`` (alpha dropped, palette expanded)."""
    return img if img.mode == "RGB" else img.convert("RGBA").convert("RGB")


def replace_mask(request: GenerationRequest, init: Image.Image) -> np.ndarray:
    """The strength of replacement per pixel, float32 (H, W) in 0..1, from ``request.mask_source``.

    MASK_IMAGE_WHITE: m = L/255; MASK_IMAGE_BLACK: m = 1 - L/255; INIT_IMAGE_ALPHA:
    m = 1 - A/255 of the init image. Grey values are linear strengths.
    """
    if request.mask_source == MaskSource.INIT_IMAGE_ALPHA:
        alpha = np.asarray(init.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
        return 1.0 - alpha
    assert request.mask_image is not None
    lum = (
        np.asarray(decode_image(request.mask_image.data, param="mask_image").convert("L"), dtype=np.float32)
        / 255.0
    )
    return lum if request.mask_source == MaskSource.MASK_IMAGE_WHITE else 1.0 - lum


def pipeline_mask(m: np.ndarray) -> Image.Image:
    """Binary L image for a diffusers inpainting pipeline: white (255) wherever m > 0."""
    return Image.fromarray(np.where(m > 0, 255, 0).astype(np.uint8), mode="L")


def composite(init: Image.Image, generated: Image.Image, m: np.ndarray) -> Image.Image:
    """init * (1 - m) + generated * m per pixel (RGB, uint8, rounded).

    Where m == 0 the init image's pixels come back exactly; ``generated`` is resized to the
    init size first if a pipeline returned another size.
    """
    base = np.asarray(to_rgb(init), dtype=np.float32)
    gen_img = to_rgb(generated)
    if gen_img.size != init.size:
        gen_img = gen_img.resize(init.size, Image.Resampling.LANCZOS)
    gen = np.asarray(gen_img, dtype=np.float32)
    w = m[..., None]
    out = np.where(w > 0, np.clip(np.rint(base * (1.0 - w) + gen * w), 0, 255), base)
    return Image.fromarray(out.astype(np.uint8), mode="RGB")


def png_bytes(img: Image.Image) -> bytes:
    """Deterministic PNG encoding (no timestamps or metadata): same pixels, same bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def encode_image(img: Image.Image, fmt: OutputFormat | str = OutputFormat.PNG) -> bytes:
    """Encode ``img`` as ``fmt`` (``png``, ``jpeg`` or ``webp``): same pixels, same bytes.

    PNG: ``png_bytes`` (the image's own mode, lossless). JPEG: RGB, quality ``LOSSY_QUALITY``
    (95), baseline, Pillow's default 4:2:0 chroma subsampling. WEBP: RGB, lossy
    (``lossless=False``), quality 95. JPEG and WEBP carry no metadata (no EXIF, ICC profile,
    XMP or comment, even if ``img.info`` holds some) and alpha is dropped. Raises
    ``ValueError`` for an unknown format.
    """
    fmt = OutputFormat(fmt)
    if fmt == OutputFormat.PNG:
        return png_bytes(img)
    clean = to_rgb(img).copy()
    clean.info = {}  # Pillow writes some keys of ``info`` (e.g. a JPEG comment) back out
    buf = io.BytesIO()
    if fmt == OutputFormat.JPEG:
        clean.save(buf, format="JPEG", quality=LOSSY_QUALITY, optimize=False, progressive=False)
    else:
        clean.save(buf, format="WEBP", lossless=False, quality=LOSSY_QUALITY, method=4, exact=False)
    return buf.getvalue()
