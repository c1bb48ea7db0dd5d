"""What the OpenAPI document says of the OpenAI routes: request bodies (the routes read them by
hand, so FastAPI cannot infer them), the ``ImagesResponse`` and OpenAI's error body.

Shapes follow OpenAI's Images API reference (``ImagesResponse``, ``Image``, the ``error``
object); ``usage`` carries stableserve's figures (see ``images``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from stableserve.api.openai.convert import Extensions, GenerateBody
from stableserve.api.openapi_doc import inline_schema


class ImageData(BaseModel):
    """One generated image: a signed ``url`` or the ``b64_json`` bytes."""

    url: str | None = None
    b64_json: str | None = None


class ImagesResponse(BaseModel):
    """``{"created": <unix s>, "data": [...], "usage": {...}}``."""

    created: int
    data: list[ImageData]
    usage: dict[str, Any] = Field(default_factory=dict)


class ErrorDetail(BaseModel):
    """OpenAI's error object: ``message``, ``type``, ``param`` (or null), ``code`` (or null)."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """``{"error": {...}}``."""

    error: ErrorDetail


ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422, 429, 500, 503)}
"""Every status an OpenAI route may answer with besides 200 (402 is sent as OpenAI's 429)."""

IMAGES_200 = {200: {"model": ImagesResponse, "description": "The generated images."}}


def _form_fields() -> dict[str, Any]:
    props = dict(inline_schema(Extensions).get("properties", {}))
    props.update(
        {
            "model": {"type": "string"},
            "n": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
            "size": {"type": "string"},
            "response_format": {"type": "string", "enum": ["url", "b64_json"], "default": "url"},
            "user": {"type": "string"},
        }
    )
    return props


def multipart_body(*, prompt: bool, mask: bool) -> dict[str, Any]:
    """``openapi_extra`` for the multipart routes: ``image`` (required), ``mask``, ``prompt``
    (required when ``prompt``) and the form fields."""
    props = _form_fields()
    props["image"] = {"type": "string", "format": "binary"}
    required = ["image"]
    if mask:
        props["mask"] = {"type": "string", "format": "binary"}
        props["output_format"] = {"type": "string", "enum": ["png", "jpeg", "webp"], "default": "png"}
    if prompt:
        props["prompt"] = {"type": "string", "minLength": 1, "maxLength": 10_000}
        required.append("prompt")
    body = {"type": "object", "properties": props, "required": required}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body}}}}


def json_body() -> dict[str, Any]:
    """``openapi_extra`` for ``/images/generations``: the ``GenerateBody`` JSON schema."""
    schema = inline_schema(GenerateBody)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
