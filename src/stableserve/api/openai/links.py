"""Signed, expiring links to stored artifacts (``response_format=url``).

A link is ``{base}/v1/images/files/{job_id}/{index}?expires={unix s}&signature={hex}`` where
the signature is HMAC-SHA256 over ``"{job_id}/{index}/{expires}"`` with a key derived from
the server secret. It needs no API key; an expired or altered link is refused without
saying which part was wrong. Artifacts stay in the ArtifactStore for
``settings.results.retention_s`` (24 h), longer than a link lives (``openai.url_ttl_s``, 1 h).
"""

from __future__ import annotations

import hashlib
import hmac
import time

_CONTEXT = b"stableserve image link v1"


def _key(secret: bytes) -> bytes:
    return hmac.new(secret, _CONTEXT, hashlib.sha256).digest()


def signature(secret: bytes, job_id: str, index: int, expires: int) -> str:
    """Hex HMAC-SHA256 of one link's ``job_id``, artifact ``index`` and ``expires`` (unix s)."""
    message = f"{job_id}/{index}/{expires}".encode()
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def signed_path(secret: bytes, job_id: str, index: int, ttl_s: float, now: float | None = None) -> str:
    """The path and query of a link to artifact ``index`` of ``job_id`` valid ``ttl_s`` seconds."""
    expires = int((now if now is not None else time.time()) + ttl_s)
    sig = signature(secret, job_id, index, expires)
    return f"/v1/images/files/{job_id}/{index}?expires={expires}&signature={sig}"


def verify(secret: bytes, job_id: str, index: int, expires: int, sig: str, now: float | None = None) -> bool:
    """True when ``sig`` signs these values (constant-time compare) and ``expires`` is ahead."""
    if expires < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(signature(secret, job_id, index, expires), sig)
