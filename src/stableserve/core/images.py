"""Decoding uploaded images safely (Pillow; no torch).

Only PNG, JPEG and WEBP are accepted; decoding is capped at ``MAX_DECODE_PIXELS`` so a
decompression bomb is a clean ``InvalidRequest`` rather than an out-of-memory.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from stableserve.errors import InvalidRequest

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_DECODE_PIXELS = 16_777_216
"""Largest image decoded (4096 x 4096 pixels)."""


def decode_image(data: bytes, *, param: str = "init_image") -> Image.Image:
    """Decode PNG/JPEG/WEBP bytes into a loaded ``PIL.Image`` (mode as stored).

    Raises ``InvalidRequest`` with code ``invalid_mime_type`` for anything that is not one of
    those formats or cannot be decoded, and ``invalid_pixel_count`` above ``MAX_DECODE_PIXELS``.
    """
    if not data:
        raise InvalidRequest(f"{param}: is required", code="bad_request", param=param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
            w, h = img.size
            if w * h > MAX_DECODE_PIXELS:
                raise InvalidRequest(
                    f"{param}: {w}x{h} is larger than {MAX_DECODE_PIXELS} pixels",
                    code="invalid_pixel_count",
                    param=param,
                )
            img.load()
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest(
            f"{param}: image is too large to decode", code="invalid_pixel_count", param=param
        ) from None
    except Exception:
        raise InvalidRequest(
            f"{param}: must be a PNG, JPEG or WEBP image", code="invalid_mime_type", param=param
        ) from None
    return img


def image_size(data: bytes, *, param: str = "init_image") -> tuple[int, int]:
    """(width, height) in pixels of encoded image bytes; same errors as ``decode_image``."""
    return decode_image(data, param=param).size


def has_alpha(img: Image.Image) -> bool:
    """True when the image carries an alpha channel (RGBA, LA, PA or a transparent palette)."""
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
