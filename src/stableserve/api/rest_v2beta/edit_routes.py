"""REST v2beta edit and control routes (CONTRACT.md §3.3); builders in ``rest_v2beta.edit``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from stableserve.api.rest_v2beta import edit
from stableserve.api.rest_v2beta.router import IMAGE_200, multipart, submit, sync

_COMMON = {"seed": "number", "output_format": "string"}
_PROMPTS = {"prompt": "string", "negative_prompt": "string", "style_preset": "string"}


def add_edit_routes(router: APIRouter) -> None:
    """Add ``/stable-image/edit/*`` and ``/stable-image/control/*`` to the v2beta ``router``."""

    def post(path: str, summary: str, fields: dict[str, str], required: tuple[str, ...], **kw):
        return router.post(
            path,
            summary=summary,
            responses=kw.get("responses", IMAGE_200),
            openapi_extra=multipart({**fields, **_COMMON}, required),
        )

    @post(
        "/stable-image/edit/erase",
        "Erase",
        {"image": "file", "mask": "file", "grow_mask": "number"},
        ("image",),
    )
    async def erase(request: Request) -> Response:
        """Remove what the mask (or the image's alpha) covers; the rest comes back unchanged."""
        return await sync(request, edit.erase_request, "image", "mask", required=("image",))

    @post(
        "/stable-image/edit/inpaint",
        "Inpaint",
        {"image": "file", "mask": "file", "grow_mask": "number", **_PROMPTS},
        ("image", "prompt"),
    )
    async def inpaint(request: Request) -> Response:
        """Repaint the masked area (mask file, else the image's alpha) from `prompt`."""
        return await sync(request, edit.inpaint_request, "image", "mask", required=("image",))

    sides = {side: "integer" for side in ("left", "right", "up", "down")}

    @post(
        "/stable-image/edit/outpaint",
        "Outpaint",
        {"image": "file", **sides, "creativity": "number", **_PROMPTS},
        ("image",),
    )
    async def outpaint(request: Request) -> Response:
        """Extend the image by `left`/`right`/`up`/`down` pixels; the original pixels stay."""
        return await sync(request, edit.outpaint_request, "image", required=("image",))

    @post(
        "/stable-image/edit/search-and-replace",
        "Search and replace",
        {"image": "file", "search_prompt": "string", "grow_mask": "number", **_PROMPTS},
        ("image", "prompt", "search_prompt"),
    )
    async def search_and_replace(request: Request) -> Response:
        """Mask what `search_prompt` names (CLIPSeg) and repaint it from `prompt`."""
        return await sync(request, edit.search_and_replace_request, "image", required=("image",))

    @post(
        "/stable-image/edit/search-and-recolor",
        "Search and recolor",
        {"image": "file", "select_prompt": "string", "grow_mask": "number", **_PROMPTS},
        ("image", "prompt", "select_prompt"),
    )
    async def search_and_recolor(request: Request) -> Response:
        """Mask what `select_prompt` names and recolor it from `prompt`, keeping its structure."""
        return await sync(request, edit.search_and_recolor_request, "image", required=("image",))

    @post("/stable-image/edit/remove-background", "Remove background", {"image": "file"}, ("image",))
    async def remove_background(request: Request) -> Response:
        """The image with an alpha channel (transparent background); png or webp."""
        return await sync(request, edit.remove_background_request, "image", required=("image",))

    @post(
        "/stable-image/edit/replace-background-and-relight",
        "Replace background and relight (async)",
        {
            "subject_image": "file",
            "background_reference": "file",
            "background_prompt": "string",
            "foreground_prompt": "string",
            "negative_prompt": "string",
            "preserve_original_subject": "number",
            "original_background_depth": "number",
            "keep_original_background": "string",
            "light_source_direction": "string",
            "light_reference": "file",
            "light_source_strength": "number",
        },
        ("subject_image",),
        responses={200: {"description": '`{"id": "<64-hex generation id>"}`; poll /v2beta/results/{id}.'}},
    )
    async def replace_background_and_relight(request: Request) -> JSONResponse:
        """New background from a prompt or reference, then directional light; answers an id."""
        return await submit(
            request,
            edit.relight_request,
            "subject_image",
            "background_reference",
            "light_reference",
            required=("subject_image",),
        )

    control = {"image": "file", "control_strength": "number", **_PROMPTS}

    @post("/stable-image/control/sketch", "Sketch", control, ("prompt", "image"))
    async def sketch(request: Request) -> Response:
        """Turn a sketch into an image (ControlNet scribble); output at the sketch's size."""
        return await sync(request, edit.sketch_request, "image", required=("image",))

    @post("/stable-image/control/structure", "Structure", control, ("prompt", "image"))
    async def structure(request: Request) -> Response:
        """A new image with the input's structure (ControlNet edges); output at its size."""
        return await sync(request, edit.structure_request, "image", required=("image",))

    @post(
        "/stable-image/control/style",
        "Style",
        {"image": "file", "aspect_ratio": "string", "fidelity": "number", **_PROMPTS},
        ("prompt", "image"),
    )
    async def style(request: Request) -> Response:
        """Text-to-image in the style of `image` (IP-Adapter)."""
        return await sync(request, edit.style_request, "image", required=("image",))

    @post(
        "/stable-image/control/style-transfer",
        "Style transfer",
        {
            "init_image": "file",
            "style_image": "file",
            "prompt": "string",
            "negative_prompt": "string",
            "style_strength": "number",
            "composition_fidelity": "number",
            "change_strength": "number",
        },
        ("init_image", "style_image"),
    )
    async def style_transfer(request: Request) -> Response:
        """`init_image` re-rendered in the style of `style_image` (IP-Adapter image-to-image)."""
        return await sync(
            request,
            edit.style_transfer_request,
            "init_image",
            "style_image",
            required=("init_image", "style_image"),
        )
