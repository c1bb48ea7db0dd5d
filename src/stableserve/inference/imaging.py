"""Pixel-level helpers of the runner: masks from the three v1 mask sources, compositing, encoding.

Mask convention inside stableserve: a float array ``m`` of shape (H, W) in 0..1 where 1 means
"replace this pixel fully" and 0 "keep it exactly" (CONTRACT.md §2.4 ``mask_source``).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from stableserve.core.images import decode_image, has_alpha
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


def grow_mask(m: np.ndarray, px: int) -> np.ndarray:
    """``m`` (float32 (H, W) in 0..1) grown outward by ``px`` pixels (0..100) with a linear
    feather: a pixel at distance d <= px from the mask gets strength 1 - d / (px + 1) (at
    least its own value); pixels farther away stay 0, so they come back unchanged. ``px`` 0
    returns ``m``. Follows Stability's ``grow_mask`` ("grows the edges of the mask outward
    ... the expanded area is blurred"); distances from ``scipy.ndimage.distance_transform_edt``.
    """
    if px <= 0 or not (m > 0).any():
        return m
    from scipy.ndimage import distance_transform_edt

    distance = distance_transform_edt(m <= 0)  # 0 inside the mask, Euclidean px outside
    feather = np.clip(1.0 - distance / (px + 1), 0.0, 1.0).astype(np.float32)
    return np.maximum(m, np.where(distance <= px, feather, 0.0)).astype(np.float32)


def relight(img: Image.Image, direction: str, strength: float) -> Image.Image:
    """``img`` lit from ``direction`` (``left``, ``right``, ``above``, ``below``): a linear
    brightness ramp across the image from x(1 + strength / 2) on the lit side to
    x(1 - strength / 2) on the far side (``strength`` 0..1; 0 returns ``img``). RGB out."""
    if strength <= 0:
        return img
    w, h = img.size
    axis = np.linspace(1.0, -1.0, w if direction in ("left", "right") else h, dtype=np.float32)
    if direction in ("right", "below"):
        axis = axis[::-1]
    gain = 1.0 + axis * strength / 2.0
    gain = gain[None, :, None] if direction in ("left", "right") else gain[:, None, None]
    lit = np.asarray(to_rgb(img), dtype=np.float32) * gain
    return Image.fromarray(np.clip(np.rint(lit), 0, 255).astype(np.uint8), mode="RGB")


def fit(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``img`` resized (Lanczos) to ``size`` (width, height); ``img`` itself when it has it."""
    return img if img.size == tuple(size) else img.resize(tuple(size), Image.Resampling.LANCZOS)


def fit_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A binary L mask resized to ``size`` so that no masked pixel is lost: any output pixel
    touching the mask is white (255), the rest black."""
    if mask.size == tuple(size):
        return mask
    grey = np.asarray(mask.resize(tuple(size), Image.Resampling.BILINEAR))
    return Image.fromarray(np.where(grey > 0, 255, 0).astype(np.uint8), mode="L")


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
    (95), baseline, Pillow's default 4:2:0 chroma subsampling; alpha is dropped. WEBP: lossy
    (``lossless=False``), quality 95; RGBA when ``img`` has an alpha channel (``has_alpha``,
    e.g. a background removal; its alpha plane is stored losslessly), else RGB. JPEG and WEBP
    carry no metadata (no EXIF, ICC profile, XMP or comment, even if ``img.info`` holds
    some). Raises ``ValueError`` for an unknown format.
    """
    fmt = OutputFormat(fmt)
    if fmt == OutputFormat.PNG:
        return png_bytes(img)
    keep_alpha = fmt == OutputFormat.WEBP and has_alpha(img)
    clean = (img.convert("RGBA") if keep_alpha else to_rgb(img)).copy()
    clean.info = {}  # Pillow writes some keys of ``info`` (e.g. a JPEG comment) back out
    buf = io.BytesIO()
    if fmt == OutputFormat.JPEG:
        clean.save(buf, format="JPEG", quality=LOSSY_QUALITY, optimize=False, progressive=False)
    else:
        clean.save(buf, format="WEBP", lossless=False, quality=LOSSY_QUALITY, method=4, exact=False)
    return buf.getvalue()
