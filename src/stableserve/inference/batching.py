"""Micro-batching: several compatible text-to-image requests in one diffusers pipeline call.

``batch_key`` says which requests may share a call: same engine, text-to-image, size, steps,
sampler and guidance scale (and seed, for the one sampler whose noise is seeded from the
request rather than the generators), no control or style image, an engine without ControlNet
or IP-Adapter, of a family the runner drives with a plain diffusers pipeline. Prompts, negative
prompts, style presets, seeds, sample counts, output formats, relighting and the image safety
check stay per request.

``run_batch`` encodes each request's prompts on its own, concatenates the embeddings (one row
per sample) and runs the pipeline on chunks of at most ``settings.runner.max_batch`` samples,
each sample with its own ``torch.Generator`` seeded ``seed + i`` as ``Runner.run`` does. The
initial noise is therefore the same as when the request runs alone; the pixels agree up to
floating-point differences of batched kernels (about one level of 255 at most on CPU).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from stableserve.core.engines import FLOW_MATCHING_FAMILIES, EngineSpec, Family
from stableserve.core.presets import apply_style_preset
from stableserve.core.types import Artifact, GenerationRequest, Task
from stableserve.errors import GenerationFailed, StableServeError
from stableserve.inference.imaging import relight
from stableserve.inference.prompts import encode_prompts
from stableserve.inference.runner import (
    Runner,
    _StepHook,
    _task_pipeline_class,
    _task_view,
    sample_seeds,
    vae_tiling,
)
from stableserve.inference.samplers import DIFFUSION_SAMPLERS, FLOW_SAMPLERS, make_noise_scheduler

BATCHABLE_FAMILIES = frozenset(
    {Family.SD1, Family.SD2_512, Family.SD2_768, Family.SDXL, Family.SDXL_BETA, Family.SD3}
)
"""Families whose text-to-image pipeline takes batched prompt embeddings."""

Progress = Callable[[int, int], None]


def batch_key(engine: EngineSpec, request: GenerationRequest) -> tuple | None:
    """A hashable key: requests with equal keys can run in one pipeline call; ``None`` = this
    request runs alone (another task, a control or style image, an unresolved request, ...)."""
    if (
        request.task != Task.TEXT_TO_IMAGE
        or engine.family not in BATCHABLE_FAMILIES
        or engine.ip_adapter is not None
        or engine.controlnet is not None
        or request.engine_id != engine.id
        or request.control_image is not None
        or request.style_image is not None
        or None in (request.width, request.height, request.steps, request.sampler)
    ):
        return None
    table = FLOW_SAMPLERS if engine.family in FLOW_MATCHING_FAMILIES else DIFFUSION_SAMPLERS
    spec = table.get(request.sampler)
    if spec is None:
        return None  # the runner raises the proper invalid_sampler error on its own
    seeded = request.seed if spec.seeded else None
    return (
        engine.id,
        request.width,
        request.height,
        request.steps,
        request.sampler,
        request.cfg_scale,
        seeded,
    )


def _shape(cond: dict[str, torch.Tensor]) -> tuple:
    return tuple((k, tuple(v.shape)) for k, v in sorted(cond.items()))


def _chunks(
    items: list[tuple[int, int]], conds: list[dict[str, torch.Tensor]], size: int
) -> list[list[tuple[int, int]]]:
    """``(request index, seed)`` items cut into calls of at most ``size`` samples whose prompt
    embeddings have equal shapes (a long prompt has more tokens)."""
    chunks: list[list[tuple[int, int]]] = []
    for item in items:
        last = chunks[-1] if chunks else None
        if last is None or len(last) >= size or _shape(conds[last[0][0]]) != _shape(conds[item[0]]):
            chunks.append([item])
        else:
            last.append(item)
    return chunks


def run_batch(
    runner: Runner,
    requests: Sequence[GenerationRequest],
    *,
    progress: Progress | None = None,
    cancel: threading.Event | Any | None = None,
) -> tuple[list[list[Artifact]], int]:
    """Run resolved requests that share one ``batch_key`` together.

    Returns the artifacts of each request (as ``Runner.run`` would, ``index`` 0.. and ``seed``
    per sample, in ``request.output_format``) and the number of pipeline calls made.
    ``progress(done, total)`` counts denoising steps over all calls; ``cancel`` (anything with
    ``is_set()``) is checked between steps and raises ``GenerationCancelled``. Raises
    ``ValueError`` when the keys differ, ``InvalidRequest`` / ``EngineNotReady`` /
    ``NotFound`` for a bad request or engine, ``GenerationFailed`` when the pipeline fails.
    """
    if not requests:
        return [], 0
    engine = runner.registry.get(requests[0].engine_id)
    keys = {batch_key(engine, r) for r in requests}
    if len(keys) != 1 or None in keys:
        raise ValueError("run_batch needs requests with one common, non-None batch_key")
    first = requests[0]
    assert first.sampler is not None and first.steps is not None
    loaded = runner.cache.get(engine)
    base = loaded.pipeline
    try:
        with torch.inference_mode(), vae_tiling(base, first.width, first.height):
            scheduler = make_noise_scheduler(first.sampler, base.scheduler.config, engine.family, first.seed)
            pipe = _task_view(_task_pipeline_class(engine.family, Task.TEXT_TO_IMAGE), base, scheduler)
            conds = [
                encode_prompts(
                    pipe,
                    engine.family,
                    apply_style_preset(r.style_preset, r.prompts),
                    device=loaded.device,
                    dtype=loaded.dtype,
                )
                for r in requests
            ]
            items = [(i, s) for i, r in enumerate(requests) for s in sample_seeds(r.seed, r.samples)]
            chunks = _chunks(items, conds, runner.settings.runner.max_batch)
            images: list[list[Any]] = [[] for _ in requests]
            for n, chunk in enumerate(chunks):
                hook = _StepHook(progress, cancel, n * first.steps, len(chunks) * first.steps, None)
                cond = {k: torch.cat([conds[i][k] for i, _ in chunk]) for k in conds[chunk[0][0]]}
                out = pipe(
                    **cond,
                    width=first.width,
                    height=first.height,
                    num_inference_steps=first.steps,
                    guidance_scale=first.cfg_scale,
                    output_type="pil",
                    num_images_per_prompt=1,
                    generator=[torch.Generator(loaded.device).manual_seed(s) for _, s in chunk],
                    callback_on_step_end=hook.on_step_end,
                )
                for (i, _), image in zip(chunk, out.images, strict=True):
                    images[i].append(image)
    except StableServeError:
        raise
    except Exception as exc:  # pipeline failures become one clean domain error, as in Runner.run
        raise GenerationFailed(f"generation failed on {engine.id}: {type(exc).__name__}: {exc}") from exc
    return [_artifacts(runner, loaded, r, imgs) for r, imgs in zip(requests, images, strict=True)], len(
        chunks
    )


def _artifacts(runner: Runner, loaded: Any, req: GenerationRequest, images: list[Any]) -> list[Artifact]:
    """``Runner.run``'s tail for one request: relight, safety screen, encode."""
    if req.light_direction is not None:
        images = [relight(img, req.light_direction, req.light_strength) for img in images]
    return runner.artifacts(loaded, req, images)
