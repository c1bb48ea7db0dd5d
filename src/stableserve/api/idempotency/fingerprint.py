"""Who is asking (``scope_hash``) and what they ask (``fingerprint``) for idempotency keys.

Both are 64 lowercase hex characters. The fingerprint covers what decides the response:
method, path, query string, media type, ``Accept`` and the body, where the body is read
the way the server reads it, so that two sends of one logical request agree:

- ``multipart/form-data``: the parts in order, each by its headers (name, filename, content
  type) and content. The boundary is left out: clients (``requests``, ``httpx``) draw a new
  random boundary on every send.
- JSON media types: the parsed document with sorted keys (key order and spacing differ
  between serializers); raw bytes when it does not parse.
- anything else: the raw bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers

from stableserve.api.deps import bearer_or_raw
from stableserve.errors import Unauthorized


def scope_hash(secret: bytes, headers: Headers) -> str:
    """Hex HMAC-SHA256 (keyed with the server secret) of the caller: the API key of the
    ``Authorization`` header (``Bearer <k>`` and ``<k>`` alike; empty when missing) and the
    ``Organization`` header. Two API keys, or one key acting for two organizations, never
    share an idempotency key; the key itself is not stored."""
    try:
        key = bearer_or_raw(headers.get("authorization"))
    except Unauthorized:
        key = ""
    org = headers.get("organization") or ""
    return hmac.new(secret, f"{key}\n{org}".encode(), hashlib.sha256).hexdigest()


def fingerprint(method: str, path: str, query: bytes, headers: Headers, body: bytes) -> str:
    """Hex SHA-256 identifying the request (see the module docstring); never raises."""
    media_type, options = parse_options_header(headers.get("content-type", ""))
    media = media_type.decode("latin-1").lower()
    digest = hashlib.sha256()
    for field in (
        method.upper().encode(),
        path.encode(),
        query,
        media.encode(),
        headers.get("accept", "").encode("latin-1"),
        _body_digest(media, options.get(b"boundary"), body),
    ):
        digest.update(len(field).to_bytes(8, "big") + field)
    return digest.hexdigest()


def _body_digest(media: str, boundary: bytes | None, body: bytes) -> bytes:
    if media == "multipart/form-data" and boundary:
        parts = _multipart_digest(boundary, body)
        if parts is not None:
            return b"multipart:" + parts
    if media.endswith("json") or media.endswith("+json"):
        try:
            canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
            return b"json:" + hashlib.sha256(canonical.encode()).digest()
        except (ValueError, RecursionError):
            pass
    return b"raw:" + hashlib.sha256(body).digest()


def _multipart_digest(boundary: bytes, body: bytes) -> bytes | None:
    """SHA-256 over the parts (headers and content, in order), or ``None`` when the body is
    not a well-formed multipart body (the raw bytes are used then)."""
    digest = hashlib.sha256()
    part: dict = {}
    count = 0

    def on_part_begin() -> None:
        part.update(headers=[], field=b"", value=b"", content=hashlib.sha256())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part["value"] += data[start:end]

    def on_header_end() -> None:
        part["headers"].append((part["field"].lower(), part["value"]))
        part["field"], part["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part["content"].update(data[start:end])

    def on_part_end() -> None:
        nonlocal count
        count += 1
        for name, value in part["headers"]:
            digest.update(b"h" + len(name).to_bytes(8, "big") + name + len(value).to_bytes(8, "big") + value)
        digest.update(b"c" + part["content"].digest())

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except Exception:  # noqa: BLE001 - any parse failure: fall back to the raw bytes
        return None
    return digest.digest() if count else None
