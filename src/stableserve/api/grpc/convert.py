"""gRPC (``gooseai``) messages <-> core: ``Request`` to ``GenerationRequest``, artifacts to
``Answer`` (CONTRACT.md §4.2, §4.4: what ``stability-sdk`` 0.8.6 sends and reads).

Mapping:
- text prompts keep their ``parameters.weight`` (default 1; negative = negative prompt);
  ``ARTIFACT_IMAGE`` prompts are the init image, ``ARTIFACT_MASK`` the mask (white pixels are
  replaced, black kept, grey a linear strength: the v1 ``MASK_IMAGE_WHITE`` convention).
- task: an upscaler engine (or ``transform.upscaler``) upscales the init image; a mask (or an
  init image on a masking-only engine, through its alpha) masks; an init image alone is
  image-to-image; otherwise text-to-image. With an init image ``height``/``width`` are
  ignored (the output keeps the init image's size), as in REST v1.
- ``ImageParameters``: ``seed[0]`` (sample i uses seed + i), ``samples``, ``steps``,
  ``transform.diffusion`` (the eleven samplers); the first ``StepParameter`` gives
  ``sampler.cfg_scale`` and ``schedule.start``/``end`` (init image strength).
- ``extras["$IPC"]["preset"]`` is the style preset.
- T2I adapters and CLIP guidance are not served: a T2I adapter other than NONE is
  INVALID_ARGUMENT; guidance parameters are accepted and ignored, as ``clip_guidance_preset``
  is in REST v1.
"""

from __future__ import annotations

import time
import uuid

from google.protobuf.json_format import MessageToDict

from stableserve.api.grpc.generated import generation_pb2 as pb
from stableserve.core.engines import EngineSpec
from stableserve.core.types import (
    Artifact,
    FinishReason,
    GenerationRequest,
    ImageInput,
    MaskSource,
    Sampler,
    Task,
    WeightedPrompt,
)
from stableserve.core.validation import MAX_PROMPT_CHARS
from stableserve.errors import InvalidRequest

SAMPLERS = {
    pb.SAMPLER_DDIM: Sampler.DDIM,
    pb.SAMPLER_DDPM: Sampler.DDPM,
    pb.SAMPLER_K_EULER: Sampler.K_EULER,
    pb.SAMPLER_K_EULER_ANCESTRAL: Sampler.K_EULER_ANCESTRAL,
    pb.SAMPLER_K_HEUN: Sampler.K_HEUN,
    pb.SAMPLER_K_DPM_2: Sampler.K_DPM_2,
    pb.SAMPLER_K_DPM_2_ANCESTRAL: Sampler.K_DPM_2_ANCESTRAL,
    pb.SAMPLER_K_LMS: Sampler.K_LMS,
    pb.SAMPLER_K_DPMPP_2S_ANCESTRAL: Sampler.K_DPMPP_2S_ANCESTRAL,
    pb.SAMPLER_K_DPMPP_2M: Sampler.K_DPMPP_2M,
    pb.SAMPLER_K_DPMPP_SDE: Sampler.K_DPMPP_SDE,
}
"""``DiffusionSampler`` -> ``Sampler`` (all eleven, CONTRACT.md §4.2)."""


def _style_preset(request: pb.Request) -> str | None:
    if not request.HasField("extras"):
        return None
    extras = MessageToDict(request.extras)
    ipc = extras.get("$IPC")
    preset = ipc.get("preset") if isinstance(ipc, dict) else None
    if preset is None or preset == "none":
        return None
    if not isinstance(preset, str):
        raise InvalidRequest('extras: "$IPC".preset must be a string', param="style_preset")
    return preset


def _prompts(request: pb.Request) -> tuple[list[WeightedPrompt], bytes | None, bytes | None]:
    prompts: list[WeightedPrompt] = []
    init = mask = None
    for i, prompt in enumerate(request.prompt):
        kind = prompt.WhichOneof("prompt")
        if kind == "text":
            weight = prompt.parameters.weight if prompt.parameters.HasField("weight") else 1.0
            if not prompt.text.strip():
                raise InvalidRequest(f"prompt[{i}]: text prompts may not be blank", param="prompts")
            if len(prompt.text) > MAX_PROMPT_CHARS:
                raise InvalidRequest(
                    f"prompt[{i}]: text prompts may be at most {MAX_PROMPT_CHARS} characters", param="prompts"
                )
            prompts.append(WeightedPrompt(text=prompt.text, weight=weight))
        elif kind == "artifact":
            art = prompt.artifact
            if art.type == pb.ARTIFACT_IMAGE:
                init = art.binary
            elif art.type == pb.ARTIFACT_MASK:
                mask = art.binary
            else:
                name = pb.ArtifactType.Name(art.type)
                raise InvalidRequest(f"prompt[{i}]: artifact prompts of type {name} are not supported")
        else:
            raise InvalidRequest(f"prompt[{i}]: only text and artifact prompts are served", param="prompts")
    return prompts, init, mask


def to_generation_request(request: pb.Request, engine: EngineSpec) -> GenerationRequest:
    """The core request for a ``gooseai.Request`` on ``engine`` (see the module docstring).

    Raises ``InvalidRequest`` for what the wire allows but this server does not serve
    (other params than ``image``, tokens prompts, T2I adapters) and for out-of-range values.
    """
    if request.WhichOneof("params") not in (None, "image"):
        raise InvalidRequest(f"{request.WhichOneof('params')}: only image generation requests are served")
    params = request.image
    prompts, init, mask = _prompts(request)
    if params.HasField("adapter") and params.adapter.adapter_type != pb.T2IADAPTER_NONE:
        raise InvalidRequest("adapter: T2I adapters are not served; use a ControlNet engine", param="adapter")
    step = params.parameters[0] if params.parameters else pb.StepParameter()
    upscale = engine.tasks == (Task.UPSCALE,) or (
        params.HasField("transform") and params.transform.WhichOneof("type") == "upscaler"
    )
    fields: dict = {
        "engine_id": engine.id,
        "prompts": tuple(prompts),
        "seed": params.seed[0] if params.seed else 0,
        "samples": params.samples if params.HasField("samples") and params.samples else 1,
        "style_preset": _style_preset(request),
    }
    if params.HasField("steps") and params.steps:
        fields["steps"] = params.steps
    if step.HasField("sampler") and step.sampler.HasField("cfg_scale"):
        fields["cfg_scale"] = step.sampler.cfg_scale
    if params.HasField("transform") and params.transform.WhichOneof("type") == "diffusion":
        fields["sampler"] = SAMPLERS.get(params.transform.diffusion)
    if init is not None:
        fields["init_image"] = ImageInput(data=init)
        if step.HasField("schedule") and step.schedule.HasField("start"):
            fields["schedule_start"] = step.schedule.start
        if step.HasField("schedule") and step.schedule.HasField("end") and step.schedule.end > 0:
            fields["schedule_end"] = step.schedule.end
    if upscale:
        fields.update(task=Task.UPSCALE, init_image=fields.get("init_image"))
        fields.pop("schedule_start", None)
        fields.pop("schedule_end", None)
        if params.HasField("width") and params.width:
            fields["width"] = params.width
        elif params.HasField("height") and params.height:
            fields["height"] = params.height
    elif mask is not None or (init is not None and engine.tasks == (Task.MASKING,)):
        fields["task"] = Task.MASKING
        fields["mask_image"] = None if mask is None else ImageInput(data=mask)
        fields["mask_source"] = MaskSource.INIT_IMAGE_ALPHA if mask is None else MaskSource.MASK_IMAGE_WHITE
    elif init is not None:
        fields["task"] = Task.IMAGE_TO_IMAGE
    else:
        fields["task"] = Task.TEXT_TO_IMAGE
        if params.HasField("width") and params.width:
            fields["width"] = params.width
        if params.HasField("height") and params.height:
            fields["height"] = params.height
    start, end = fields.get("schedule_start"), fields.get("schedule_end")
    if start is not None and end is not None and end >= start:
        fields.pop("schedule_end")
    try:
        return GenerationRequest(**fields)
    except ValueError as exc:  # pydantic ValidationError: a value out of range
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        field = ".".join(str(p) for p in first["loc"]) or "request"
        raise InvalidRequest(f"{field}: {first['msg']}", param=field) from None


def now_ms() -> int:
    """Milliseconds since the epoch (``Answer.received`` / ``created``)."""
    return int(time.time() * 1000)


def answer(request_id: str, engine_id: str, artifact: Artifact, received_ms: int) -> pb.Answer:
    """One ``Answer`` carrying one image ``Artifact``: ``type=ARTIFACT_IMAGE``, ``mime`` (PNG),
    ``binary``, ``index``, ``seed``, ``finish_reason`` (NULL on success, FILTER when filtered),
    ``uuid``, ``size`` (bytes); the request id echoed."""
    reason = pb.FILTER if artifact.finish_reason == FinishReason.CONTENT_FILTERED else pb.NULL
    return pb.Answer(
        answer_id=str(uuid.uuid4()),
        request_id=request_id,
        received=received_ms,
        created=now_ms(),
        meta=pb.AnswerMeta(engine_id=engine_id),
        artifacts=[
            pb.Artifact(
                id=artifact.index,
                type=pb.ARTIFACT_IMAGE,
                mime=artifact.mime,
                binary=artifact.data,
                index=artifact.index,
                finish_reason=reason,
                seed=artifact.seed,
                uuid=str(uuid.uuid4()),
                size=len(artifact.data),
            )
        ],
    )


def moderated_answer(request_id: str, engine_id: str, text: str) -> pb.Answer:
    """The answer to a request whose prompt content moderation refused (nothing was charged):
    one ``Artifact{type=ARTIFACT_TEXT, mime="text/plain", text, finish_reason=FILTER}``, on
    which stability-sdk's ``api.Context`` raises ``ClassifierException(prompt=text)``.
    ``text``: the refused prompt."""
    now = now_ms()
    return pb.Answer(
        answer_id=str(uuid.uuid4()),
        request_id=request_id,
        received=now,
        created=now,
        meta=pb.AnswerMeta(engine_id=engine_id),
        artifacts=[
            pb.Artifact(
                id=0,
                type=pb.ARTIFACT_TEXT,
                mime="text/plain",
                text=text,
                index=0,
                finish_reason=pb.FILTER,
                uuid=str(uuid.uuid4()),
            )
        ],
    )
