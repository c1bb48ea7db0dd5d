"""CLIPSeg text masks, ViTMatte background removal and TEXT_PROMPT masking on the demo engines."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stableserve.core.engines import EngineSource, Family, load_registry
from stableserve.core.types import GenerationRequest, MaskSource, OutputFormat, Task, WeightedPrompt
from stableserve.core.validation import resolve
from stableserve.errors import InvalidRequest
from stableserve.inference import segmentation
from stableserve.inference.demo import build_demo_pipeline, ensure_demo_pipeline
from stableserve.inference.imaging import encode_image
from stableserve.inference.loading import load_engine
from stableserve.inference.runner import Runner
from tests.worker.conftest import encode, gradient

CLIPSEG = "clipseg-rd64-refined"
VITMATTE = "vitmatte-small-composition-1k"
INPAINT = "stable-inpainting-v1-0"
P = (WeightedPrompt(text="a red circle on a blue background"),)


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def _loaded(runner: Runner, engine_id: str):
    return runner.cache.get(runner.registry.get(engine_id))


# -- demo models and loading -------------------------------------------------------------------


@pytest.mark.parametrize("family", [Family.SEGMENTER_CLIPSEG, Family.MATTING_VITMATTE], ids=str)
def test_demo_models_build_byte_identical(runner: Runner, family: Family, tmp_path: Path) -> None:
    first = ensure_demo_pipeline(family, runner.settings.demo_dir)
    assert (first / "config.json").is_file() and (first / "model.safetensors").is_file()
    second = tmp_path / "again"
    build_demo_pipeline(family, second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def test_demo_models_load_with_their_processors(runner: Runner) -> None:
    clipseg, vitmatte = _loaded(runner, CLIPSEG), _loaded(runner, VITMATTE)
    assert type(clipseg.model).__name__ == "CLIPSegForImageSegmentation"
    assert type(clipseg.processor).__name__ == "CLIPSegProcessor"
    assert type(vitmatte.model).__name__ == "VitMatteForImageMatting"
    assert type(vitmatte.processor).__name__.startswith("VitMatteImageProcessor")
    assert clipseg.pipeline is None and vitmatte.pipeline is None
    assert clipseg.nbytes > 0 and vitmatte.nbytes > 0
    assert vitmatte.model.config.backbone_config.num_channels == 4  # RGB + trimap


def test_local_source_folder_loads(runner: Runner) -> None:
    folder = ensure_demo_pipeline(Family.SEGMENTER_CLIPSEG, runner.settings.demo_dir)
    spec = load_registry("public").get(CLIPSEG)
    local = spec.model_copy(update={"source": EngineSource(kind="local", path=str(folder))})
    loaded = load_engine(local, runner.settings)
    assert type(loaded.model).__name__ == "CLIPSegForImageSegmentation"


def test_public_registry_wires_segmenters() -> None:
    reg = load_registry("public")
    assert reg.get(CLIPSEG).source.repo == "CIDAS/clipseg-rd64-refined"
    assert reg.get(VITMATTE).source.repo == "hustvl/vitmatte-small-composition-1k"
    assert reg.get(VITMATTE).segmenter == CLIPSEG
    for eid in (INPAINT, "stable-inpainting-512-v2-0"):
        assert reg.get(eid).segmenter == CLIPSEG
    for eid in (CLIPSEG, VITMATTE):
        e = reg.get(eid)
        assert e.tasks == (Task.REMOVE_BACKGROUND,) and e.dimensions.kind == "any" and e.price.per_image == 0


# -- text masks and trimaps ----------------------------------------------------------------------


def test_text_mask_is_an_l_mask_of_the_image_size(runner: Runner) -> None:
    clipseg = _loaded(runner, CLIPSEG)
    image = gradient(100, 70)
    mask = segmentation.text_mask(clipseg, image, "a red circle")
    assert mask.mode == "L" and mask.size == (100, 70)
    arr = np.asarray(mask)
    assert arr.std() > 0  # a map, not a constant
    assert np.array_equal(arr, np.asarray(segmentation.text_mask(clipseg, image, "a red circle")))
    other = np.asarray(segmentation.text_mask(clipseg, image, "the blue sky"))
    assert not np.array_equal(arr, other)
    # A prompt longer than CLIP's 77 tokens is truncated, not an error.
    assert segmentation.text_mask(clipseg, image, "red " * 200).size == (100, 70)


def test_binary_mask_thresholds_probabilities() -> None:
    prob = Image.fromarray(np.array([[0, 101, 102, 255]], dtype=np.uint8), mode="L")
    assert np.asarray(segmentation.binary_mask(prob, 0.4)).tolist() == [[0, 0, 255, 255]]


def test_trimap_has_foreground_unknown_band_and_background() -> None:
    subject = np.zeros((40, 60), dtype=bool)
    subject[10:30, 20:40] = True
    tri = segmentation.make_trimap(subject, 3)
    assert set(np.unique(tri).tolist()) == {0, 128, 255}
    assert (tri[13:27, 23:37] == 255).all() and tri[12, 30] == 128 and tri[10, 30] == 128
    assert tri[7, 30] == 128 and tri[6, 30] == 0 and tri[0, 0] == 0
    assert ((tri == 255) <= subject).all()  # foreground only inside the subject
    # A subject touching the frame stays foreground up to the edge.
    edge = np.zeros((20, 20), dtype=bool)
    edge[:, :10] = True
    assert (segmentation.make_trimap(edge, 2)[:, :7] == 255).all()
    assert segmentation.trimap_band(64, 64) == 2 and segmentation.trimap_band(2000, 1000) == 20


# -- remove-background through the runner --------------------------------------------------------


def _remove_bg(engine_id: str, image: Image.Image, fmt: OutputFormat, samples: int = 1) -> GenerationRequest:
    return GenerationRequest(
        engine_id=engine_id,
        task=Task.REMOVE_BACKGROUND,
        init_image=encode(image),
        output_format=fmt,
        samples=samples,
    )


@pytest.mark.parametrize("engine_id", [CLIPSEG, VITMATTE])
@pytest.mark.parametrize("fmt", [OutputFormat.PNG, OutputFormat.WEBP], ids=str)
def test_remove_background_returns_rgba_of_the_input_size(runner: Runner, engine_id, fmt) -> None:
    image = gradient(100, 70)  # not a multiple of ViTMatte's 32: padded, then cropped back
    arts = runner.generate(_remove_bg(engine_id, image, fmt, samples=2))
    assert len(arts) == 2 and arts[0].data == arts[1].data
    a = arts[0]
    assert a.mime == fmt.mime and (a.width, a.height) == (100, 70)
    out = _open(a.data)
    assert out.format == fmt.value.upper() and out.mode == "RGBA" and out.size == (100, 70)
    if fmt == OutputFormat.PNG:  # lossless: the input's RGB, untouched
        assert np.array_equal(np.asarray(out)[..., :3], np.asarray(image))


def test_remove_background_alpha_follows_the_segmenter_and_trimap(runner: Runner) -> None:
    image = gradient(96, 64)
    clipseg = _loaded(runner, CLIPSEG)
    prob = segmentation.text_probability(clipseg, image, segmentation.SUBJECT_PROMPT)
    soft = np.asarray(_open(runner.generate(_remove_bg(CLIPSEG, image, OutputFormat.PNG))[0].data))[..., 3]
    assert np.array_equal(soft, np.rint(prob * 255).astype(np.uint8))

    matted = np.asarray(_open(runner.generate(_remove_bg(VITMATTE, image, OutputFormat.PNG))[0].data))[..., 3]
    tri = segmentation.make_trimap(segmentation._subject(prob), segmentation.trimap_band(96, 64))
    assert (matted[tri == 255] == 255).all() and (matted[tri == 0] == 0).all()
    matte = segmentation.matte(_loaded(runner, VITMATTE), image, tri)
    unknown = tri == 128
    assert np.array_equal(matted[unknown], np.rint(matte[unknown] * 255).astype(np.uint8))


def test_remove_background_with_a_known_subject(runner: Runner, monkeypatch) -> None:
    # A centred square "subject": alpha is opaque inside, transparent far outside.
    subject = np.zeros((64, 96), dtype=np.float32)
    subject[16:48, 24:72] = 0.9
    monkeypatch.setattr(segmentation, "text_probability", lambda loaded, image, prompt: subject)
    out = np.asarray(_open(runner.generate(_remove_bg(VITMATTE, gradient(96, 64), OutputFormat.PNG))[0].data))
    alpha = out[..., 3]
    assert (alpha[20:44, 28:68] == 255).all()
    assert (alpha[:10] == 0).all() and (alpha[:, :18] == 0).all()


def test_matte_of_a_large_image_runs_at_reduced_size(runner: Runner, monkeypatch) -> None:
    monkeypatch.setattr(segmentation, "MATTING_MAX_PIXELS", 32 * 32)
    tri = np.full((64, 96), 128, dtype=np.uint8)
    alpha = segmentation.matte(_loaded(runner, VITMATTE), gradient(96, 64), tri)
    assert alpha.shape == (64, 96) and alpha.dtype == np.float32
    assert 0 <= alpha.min() <= alpha.max() <= 1


def test_remove_background_resolves_without_steps_or_prompt() -> None:
    reg = load_registry("demo")
    req = _remove_bg(VITMATTE, gradient(100, 70), OutputFormat.WEBP)
    done = resolve(req, reg.get(VITMATTE))
    assert (done.width, done.height, done.steps, done.sampler) == (100, 70, None, None)
    with pytest.raises(InvalidRequest) as exc:
        resolve(req.model_copy(update={"init_image": None}), reg.get(VITMATTE))
    assert exc.value.param == "init_image"


def test_webp_keeps_alpha() -> None:
    alpha = np.zeros((16, 24), dtype=np.uint8)
    alpha[:, 12:] = 255
    out = _open(encode_image(gradient(24, 16, alpha=alpha), OutputFormat.WEBP))
    assert out.mode == "RGBA"
    got = np.asarray(out.getchannel("A"))
    assert (got[:, :10] < 8).all() and (got[:, 14:] > 247).all()


# -- TEXT_PROMPT masks ---------------------------------------------------------------------------


def _text_masking(engine_id: str = INPAINT, **kw) -> GenerationRequest:
    kw.setdefault("mask_prompt", "a red circle")
    return GenerationRequest(
        engine_id=engine_id,
        task=Task.MASKING,
        prompts=P,
        init_image=encode(gradient(128, 64)),
        mask_source=MaskSource.TEXT_PROMPT,
        steps=2,
        seed=3,
        **kw,
    )


def test_text_prompt_mask_is_the_one_used(runner: Runner, monkeypatch) -> None:
    known = np.zeros((64, 128), dtype=np.uint8)
    known[:, :64] = 255
    seen: list[tuple[str, tuple[int, int], str]] = []

    def fake(self, engine, init, prompt):
        seen.append((engine.id, init.size, prompt))
        return Image.fromarray(known, mode="L")

    monkeypatch.setattr(Runner, "_text_mask", fake)
    out = np.asarray(_open(runner.generate(_text_masking(mask_prompt="the sky"))[0].data).convert("RGB"))
    original = np.asarray(gradient(128, 64))
    assert seen == [(INPAINT, (128, 64), "the sky")]
    assert np.array_equal(out[:, 64:], original[:, 64:])  # mask 0: exactly the input
    assert np.abs(out[:, :64].astype(int) - original[:, :64].astype(int)).mean() > 5


def test_text_prompt_masking_runs_with_the_demo_segmenter(runner: Runner) -> None:
    req = _text_masking()
    art = runner.generate(req)[0]
    assert (art.width, art.height) == (128, 64)
    out = np.asarray(_open(art.data).convert("RGB"))
    mask = np.asarray(runner._text_mask(runner.registry.get(INPAINT), gradient(128, 64), "a red circle"))
    assert mask.shape == (64, 128) and set(np.unique(mask).tolist()) <= {0, 255}
    keep = mask == 0
    assert np.array_equal(out[keep], np.asarray(gradient(128, 64))[keep])


def test_text_prompt_needs_a_segmenter_and_a_prompt(runner: Runner) -> None:
    with pytest.raises(InvalidRequest) as exc:
        runner.generate(_text_masking("stable-diffusion-v1-5"))
    assert exc.value.param == "mask_prompt"
    with pytest.raises(InvalidRequest) as exc:
        runner.generate(_text_masking(mask_prompt=None))
    assert exc.value.param == "mask_prompt"
    with pytest.raises(InvalidRequest) as exc:
        runner._text_mask(runner.registry.get("stable-diffusion-v1-5"), gradient(64, 64), "a cat")
    assert exc.value.param == "mask_prompt"
