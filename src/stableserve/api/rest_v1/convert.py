"""REST v1 wire <-> core: form parsing, ``GenerationRequest`` building, response rendering.

Multipart ``text_prompts[<i>][text]`` / ``text_prompts[<i>][weight]`` may use sparse indices
(ordered by index; a repeated index overrides the earlier entry), as the v1 spec's
``TextPrompts`` says. v1alpha sends everything but the files as one ``options`` JSON field.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from fastapi import Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from stableserve.api.rest_v1.schemas import (
    GenerationResponse,
    Image,
    ImageToImageOptions,
    MaskingOptions,
    TextToImageRequestBody,
    UpscaleOptions,
)
from stableserve.core.types import (
    Artifact,
    GenerationRequest,
    ImageInput,
    MaskSource,
    Task,
    WeightedPrompt,
)
from stableserve.errors import InvalidRequest

_PROMPT_FIELD = re.compile(r"^text_prompts\[(\d+)\]\[(text|weight)\]$")
_SIZE_FIELDS = {"height", "width"}


def invalid_from_validation(exc: ValidationError) -> InvalidRequest:
    """The first pydantic error as a v1 400: ``"<field>: <message>"``.

    Sizes that are not multiples of 64 or below 128 give ``invalid_height_or_width``;
    everything else ``bad_request``.
    """
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if p != "body"]
    field = ".".join(loc) or "body"
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "is required"
    elif (
        err["type"] in ("none_required", "int_type", "float_type", "string_type") and err.get("input") is None
    ):
        msg = "must not be null"
    code = (
        "invalid_height_or_width"
        if loc and loc[0] in _SIZE_FIELDS and err["type"] != "missing"
        else "bad_request"
    )
    return InvalidRequest(f"{field}: {msg}", code=code, param=loc[0] if loc else None)


def parse_model(model: type[BaseModel], data: Any) -> Any:
    """Validate wire data into ``model``; raises ``InvalidRequest`` (see ``invalid_from_validation``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def form_fields(form: FormData) -> dict[str, Any]:
    """Plain (non-file) form fields as a dict, ``text_prompts[i][...]`` gathered into a list.

    Empty strings are treated as absent. Raises ``InvalidRequest`` for a malformed prompt index.
    """
    data: dict[str, Any] = {}
    prompts: dict[int, dict[str, str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            continue
        m = _PROMPT_FIELD.match(key)
        if m:
            prompts.setdefault(int(m.group(1)), {})[m.group(2)] = value
        elif key.startswith("text_prompts"):
            raise InvalidRequest(f"{key}: expected text_prompts[<index>][text|weight]", param="text_prompts")
        elif value != "":
            data[key] = value
    if prompts:
        data["text_prompts"] = [prompts[i] for i in sorted(prompts)]
    if isinstance(data.get("extras"), str):
        try:
            data["extras"] = json.loads(data["extras"])
        except ValueError:
            raise InvalidRequest("extras: must be a JSON object", param="extras") from None
    return data


def alpha_options(form: FormData) -> dict[str, Any]:
    """v1alpha: the ``options`` form field, a JSON object; raises ``InvalidRequest`` otherwise."""
    raw = form.get("options")
    if raw is None or isinstance(raw, UploadFile):
        raise InvalidRequest("options: is required", param="options")
    try:
        options = json.loads(raw)
    except ValueError:
        raise InvalidRequest("options: must be a JSON object", param="options") from None
    if not isinstance(options, dict):
        raise InvalidRequest("options: must be a JSON object", param="options")
    return options


async def read_file(form: FormData, name: str, *, required: bool = True) -> ImageInput | None:
    """The uploaded file ``name`` as ``ImageInput``; ``bad_request`` "<name>: is required" when missing."""
    value = form.get(name)
    if value is None or value == "":
        if required:
            raise InvalidRequest(f"{name}: is required", param=name)
        return None
    if not isinstance(value, UploadFile):
        raise InvalidRequest(f"{name}: must be a file", param=name)
    data = await value.read()
    if not data:
        raise InvalidRequest(f"{name}: is required", param=name)
    return ImageInput(data=data)


def _prompts(items) -> tuple[WeightedPrompt, ...]:
    return tuple(WeightedPrompt(text=p.text, weight=p.weight) for p in items)


def _common(body) -> dict[str, Any]:
    return dict(
        cfg_scale=body.cfg_scale,
        sampler=body.sampler,
        seed=body.seed,
        samples=body.samples,
        steps=body.steps,
        style_preset=body.style_preset,
        extras=body.extras,
        prompts=_prompts(body.text_prompts),
    )


def text_to_image(engine_id: str, body: TextToImageRequestBody) -> GenerationRequest:
    """``GenerationRequest`` for a text-to-image body."""
    return _build(engine_id, Task.TEXT_TO_IMAGE, width=body.width, height=body.height, **_common(body))


def image_to_image(engine_id: str, body: ImageToImageOptions, init: ImageInput) -> GenerationRequest:
    """IMAGE_STRENGTH: start = 1 - image_strength; STEP_SCHEDULE: start/end as given (start default 0.65)."""
    if body.init_image_mode == "STEP_SCHEDULE" or body.step_schedule_start is not None:
        start = 0.65 if body.step_schedule_start is None else body.step_schedule_start
        end = body.step_schedule_end
    else:
        start, end = 1.0 - body.image_strength, None
    if end is not None and end >= start:
        raise InvalidRequest(
            "step_schedule_end: must be smaller than step_schedule_start", param="step_schedule_end"
        )
    return _build(
        engine_id,
        Task.IMAGE_TO_IMAGE,
        init_image=init,
        schedule_start=start,
        schedule_end=end,
        **_common(body),
    )


def masking(
    engine_id: str, body: MaskingOptions, init: ImageInput, mask: ImageInput | None
) -> GenerationRequest:
    """Masking request; the mask rules (required mask, same size) are checked by ``core.validation``."""
    return _build(
        engine_id,
        Task.MASKING,
        init_image=init,
        mask_image=mask,
        mask_source=MaskSource(body.mask_source),
        **_common(body),
    )


def upscale(engine_id: str, body: UpscaleOptions, image: ImageInput) -> GenerationRequest:
    """Upscale request: ``width`` or ``height`` (not both: ``core.validation`` says so)."""
    return _build(
        engine_id,
        Task.UPSCALE,
        init_image=image,
        width=body.width,
        height=body.height,
        prompts=_prompts(body.text_prompts),
        seed=body.seed,
        steps=body.steps,
        cfg_scale=body.cfg_scale,
    )


def _build(engine_id: str, task: Task, **fields: Any) -> GenerationRequest:
    try:
        return GenerationRequest(engine_id=engine_id, task=task, **fields)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def wants_png(accept: str | None) -> bool:
    """``Accept: image/png`` selects the PNG response; anything else (blank, ``*/*``) is JSON."""
    return bool(accept) and accept.split(",")[0].split(";")[0].strip().lower() == "image/png"


def render(artifacts: list[Artifact], *, png: bool, bare_array: bool = False) -> Response:
    """The 200 response: PNG bytes with ``Finish-Reason`` and ``Seed`` headers, or JSON
    ``{"artifacts": [...]}`` (``bare_array``: the v1alpha list form)."""
    if png:
        art = artifacts[0]
        return Response(
            art.data,
            media_type="image/png",
            headers={"Finish-Reason": art.finish_reason.value, "Seed": str(art.seed)},
        )
    images = [
        Image(base64=base64.b64encode(a.data).decode(), seed=a.seed, finishReason=a.finish_reason.value)
        for a in artifacts
    ]
    if bare_array:
        body = "[" + ",".join(i.model_dump_json() for i in images) + "]"
    else:
        body = GenerationResponse(artifacts=images).model_dump_json()
    return Response(body, media_type="application/json")
