"""Reading REST v2beta multipart fields (CONTRACT.md §3.1: numbers arrive as form strings).

``V2Form`` wraps Starlette's ``FormData``; each getter validates one field against the
per-parameter table (``specs/stability-v2beta.params.json``) and raises ``InvalidRequest``
whose message starts with the field name (``"strength: must be between 0 and 1"``), as
Stability's ``bad_request`` errors do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from starlette.datastructures import FormData, UploadFile

from stableserve.core.images import image_size
from stableserve.errors import InvalidRequest

V2_SEED_MAX = 4_294_967_294
"""v2 ``seed`` maximum (one less than v1's, CONTRACT.md §3.1)."""
PROMPT_MAX = 10_000
"""Characters of ``prompt`` / ``negative_prompt``."""


def _fmt(value: float) -> str:
    """A bound as written in the contract: ``4294967294``, ``0.5``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class V2Form:
    """Typed, validated access to one v2beta multipart body."""

    def __init__(self, form: FormData):
        self.form = form

    def _raw(self, name: str) -> str | None:
        value = self.form.get(name)
        if value is None:
            return None
        if isinstance(value, UploadFile):
            raise InvalidRequest(f"{name}: must be a text field, not a file", param=name)
        return value

    def present(self, name: str) -> bool:
        """True when the field was sent (even empty)."""
        return name in self.form

    def text(self, name: str, *, required: bool = False, max_length: int = PROMPT_MAX) -> str | None:
        """A string field; ``None`` when absent or empty (then ``required`` raises)."""
        value = self._raw(name)
        if value is None or value == "":
            if required:
                raise InvalidRequest(f"{name}: is required", param=name)
            return None
        if len(value) > max_length:
            raise InvalidRequest(f"{name}: must be at most {max_length} characters", param=name)
        return value

    def number(
        self, name: str, lo: float, hi: float, default: float | None = None, *, required: bool = False
    ) -> float | None:
        """A number in ``lo..hi`` (inclusive) sent as a string; ``default`` when absent."""
        value = self._raw(name)
        if value is None or value.strip() == "":
            if required:
                raise InvalidRequest(f"{name}: is required", param=name)
            return default
        try:
            number = float(value)
        except ValueError:
            raise InvalidRequest(f"{name}: must be a number", param=name) from None
        if not math.isfinite(number) or not lo <= number <= hi:
            raise InvalidRequest(f"{name}: must be between {_fmt(lo)} and {_fmt(hi)}", param=name)
        return number

    def integer(self, name: str, lo: int, hi: int, default: int | None = None) -> int | None:
        """An integral number in ``lo..hi`` (``"42"`` and ``"42.0"`` both read as 42)."""
        number = self.number(name, lo, hi, None if default is None else float(default))
        if number is None:
            return None
        if number != int(number):
            raise InvalidRequest(f"{name}: must be an integer", param=name)
        return int(number)

    def seed(self) -> int:
        """``seed`` 0..4294967294, default 0 (= random)."""
        return self.integer("seed", 0, V2_SEED_MAX, 0) or 0

    def choice(self, name: str, options: Sequence[str], default: str | None = None) -> str | None:
        """One of ``options``; ``default`` when absent or empty."""
        value = self._raw(name)
        if value is None or value == "":
            return default
        if value not in options:
            raise InvalidRequest(f"{name}: must be one of {', '.join(options)}", param=name)
        return value

    async def file(self, name: str, *, required: bool = False) -> bytes | None:
        """The bytes of an uploaded file field; ``None`` when absent (``required`` raises)."""
        value = self.form.get(name)
        if value is None or (isinstance(value, str) and value == ""):
            if required:
                raise InvalidRequest(f"{name}: is required", param=name)
            return None
        if not isinstance(value, UploadFile):
            raise InvalidRequest(f"{name}: must be a file (image/png, image/jpeg or image/webp)", param=name)
        data = await value.read()
        if not data:
            if required:
                raise InvalidRequest(f"{name}: is required", param=name)
            return None
        return data


def check_image(
    data: bytes,
    name: str,
    *,
    min_side: int = 64,
    max_side: int | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    max_aspect: float | None = None,
) -> tuple[int, int]:
    """Validate an uploaded image's size against an endpoint's limits; returns (width, height).

    Limits in pixels; ``max_aspect`` bounds both width/height and height/width (2.5 means
    1:2.5..2.5:1). Raises ``InvalidRequest`` naming ``name``: undecodable or not
    PNG/JPEG/WEBP, a side out of range, a pixel count out of range, an aspect out of range.
    """
    w, h = image_size(data, param=name)
    if w < min_side or h < min_side or (max_side is not None and (w > max_side or h > max_side)):
        upper = f" and {max_side}" if max_side is not None else ""
        between = f"between {min_side}{upper}" if max_side is not None else f"at least {min_side}"
        raise InvalidRequest(f"{name}: width and height must be {between} pixels; got {w}x{h}", param=name)
    pixels = w * h
    if (min_pixels is not None and pixels < min_pixels) or (max_pixels is not None and pixels > max_pixels):
        raise InvalidRequest(
            f"{name}: the image has {pixels} pixels ({w}x{h}); it must have between "
            f"{min_pixels or 0} and {max_pixels if max_pixels is not None else 'any number of'} pixels",
            param=name,
        )
    if max_aspect is not None and max(w / h, h / w) > max_aspect:
        raise InvalidRequest(
            f"{name}: aspect ratio {w}:{h} must be between 1:{max_aspect:g} and {max_aspect:g}:1", param=name
        )
    return w, h
