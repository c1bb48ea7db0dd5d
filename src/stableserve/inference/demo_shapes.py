"""The shipped "shapes" model: real weights for the demo profile's SD 1.x-family engines.

``stableserve/data/shapes`` holds a small text-to-image model trained in this repository
(``training/``, issue 11; model card in ``training/README.md``) on procedurally drawn captioned
scenes: coloured circles, squares, triangles, stars and rings, in five positions, on plain,
gradient or textured backgrounds. It is a diffusers folder in the layout of
``stable-diffusion-v1-5`` (``AutoencoderKL`` with ``vae_scale_factor`` 16, ``CLIPTextModel`` +
``CLIPTokenizer``, ``UNet2DConditionModel``, SD 1.5's ``PNDMScheduler``; fp16 safetensors,
about 22 MB), so it is loaded by exactly the code that loads Stable Diffusion 1.5.

The demo pipelines of :data:`SHAPES_FAMILIES` are built from it instead of random weights, so
offline a prompt such as "a red circle on the left on a blue background" gives that picture:

- ``Family.SD1`` (stable-diffusion-v1, v1-5, ...): the folder as shipped
  (``StableDiffusionPipeline``; image-to-image and inpainting reuse its components);
- ``Family.INPAINT`` (stable-inpainting-v1-0, -512-v2-0): the same components saved as a
  ``StableDiffusionInpaintPipeline``. The UNet has 4 input channels, so the pipeline blends the
  mask in latent space at every step (diffusers' path for non-inpainting UNets).
"""

from __future__ import annotations

from pathlib import Path

from stableserve.core.engines import Family

SHAPES_MODEL = Path(__file__).resolve().parent.parent / "data" / "shapes"
"""Folder of the shipped shapes model (package data)."""

SHAPES_FAMILIES = (Family.SD1, Family.INPAINT)
"""Families whose demo pipeline is the shapes model."""


def build_shapes_pipeline(family: Family, dest: Path) -> None:
    """Write the demo pipeline of ``family`` (one of :data:`SHAPES_FAMILIES`) at ``dest``.

    ``SD1``: :data:`SHAPES_MODEL` as a ``StableDiffusionPipeline``; ``INPAINT``: its components
    as a ``StableDiffusionInpaintPipeline``. Both are saved in float32 (safetensors), like the
    other demo pipelines, so a plain ``from_pretrained`` runs on a CPU (the shipped fp16 weights
    would need ``torch_dtype``). ``dest`` is created if needed. Raises ``ValueError`` for another
    family and ``FileNotFoundError`` when the package data is missing (an install without
    ``stableserve/data/shapes``).
    """
    family = Family(family)
    if family not in SHAPES_FAMILIES:
        served = [f.value for f in SHAPES_FAMILIES]
        raise ValueError(f"the shapes model serves {served}, not {family.value!r}")
    if not (SHAPES_MODEL / "model_index.json").is_file():
        raise FileNotFoundError(f"the shapes model is missing at {SHAPES_MODEL}")
    import torch
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_MODEL, dtype=torch.float32)
    if family == Family.INPAINT:
        pipe = StableDiffusionInpaintPipeline(**pipe.components)
    pipe.save_pretrained(str(dest), safe_serialization=True)
