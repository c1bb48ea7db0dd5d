"""ControlNet engines: the sketch / canny preprocessors, loading (demo and HF cache), the runner path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from stableserve.core.engines import EngineRegistry, EngineSource, Family, load_registry
from stableserve.core.types import GenerationRequest, ImageInput, Task, WeightedPrompt
from stableserve.core.validation import check_dimensions, resolve
from stableserve.errors import InvalidRequest
from stableserve.inference.control import canny_map, control_map, sketch_map
from stableserve.inference.controlnet import (
    CONTROLNET_WEIGHTS,
    build_demo_controlnet,
    demo_controlnet_folder,
    ensure_demo_controlnet,
)
from stableserve.inference.demo import ensure_demo_pipeline
from stableserve.inference.loading import load_engine, pull, readiness
from stableserve.inference.runner import Runner
from stableserve.settings import Settings
from tests.worker.conftest import decode, encode, gradient

P = (WeightedPrompt(text="a house on a hill"),)
ENGINES = ("sd15-controlnet-scribble", "sd15-controlnet-canny")


def drawing(w: int = 96, h: int = 80, *, ink: str = "black", paper: str = "white") -> Image.Image:
    """A circle and a line drawn 3 px wide: a sketch of ``ink`` on ``paper``."""
    img = Image.new("RGB", (w, h), paper)
    d = ImageDraw.Draw(img)
    d.ellipse((10, 10, min(w, h) - 10, min(w, h) - 10), outline=ink, width=3)
    d.line((w // 2, 5, w - 5, h - 5), fill=ink, width=3)
    return img


def half(w: int = 64, h: int = 48) -> Image.Image:
    """Black left half, white right half (a vertical step edge between columns w/2-1 and w/2)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, w // 2 :] = 255
    return Image.fromarray(a, "RGB")


def control_request(engine_id: str, control: Image.Image, **kw) -> GenerationRequest:
    kw.setdefault("prompts", P)
    kw.setdefault("steps", 2)
    kw.setdefault("seed", 11)
    return GenerationRequest(engine_id=engine_id, control_image=encode(control), **kw)


# -- preprocessors -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sketch", "canny"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_preprocessors_return_binary_rgb_of_the_input_size(kind, mode):
    img = drawing(90, 70).convert(mode)
    out = control_map(kind, img)
    assert out.mode == "RGB" and out.size == (90, 70)
    a = np.asarray(out)
    assert set(np.unique(a)) <= {0, 255}
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()
    assert (a > 0).any()


def test_canny_finds_the_step_edge_one_pixel_wide_and_nothing_in_a_flat_image():
    edges = np.asarray(canny_map(half(64, 48)))[..., 0] > 0
    cols = np.unique(np.nonzero(edges)[1])
    assert len(cols) == 1 and cols[0] in (31, 32)
    assert edges[:, cols[0]].all()  # the whole edge, every row
    for flat in (Image.new("RGB", (50, 40), (120, 30, 40)), Image.new("L", (33, 17), 255)):
        assert not np.asarray(canny_map(flat)).any()


def test_canny_thresholds_and_colour_edges():
    faint = Image.fromarray(np.asarray(half()) // 20)  # a 0 -> 12 step: Sobel L1 magnitude 48
    assert not np.asarray(canny_map(faint)).any()  # below low=100
    assert np.asarray(canny_map(faint, low=20, high=40)).any()
    # Equal-luminance colours still have an edge (the strongest channel counts).
    a = np.zeros((32, 32, 3), np.uint8)
    a[:, :16], a[:, 16:] = (255, 0, 0), (0, 0, 255)
    assert np.asarray(canny_map(Image.fromarray(a))).any()
    with pytest.raises(ValueError):
        canny_map(half(), low=200, high=100)


def test_sketch_inverts_a_dark_on_light_drawing():
    dark_on_light = sketch_map(drawing())
    a = np.asarray(dark_on_light)[..., 0]
    ink = np.asarray(drawing().convert("L")) < 128
    assert a[~ink].mean() < 10  # the paper becomes black ...
    assert (a[ink] == 255).mean() > 0.95  # ... and the strokes white
    light_on_dark = sketch_map(ImageOps.invert(drawing()))
    assert np.array_equal(np.asarray(light_on_dark), np.asarray(dark_on_light))


def test_sketch_of_a_transparent_layer_and_of_a_blank_page():
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(layer).line((0, 32, 63, 32), fill=(0, 0, 0, 255), width=3)
    a = np.asarray(sketch_map(layer))[..., 0]
    assert (a[31:34] == 255).all() and not a[:25].any() and not a[40:].any()
    assert not np.asarray(sketch_map(Image.new("RGB", (40, 30), "white"))).any()


def test_control_map_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown control preprocessor"):
        control_map("depth", drawing())


# -- registry, validation ------------------------------------------------------------------------


def test_registries_carry_the_controlnet_engines():
    public, demo = load_registry("public"), load_registry("demo")
    for engine_id, repo, kind in zip(
        ENGINES,
        ("lllyasviel/control_v11p_sd15_scribble", "lllyasviel/control_v11p_sd15_canny"),
        ("sketch", "canny"),
        strict=True,
    ):
        p, d = public.get(engine_id), demo.get(engine_id)
        assert p.family == Family.SD1 and p.tasks == (Task.TEXT_TO_IMAGE,)
        assert p.controlnet is not None and (p.controlnet.kind, p.controlnet.repo) == ("hf", repo)
        assert p.control_preprocess == d.control_preprocess == kind
        assert d.controlnet == EngineSource(kind="demo")
    assert demo.get("stable-diffusion-v1-5").controlnet is None


def test_control_image_is_required_by_controlnet_engines_and_refused_elsewhere(demo_registry):
    engine = demo_registry.get("sd15-controlnet-canny")
    with pytest.raises(InvalidRequest) as exc:
        resolve(GenerationRequest(engine_id=engine.id, prompts=P), engine)
    assert exc.value.param == "control_image"
    plain = demo_registry.get("stable-diffusion-v1-5")
    with pytest.raises(InvalidRequest) as exc:
        resolve(control_request(plain.id, drawing()), plain)
    assert exc.value.param == "control_image"
    bad = GenerationRequest(engine_id=engine.id, prompts=P, control_image=ImageInput(data=b"not an image"))
    with pytest.raises(InvalidRequest) as exc:
        resolve(bad, engine)
    assert exc.value.param == "control_image"


def test_working_size_defaults_to_the_control_image_or_the_nearest_valid_size(demo_registry):
    engine = demo_registry.get("sd15-controlnet-scribble")
    r = resolve(control_request(engine.id, drawing(128, 64)), engine)
    assert (r.width, r.height) == (128, 64)
    r = resolve(control_request(engine.id, drawing(100, 60)), engine)  # not multiples of 64
    check_dimensions(engine.dimensions, r.width, r.height)
    assert abs(r.width / r.height - 100 / 60) < 0.2
    r = resolve(control_request(engine.id, drawing(100, 60), width=64, height=128), engine)
    assert (r.width, r.height) == (64, 128)


# -- demo weights and loading --------------------------------------------------------------------


def test_demo_controlnet_is_reproducible(tmp_path, stableserve_home):
    root = Path(stableserve_home) / "demo"
    folder = ensure_demo_controlnet(Family.SD1, root)
    assert folder == demo_controlnet_folder(Family.SD1, root) and folder.name.startswith("controlnet-sd1-")
    build_demo_controlnet(Family.SD1, ensure_demo_pipeline(Family.SD1, root) / "unet", tmp_path / "again")
    assert (folder / CONTROLNET_WEIGHTS).read_bytes() == (
        tmp_path / "again" / CONTROLNET_WEIGHTS
    ).read_bytes()
    with pytest.raises(ValueError):
        ensure_demo_controlnet(Family.SDXL, root)


def _fake_hf_cache(settings: Settings, repo: str, folder: Path) -> None:
    """Lay out a Hugging Face cache entry (refs/main -> snapshot) holding ``folder``'s files."""
    base = settings.models_dir / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(folder, base / "snapshots" / commit)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)


def test_hf_controlnet_not_ready_until_cached_then_loads(tmp_path, stableserve_home):
    demo_root = Path(stableserve_home) / "demo"
    settings = Settings(home=tmp_path)
    engine = load_registry("public").get("sd15-controlnet-canny")
    _fake_hf_cache(settings, engine.source.repo, ensure_demo_pipeline(Family.SD1, demo_root))
    r = readiness(engine, settings)
    assert not r.ready and "ControlNet lllyasviel/control_v11p_sd15_canny" in r.reason
    assert r.reason.endswith("run `stableserve models pull sd15-controlnet-canny`")
    _fake_hf_cache(settings, engine.controlnet.repo, ensure_demo_controlnet(Family.SD1, demo_root))
    assert readiness(engine, settings).ready
    loaded = load_engine(engine, settings)
    assert type(loaded.controlnet).__name__ == "ControlNetModel"
    held = [loaded.controlnet, *(m for m in loaded.pipeline.components.values() if hasattr(m, "parameters"))]
    assert loaded.nbytes == sum(p.numel() * p.element_size() for m in held for p in m.parameters())


def test_demo_engine_pull_and_cache_bytes_include_the_controlnet(runner, demo_registry):
    engine = demo_registry.get("sd15-controlnet-scribble")
    assert pull(engine, runner.settings).is_dir()
    loaded = runner.cache.get(engine)
    cn_bytes = sum(p.numel() * p.element_size() for p in loaded.controlnet.parameters())
    unet_bytes = sum(p.numel() * p.element_size() for p in loaded.pipeline.unet.parameters())
    assert cn_bytes > 0 and loaded.nbytes >= cn_bytes + unet_bytes


# -- the runner ----------------------------------------------------------------------------------


@pytest.mark.parametrize("engine_id", ENGINES)
def test_control_text_to_image_returns_the_control_image_size(runner, engine_id):
    control = drawing(96, 80)  # runs at 64 x 64, comes back at 96 x 80
    arts = runner.generate(control_request(engine_id, control, width=64, height=64, samples=2))
    assert [(a.width, a.height) for a in arts] == [(96, 80)] * 2
    assert decode(arts[0].data).shape == (80, 96, 3)
    arts = runner.generate(control_request(engine_id, gradient(128, 64)))  # default: its own size
    assert (arts[0].width, arts[0].height) == (128, 64)


@pytest.mark.parametrize("engine_id", ENGINES)
def test_control_strength_changes_the_result_and_seeds_reproduce_it(runner, engine_id):
    def run(**kw):
        req = control_request(engine_id, drawing(64, 64), **kw)
        return decode(runner.generate(req)[0].data).astype(int)

    none, full = run(control_strength=0.0), run(control_strength=1.0)
    assert np.abs(none - full).mean() > 1.0
    assert np.array_equal(full, run(control_strength=1.0))
    assert np.array_equal(run(), run(control_strength=0.7))  # the default strength
    other = decode(
        runner.generate(control_request(engine_id, half(64, 64), control_strength=1.0))[0].data
    ).astype(int)
    assert np.abs(other - full).mean() > 1.0  # the control image itself matters


def test_control_image_to_image_runs_the_controlnet_img2img_pipeline(demo_registry, stableserve_home):
    engine = demo_registry.get("sd15-controlnet-canny")
    both = engine.model_copy(update={"tasks": (Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE)})
    local = Runner(EngineRegistry(engines=(both,)), Settings(home=stableserve_home))
    req = control_request(
        engine.id,
        half(64, 64),
        task=Task.IMAGE_TO_IMAGE,
        init_image=encode(gradient(80, 64)),
        width=64,
        height=64,
    )
    a = local.generate(req)[0]
    assert (a.width, a.height) == (80, 64)  # image tasks come back at the init image's size
