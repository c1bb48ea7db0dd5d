"""Helpers for the OpenAPI document of routes that read their bodies by hand.

pydantic puts nested definitions under ``$defs`` and refers to them as ``#/$defs/Name``; in an
OpenAPI document a ``$ref`` resolves from the document's root, where no ``$defs`` exists, so
such a schema cannot be followed by clients or fuzzers (schemathesis skipped those bodies).
``inline_schema`` gives the schema with the definitions written in place.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with every ``#/$defs/...`` reference replaced by its definition
    (an OpenAPI document resolves ``$ref`` from its root, where pydantic's ``$defs`` are not)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(
                    {**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}}
                )
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose required JSON body is ``model`` (inlined, see
    ``inline_schema``), for routes that read their body themselves."""
    content = {"application/json": {"schema": inline_schema(model)}}
    return {"requestBody": {"required": True, "content": content}}
