"""REST v2beta edit and control: form fields to ``GenerationRequest`` (CONTRACT.md §3.3,
``specs/stability-v2beta.params.json``).

Every builder returns the request plus the registry ``ProductSpec`` that prices it; they
decode images, so call them from a worker thread. The engines behind them are registry
configuration (``products:``): an inpainting engine (erase, inpaint, outpaint, search-and-*,
relight) with a CLIPSeg ``segmenter`` for text masks, a ViTMatte matting engine
(remove-background), ControlNet engines (sketch, structure) and an IP-Adapter engine (style,
style-transfer). Outputs keep the input's size; the pipelines run at the engine's size
nearest the input's aspect ratio (``core.products.size_for_aspect``).

Parameter mappings (documented choices where Stability does not say):
- masks: ``mask`` file (black keeps, white replaces, resized to the image) else the image's
  alpha (transparent = replace); ``grow_mask`` grows and feathers by that many pixels.
- outpaint ``creativity`` 0..1 -> strength 0.75 + 0.25 x creativity over the new area.
- search-and-recolor: the product's ``strength`` (below 1) keeps the object's structure.
- control ``control_strength`` -> ControlNet conditioning scale; style ``fidelity`` ->
  IP-Adapter scale; style-transfer ``style_strength`` -> IP-Adapter scale and
  ``change_strength`` x (1 - composition_fidelity / 2) -> image-to-image strength.
- relight: the segmenter masks the product's ``mask_prompt`` (``background``), which is
  repainted from ``background_prompt`` (or starts from ``background_reference``);
  ``keep_original_background`` only relights; ``light_source_direction`` (or the brightest
  side of ``light_reference``) and ``light_source_strength`` light the result.
  ``preserve_original_subject`` and ``original_background_depth`` are accepted and not used:
  the subject's pixels are always kept.
"""

from __future__ import annotations

from collections.abc import Callable

from stableserve.api.rest_v2beta.convert import build_request, common_fields, read_prompts
from stableserve.api.rest_v2beta.forms import V2Form, check_image
from stableserve.core.edits import light_direction, mask_for, outpaint_canvas
from stableserve.core.engines import EngineRegistry, EngineSpec, ProductSpec
from stableserve.core.images import decode_image, has_alpha
from stableserve.core.products import ASPECT_RATIOS, aspect_size, size_for_aspect
from stableserve.core.types import GenerationRequest, ImageInput, MaskSource, Task, WeightedPrompt
from stableserve.errors import InvalidRequest

MAX_EDIT_PIXELS = 9_437_184
"""Input pixel limit of most edit and control endpoints."""

Built = tuple[GenerationRequest, ProductSpec]


def _working_size(engine: EngineSpec, w: int, h: int) -> dict:
    width, height = size_for_aspect(engine, w / h)
    return {"width": width, "height": height}


def _mask_fields(form: V2Form, image: bytes, mask: bytes | None, grow_max: int, grow_default: int) -> dict:
    """Mask from the ``mask`` file (wins) or the image's alpha channel, plus ``grow_mask``."""
    img = decode_image(image, param="image")
    if mask is not None:
        fields = {
            "mask_image": ImageInput(data=mask_for(mask, img.size)),
            "mask_source": MaskSource.MASK_IMAGE_WHITE,
        }
    elif has_alpha(img):
        fields = {"mask_source": MaskSource.INIT_IMAGE_ALPHA}
    else:
        raise InvalidRequest("mask: is required when image has no alpha channel", param="mask")
    fields["grow_mask"] = form.integer("grow_mask", 0, grow_max, grow_default)
    return fields


def _masked(
    registry: EngineRegistry,
    name: str,
    form: V2Form,
    image: bytes,
    limits: dict,
    extra: dict | Callable[[], dict],
    field: str = "image",
) -> Built:
    """A masking request for product ``name``: ``image`` (``field``) checked against the
    edit limits (plus ``limits``), the pipeline's working size, and ``extra`` fields (or a
    function giving them, called once the image passed its limits)."""
    product, engine = registry.product(name)
    w, h = check_image(image, field, min_side=64, min_pixels=4096, max_pixels=MAX_EDIT_PIXELS, **limits)
    extra = extra() if callable(extra) else extra  # read after the image passed its limits
    fields = {
        "task": Task.MASKING,
        "init_image": ImageInput(data=image),
        "schedule_start": product.strength or 1.0,
        **_working_size(engine, w, h),
        **common_fields(form),
        **extra,
    }
    return build_request(engine, product, fields), product


def erase_request(registry: EngineRegistry, form: V2Form, image: bytes, mask: bytes | None) -> Built:
    """``edit/erase``: inpaint the masked area with the product's neutral prompt."""
    product, _ = registry.product("erase")

    def extra() -> dict:
        return {
            "prompts": read_prompts(form, product, required=False),
            **_mask_fields(form, image, mask, 20, 5),
        }

    return _masked(registry, "erase", form, image, {}, extra)


def inpaint_request(registry: EngineRegistry, form: V2Form, image: bytes, mask: bytes | None) -> Built:
    """``edit/inpaint``: repaint the masked area from ``prompt`` (``grow_mask`` 0..100)."""

    def extra() -> dict:
        return {"prompts": read_prompts(form), **_mask_fields(form, image, mask, 100, 5)}

    return _masked(registry, "inpaint", form, image, {}, extra)


def outpaint_request(registry: EngineRegistry, form: V2Form, image: bytes) -> Built:
    """``edit/outpaint``: extend the canvas by ``left``/``right``/``up``/``down`` (0..2000, at
    least one > 0) and paint the new area; the original pixels come back unchanged."""
    product, _ = registry.product("outpaint")
    check_image(image, "image", min_side=64, min_pixels=4096, max_pixels=MAX_EDIT_PIXELS, max_aspect=2.5)
    sides = {side: form.integer(side, 0, 2000, 0) for side in ("left", "right", "up", "down")}
    if not any(sides.values()):
        raise InvalidRequest(
            "left: at least one of left, right, up or down must be greater than 0", param="left"
        )
    creativity = form.number("creativity", 0, 1, 0.5)
    canvas, mask = outpaint_canvas(image, **sides)
    extra = {
        "prompts": read_prompts(form, product, required=False),
        "mask_image": ImageInput(data=mask),
        "mask_source": MaskSource.MASK_IMAGE_WHITE,
    }
    req, product = _masked(registry, "outpaint", form, canvas, {}, extra)
    return req.model_copy(update={"schedule_start": 0.75 + 0.25 * creativity}), product


def _search(registry: EngineRegistry, name: str, field: str, form: V2Form, image: bytes) -> Built:
    target = form.text(field, required=True)
    extra = {
        "prompts": read_prompts(form),
        "mask_source": MaskSource.TEXT_PROMPT,
        "mask_prompt": target,
        "grow_mask": form.integer("grow_mask", 0, 20, 3),
    }
    return _masked(registry, name, form, image, {"max_aspect": 2.5}, extra)


def search_and_replace_request(registry: EngineRegistry, form: V2Form, image: bytes) -> Built:
    """``edit/search-and-replace``: the segmenter masks ``search_prompt``; ``prompt`` repaints it."""
    return _search(registry, "search-and-replace", "search_prompt", form, image)


def search_and_recolor_request(registry: EngineRegistry, form: V2Form, image: bytes) -> Built:
    """``edit/search-and-recolor``: the segmenter masks ``select_prompt``; ``prompt`` recolors
    it at the product's strength (below 1: the object's structure stays)."""
    return _search(registry, "search-and-recolor", "select_prompt", form, image)


def remove_background_request(registry: EngineRegistry, form: V2Form, image: bytes) -> Built:
    """``edit/remove-background``: an RGBA image (``output_format`` png or webp only)."""
    product, engine = registry.product("remove-background")
    check_image(image, "image", min_side=64, min_pixels=4096, max_pixels=4_194_304)
    fields = {
        "task": Task.REMOVE_BACKGROUND,
        "init_image": ImageInput(data=image),
        **common_fields(form, style=False, formats=("png", "webp")),
    }
    return build_request(engine, product, fields), product


def relight_request(
    registry: EngineRegistry,
    form: V2Form,
    subject: bytes,
    background_reference: bytes | None,
    light_reference: bytes | None,
) -> Built:
    """``edit/replace-background-and-relight`` (async): see the module docstring."""
    product, _ = registry.product("replace-background-and-relight")
    check_image(
        subject, "subject_image", min_side=64, min_pixels=4096, max_pixels=MAX_EDIT_PIXELS, max_aspect=2.5
    )
    background_prompt = form.text("background_prompt")
    keep = form.choice("keep_original_background", ("true", "false"), "false") == "true"
    if background_reference is not None:
        check_image(
            background_reference,
            "background_reference",
            min_side=64,
            min_pixels=4096,
            max_pixels=MAX_EDIT_PIXELS,
        )
    if background_prompt is None and background_reference is None and not keep:
        raise InvalidRequest(
            "background_prompt: one of background_prompt or background_reference is required",
            param="background_prompt",
        )
    form.text("foreground_prompt")
    form.number("preserve_original_subject", 0, 1, 0.6)
    form.number("original_background_depth", 0, 1, 0.5)
    direction = form.choice("light_source_direction", ("left", "right", "above", "below"))
    if light_reference is not None:
        check_image(
            light_reference, "light_reference", min_side=64, min_pixels=4096, max_pixels=MAX_EDIT_PIXELS
        )
        direction = direction or light_direction(light_reference)
    strength = form.number("light_source_strength", 0, 1, 0.3)
    if form.present("light_source_strength") and direction is None:
        raise InvalidRequest(
            "light_source_strength: requires light_reference or light_source_direction",
            param="light_source_strength",
        )
    prompt = background_prompt or product.prompt or "a background"
    extra = {
        "prompts": (WeightedPrompt(text=prompt),),
        "mask_source": MaskSource.TEXT_PROMPT,
        "mask_prompt": product.mask_prompt or "background",
        "grow_mask": 0,
        "light_direction": direction,
        "light_strength": strength,
    }
    if background_reference is not None:
        extra["background_image"] = ImageInput(data=background_reference)
    req, product = _masked(
        registry, "replace-background-and-relight", form, subject, {}, extra, "subject_image"
    )
    if keep:
        return req.model_copy(update={"schedule_start": 0.15}), product
    if background_reference is not None:
        return req.model_copy(update={"schedule_start": 0.6}), product
    return req, product


def _control(
    registry: EngineRegistry, name: str, form: V2Form, image: bytes, min_pixels: int | None
) -> Built:
    product, engine = registry.product(name)
    w, h = check_image(
        image, "image", min_side=64, min_pixels=min_pixels, max_pixels=MAX_EDIT_PIXELS, max_aspect=2.5
    )
    fields = {
        "task": Task.TEXT_TO_IMAGE,
        "prompts": read_prompts(form),
        "control_image": ImageInput(data=image),
        "control_strength": form.number("control_strength", 0, 1, 0.7),
        **_working_size(engine, w, h),
        **common_fields(form),
    }
    return build_request(engine, product, fields), product


def sketch_request(registry: EngineRegistry, form: V2Form, image: bytes) -> Built:
    """``control/sketch``: a ControlNet (scribble) follows the drawing; output at its size."""
    return _control(registry, "control-sketch", form, image, None)


def structure_request(registry: EngineRegistry, form: V2Form, image: bytes) -> Built:
    """``control/structure``: a ControlNet (edges) keeps the image's structure; output at its size."""
    return _control(registry, "control-structure", form, image, 4096)


def style_request(registry: EngineRegistry, form: V2Form, image: bytes) -> Built:
    """``control/style``: text-to-image at ``aspect_ratio`` in the style of ``image``
    (IP-Adapter scale = ``fidelity``, default 0.5)."""
    product, engine = registry.product("control-style")
    check_image(image, "image", min_side=64, min_pixels=4096, max_pixels=MAX_EDIT_PIXELS, max_aspect=2.5)
    width, height = aspect_size(engine, form.choice("aspect_ratio", ASPECT_RATIOS, "1:1"))
    fields = {
        "task": Task.TEXT_TO_IMAGE,
        "prompts": read_prompts(form),
        "style_image": ImageInput(data=image),
        "style_strength": form.number("fidelity", 0, 1, 0.5),
        "width": width,
        "height": height,
        **common_fields(form),
    }
    return build_request(engine, product, fields), product


def style_transfer_request(registry: EngineRegistry, form: V2Form, init: bytes, style: bytes) -> Built:
    """``control/style-transfer``: ``init_image`` re-rendered in the style of ``style_image``."""
    product, engine = registry.product("style-transfer")
    w, h = check_image(
        init,
        "init_image",
        min_side=64,
        max_side=16_383,
        min_pixels=4096,
        max_pixels=MAX_EDIT_PIXELS,
        max_aspect=2.5,
    )
    check_image(
        style, "style_image", min_side=64, max_side=16_383, min_pixels=4096, max_pixels=MAX_EDIT_PIXELS
    )
    fidelity = form.number("composition_fidelity", 0, 1, 0.9)
    change = form.number("change_strength", 0.1, 1, 0.9)
    fields = {
        "task": Task.IMAGE_TO_IMAGE,
        "prompts": read_prompts(form, product, required=False),
        "init_image": ImageInput(data=init),
        "style_image": ImageInput(data=style),
        "style_strength": form.number("style_strength", 0, 1, 1.0),
        "schedule_start": change * (1 - fidelity / 2),
        **_working_size(engine, w, h),
        **common_fields(form, style=False),
    }
    return build_request(engine, product, fields), product
