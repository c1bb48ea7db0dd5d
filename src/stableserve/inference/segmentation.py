"""Text-prompted masks (CLIPSeg) and background removal (CLIPSeg + ViTMatte).

Two engine families back these (``core.engines.Family``):

- ``segmenter-clipseg``: transformers' ``CLIPSegForImageSegmentation`` + ``CLIPSegProcessor``
  (real weights: ``CIDAS/clipseg-rd64-refined``). ``text_mask`` gives, per pixel, the
  probability that it shows what a prompt names: v2beta search-and-replace /
  search-and-recolor masks (``MaskSource.TEXT_PROMPT``) and the coarse subject mask of
  background removal.
- ``matting-vitmatte``: transformers' ``VitMatteForImageMatting`` + ``VitMatteImageProcessor``
  (real weights: ``hustvl/vitmatte-small-composition-1k``), which refines a trimap
  (foreground / unknown / background) into an alpha matte.

``remove_background`` chains them: CLIPSeg with ``SUBJECT_PROMPT`` -> subject mask -> trimap
-> ViTMatte alpha; with no matting engine the CLIPSeg probability itself is the alpha.

Both families are loaded by ``load_transformers_engine`` (``LoadedEngine.model`` +
``LoadedEngine.processor``) from a Hugging Face snapshot, a local folder or the demo folder
(``inference.demo_segmentation``), always with ``from_pretrained(folder)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stableserve.core.engines import EngineSpec, Family
from stableserve.inference.imaging import to_rgb
from stableserve.inference.loading import LoadedEngine

TRANSFORMERS_FAMILIES = frozenset({Family.SEGMENTER_CLIPSEG, Family.MATTING_VITMATTE})
"""Families served by a transformers model + processor (no diffusers pipeline)."""

SUBJECT_PROMPT = "the main subject in the foreground"
"""CLIPSeg prompt of the coarse subject mask for background removal.

CLIPSeg was trained on referring expressions (PhraseCut), so a phrase naming "the subject"
rather than a class works for people, animals and objects alike; the mask is only a seed
for the trimap that ViTMatte refines.
"""

SUBJECT_THRESHOLD = 0.4
"""CLIPSeg probability (0..1) above which a pixel belongs to the subject for the trimap.

When no pixel reaches it, half the image's highest probability is used instead, so the
most subject-like region always stays (a vague prompt gives low probabilities)."""

TEXT_MASK_THRESHOLD = 0.4
"""CLIPSeg probability (0..1) from which ``binary_mask`` marks a pixel (search-and-replace masks)."""

TRIMAP_BAND_FRACTION = 0.02
"""Half-width of the trimap's unknown band, as a fraction of the shorter image side (>= 2 px)."""

MATTING_MAX_PIXELS = 1_048_576
"""ViTMatte runs on at most this many pixels (1 MP); a larger image is matted at a reduced size
and the alpha of its unknown band is resized back (the global-attention blocks are quadratic in
pixels)."""


# ---------------------------------------------------------------------------------------------
# Loading


def load_transformers_engine(
    engine: EngineSpec, location: Path, device: torch.device, dtype: torch.dtype
) -> LoadedEngine:
    """Load a ``segmenter-clipseg`` or ``matting-vitmatte`` engine from ``location``.

    ``location`` is a folder holding ``config.json``, the weights (``model.safetensors`` or
    ``pytorch_model.bin``) and the processor files (a Hugging Face snapshot, a local copy or
    a demo folder). Returns a ``LoadedEngine`` whose ``model`` (in eval mode, on ``device``,
    in ``dtype``) and ``processor`` are set. Raises ``ValueError`` for another family and
    whatever ``from_pretrained`` raises for a broken folder.
    """
    folder = str(location)
    if engine.family == Family.SEGMENTER_CLIPSEG:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        model = CLIPSegForImageSegmentation.from_pretrained(folder)
        processor = CLIPSegProcessor.from_pretrained(folder)
    elif engine.family == Family.MATTING_VITMATTE:
        from transformers import VitMatteForImageMatting, VitMatteImageProcessor

        model = VitMatteForImageMatting.from_pretrained(folder)
        processor = VitMatteImageProcessor.from_pretrained(folder)
    else:
        raise ValueError(f"family {engine.family.value!r} is not a transformers segmentation family")
    model = model.to(device=device, dtype=dtype).eval()  # cast here: transformers < 4.56 has no dtype=
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return LoadedEngine(engine, device, dtype, model=model, processor=processor, nbytes=nbytes)


def hf_allow_patterns(repo: str, revision: str) -> list[str]:
    """Files of a transformers repo worth downloading: configs, tokenizer files and one weights format.

    Weights sit at the repo root (unlike a diffusers repo); safetensors are preferred and
    ``*.bin`` is fetched only when the repo has no ``.safetensors``. Asks the hub for the file
    list (network); raises what ``huggingface_hub`` raises when it cannot.
    """
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(repo, revision=revision)
    weights = "*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin"
    return ["*.json", "*.txt", "*.model", weights]


# ---------------------------------------------------------------------------------------------
# CLIPSeg


def text_probability(loaded: LoadedEngine, image: Image.Image, prompt: str) -> np.ndarray:
    """Per-pixel probability that ``image`` shows what ``prompt`` names, by CLIPSeg.

    ``loaded``: a ``segmenter-clipseg`` engine; ``image``: any PIL mode (alpha is ignored);
    ``prompt``: text, truncated to CLIP's 77 tokens. The processor resizes the image to the
    model's square input (352 x 352 for the real weights); the sigmoid of the logits is
    resized back (bilinear) to the image. Returns float32 (H, W) in 0..1, H x W = the
    image's size.
    """
    model, processor = loaded.model, loaded.processor
    rgb = to_rgb(image)
    inputs = processor(
        text=[prompt], images=[rgb], padding="max_length", truncation=True, return_tensors="pt"
    )
    feed = {k: v.to(loaded.device) for k, v in inputs.items()}
    feed["pixel_values"] = feed["pixel_values"].to(loaded.dtype)
    with torch.inference_mode():
        logits = model(**feed).logits
    logits = logits.reshape(-1, 1, *logits.shape[-2:])[:1].float()  # batch of one may come squeezed
    prob = torch.sigmoid(logits)
    prob = torch.nn.functional.interpolate(
        prob, size=(rgb.height, rgb.width), mode="bilinear", align_corners=False
    )
    return prob[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32)


def text_mask(loaded: LoadedEngine, image: Image.Image, prompt: str) -> Image.Image:
    """CLIPSeg mask of what ``prompt`` names in ``image``: an ``L`` image of ``image``'s size.

    Each pixel is round(255 * p), p the probability of ``text_probability`` (0 = surely not
    it, 255 = surely it). ``loaded`` must be a ``segmenter-clipseg`` engine.
    """
    prob = text_probability(loaded, image, prompt)
    return Image.fromarray(np.rint(prob * 255.0).astype(np.uint8), mode="L")


def binary_mask(mask: Image.Image, threshold: float = TEXT_MASK_THRESHOLD) -> Image.Image:
    """``L`` image: 255 where ``mask`` (an ``L`` probability mask, 0..255) >= 255 * ``threshold``, else 0.

    Used for text-prompted inpainting masks: what CLIPSeg finds is replaced fully, the rest
    stays exactly (softening the edge is ``grow_mask``'s job).
    """
    arr = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    return Image.fromarray(np.where(arr >= threshold, 255, 0).astype(np.uint8), mode="L")


# ---------------------------------------------------------------------------------------------
# Trimap and matting


def _box_count(mask: np.ndarray, radius: int) -> np.ndarray:
    """How many True pixels each (2r+1)^2 window around a pixel holds (edges replicated)."""
    k = 2 * radius + 1
    padded = np.pad(mask.astype(np.int64), radius, mode="edge")
    ii = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return ii[k:, k:] - ii[:-k, k:] - ii[k:, :-k] + ii[:-k, :-k]


def trimap_band(width: int, height: int) -> int:
    """Half-width in pixels of the trimap's unknown band for an image of that size (>= 2)."""
    return max(2, round(TRIMAP_BAND_FRACTION * min(width, height)))


def make_trimap(subject: np.ndarray, band: int) -> np.ndarray:
    """Trimap of a boolean subject mask (H, W): uint8 (H, W), 255 = foreground, 128 = unknown, 0 = background.

    Foreground: the subject eroded by a (2*band+1) square; unknown: the subject dilated by the
    same square, minus the foreground; background: the rest. Image edges are replicated, so
    a subject cut by the frame stays foreground up to the edge. ``band`` >= 1 pixels.
    """
    count = _box_count(subject, band)
    full = (2 * band + 1) ** 2
    trimap = np.zeros(subject.shape, dtype=np.uint8)
    trimap[count > 0] = 128
    trimap[count == full] = 255
    return trimap


def _subject(prob: np.ndarray) -> np.ndarray:
    threshold = min(SUBJECT_THRESHOLD, 0.5 * float(prob.max()))
    return prob >= threshold


def matte(loaded: LoadedEngine, image: Image.Image, trimap: np.ndarray) -> np.ndarray:
    """ViTMatte alpha of ``image`` given ``trimap`` (uint8 (H, W), 0/128/255).

    Returns float32 (H, W) in 0..1 (1 = opaque subject). The processor pads to a multiple of
    32 (the output is cropped back); images above ``MATTING_MAX_PIXELS`` are matted at a
    reduced size (LANCZOS for the image, nearest for the trimap) and the alpha resized back
    (bilinear). ``loaded`` must be a ``matting-vitmatte`` engine.
    """
    rgb = to_rgb(image)
    tri = Image.fromarray(trimap, mode="L")
    w, h = rgb.size
    if w * h > MATTING_MAX_PIXELS:
        s = (MATTING_MAX_PIXELS / (w * h)) ** 0.5
        size = (max(1, int(w * s)), max(1, int(h * s)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        tri = tri.resize(size, Image.Resampling.NEAREST)
    inputs = loaded.processor(images=rgb, trimaps=tri, return_tensors="pt")
    pixels = inputs["pixel_values"].to(loaded.device, loaded.dtype)
    with torch.inference_mode():
        alphas = loaded.model(pixel_values=pixels).alphas
    alpha = alphas[:, :, : rgb.height, : rgb.width].float()
    if (rgb.width, rgb.height) != (w, h):
        alpha = torch.nn.functional.interpolate(alpha, size=(h, w), mode="bilinear", align_corners=False)
    return alpha[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32)


def remove_background(
    matting_loaded: LoadedEngine | None, segmenter_loaded: LoadedEngine, image: Image.Image
) -> Image.Image:
    """The input image with its background made transparent: an ``RGBA`` image of ``image``'s size.

    RGB are the input's own pixels (any alpha it had is replaced). Alpha (0 = background,
    255 = subject):
    - with ``matting_loaded`` (a ``matting-vitmatte`` engine): CLIPSeg's probability of
      ``SUBJECT_PROMPT`` thresholded (``SUBJECT_THRESHOLD``) gives the subject, whose trimap
      (``make_trimap``, band ``trimap_band``) ViTMatte refines; alpha is 255 in the trimap's
      foreground, 0 in its background and ViTMatte's matte in the unknown band;
    - without one: round(255 * CLIPSeg probability) of ``SUBJECT_PROMPT``.
    ``segmenter_loaded`` must be a ``segmenter-clipseg`` engine.
    """
    rgb = to_rgb(image)
    prob = text_probability(segmenter_loaded, rgb, SUBJECT_PROMPT)
    if matting_loaded is None:
        alpha = prob
    else:
        trimap = make_trimap(_subject(prob), trimap_band(rgb.width, rgb.height))
        refined = matte(matting_loaded, rgb, trimap)
        alpha = np.where(trimap == 255, 1.0, np.where(trimap == 0, 0.0, refined))
    out = rgb.convert("RGBA")
    out.putalpha(Image.fromarray(np.rint(alpha * 255.0).astype(np.uint8), mode="L"))
    return out
