"""Demo pipelines: every family builds, loads back through the real loaders and generates.

One session-scoped cache folder holds the nine demo pipelines; generations are tiny (128x128
or a 32x32 upscaler input, 2 steps) to keep the file fast on a 2-core CPU.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stableserve.core.engines import Family
from stableserve.inference import demo
from stableserve.inference.demo import (
    DEMO_VERSION,
    ESRGAN_WEIGHTS,
    build_demo_pipeline,
    ensure_demo_pipeline,
)
from stableserve.inference.demo_shapes import SHAPES_FAMILIES
from stableserve.inference.spandrel_compat import TORCHVISION_MISSING, import_spandrel

PROMPT = "a lighthouse on a cliff"
DIFFUSERS_FAMILIES = [
    f
    for f in Family
    if f not in (Family.UPSCALER_ESRGAN, Family.SEGMENTER_CLIPSEG, Family.MATTING_VITMATTE)
]  # the last two are transformers folders: tests/worker/test_segmentation.py
EXPECTED_PIPELINE = {
    Family.SD1: "StableDiffusionPipeline",
    Family.SD2_512: "StableDiffusionPipeline",
    Family.SD2_768: "StableDiffusionPipeline",
    Family.SDXL: "StableDiffusionXLPipeline",
    Family.SDXL_BETA: "StableDiffusionXLPipeline",
    Family.SD3: "StableDiffusion3Pipeline",
    Family.INPAINT: "StableDiffusionInpaintPipeline",
    Family.UPSCALER_LATENT_X4: "StableDiffusionUpscalePipeline",
}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


def _image(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _load(folder: Path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("family", DIFFUSERS_FAMILIES, ids=lambda f: f.value)
def test_diffusers_family_builds_loads_and_generates(family: Family, demo_root: Path) -> None:
    folder = ensure_demo_pipeline(family, demo_root)
    assert folder == demo_root / f"{family.value}-{DEMO_VERSION}"
    assert (folder / "model_index.json").is_file()

    pipe = _load(folder)
    assert type(pipe).__name__ == EXPECTED_PIPELINE[family]
    generator = torch.Generator().manual_seed(0)
    common = {"prompt": PROMPT, "num_inference_steps": 2, "generator": generator}
    if family == Family.UPSCALER_LATENT_X4:
        assert pipe.vae_scale_factor == 4
        out = pipe(image=_image(32), **common).images[0]
        assert out.size == (128, 128)
        return
    assert pipe.vae_scale_factor == (16 if family in SHAPES_FAMILIES else 8)
    if family == Family.INPAINT:
        mask = Image.new("L", (128, 128), 0)
        mask.paste(255, (32, 32, 96, 96))
        out = pipe(image=_image(128), mask_image=mask, height=128, width=128, **common).images[0]
    else:
        out = pipe(height=128, width=64 if family == Family.SDXL_BETA else 128, **common).images[0]
    assert out.size == ((64, 128) if family == Family.SDXL_BETA else (128, 128))
    assert np.asarray(out).std() > 0  # an image, not a blank


def test_pipeline_configs_match_their_families(demo_root: Path) -> None:
    sd768 = _load(ensure_demo_pipeline(Family.SD2_768, demo_root))
    assert sd768.scheduler.config.prediction_type == "v_prediction"
    assert sd768.unet.config.sample_size * sd768.vae_scale_factor == 768
    sdxl = _load(ensure_demo_pipeline(Family.SDXL, demo_root))
    assert sdxl.unet.config.sample_size * sdxl.vae_scale_factor == 1024
    assert sdxl.unet.config.addition_embed_type == "text_time"
    assert sdxl.config.force_zeros_for_empty_prompt is True
    sd3 = _load(ensure_demo_pipeline(Family.SD3, demo_root))
    assert type(sd3.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert sd3.scheduler.config.shift == 3.0
    assert sd3.vae.config.latent_channels == 16
    inpaint = _load(ensure_demo_pipeline(Family.INPAINT, demo_root))
    # the shapes model's 4-channel UNet: the pipeline blends the mask in latent space
    assert inpaint.unet.config.in_channels == 4
    assert inpaint.unet.config.sample_size * inpaint.vae_scale_factor == 512


def test_esrgan_builds_and_loads_with_spandrel(demo_root: Path) -> None:
    folder = ensure_demo_pipeline(Family.UPSCALER_ESRGAN, demo_root)
    spandrel = import_spandrel()
    model = spandrel.ModelLoader().load_from_file(str(folder / ESRGAN_WEIGHTS)).eval()
    assert model.architecture.id == "ESRGAN"
    assert model.scale == 2
    assert model.input_channels == 3
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 3, 64, 64)


def test_tokenizer_gives_distinct_ids_for_distinct_words(demo_root: Path) -> None:
    pipe = _load(ensure_demo_pipeline(Family.SD1, demo_root))
    tok = pipe.tokenizer
    ids = tok(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert ids[0] == tok.bos_token_id
    words = ids[1:6]  # a, lighthouse, on, a, cliff: one token each in the demo vocabulary
    assert words[0] == words[3]
    assert len({words[0], words[1], words[2], words[4]}) == 4
    assert ids[6] == tok.eos_token_id and ids[-1] == tok.pad_token_id
    assert max(ids) < pipe.text_encoder.config.vocab_size
    assert pipe.text_encoder.config.eos_token_id == tok.eos_token_id
    long = tok(" ".join(["lighthouse"] * 100), padding="max_length", max_length=77, truncation=True)
    assert len(long.input_ids) == 77


@pytest.mark.parametrize("family", list(Family), ids=lambda f: f.value)
def test_builds_are_byte_identical(family: Family, demo_root: Path, tmp_path: Path) -> None:
    first = ensure_demo_pipeline(family, demo_root)
    second = tmp_path / "again"
    build_demo_pipeline(family, second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert any(str(f).endswith(".safetensors") for f in files)
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def test_build_leaves_the_callers_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_demo_pipeline(Family.UPSCALER_ESRGAN, tmp_path / "e")
    assert torch.equal(torch.rand(3), expected)


def test_ensure_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = demo.build_demo_pipeline

    def counting(family: Family, dest: Path) -> None:
        calls.append(dest)
        real(family, dest)

    monkeypatch.setattr(demo, "build_demo_pipeline", counting)
    first = ensure_demo_pipeline(Family.UPSCALER_ESRGAN, tmp_path)
    second = ensure_demo_pipeline(Family.UPSCALER_ESRGAN, tmp_path)
    assert first == second == tmp_path / f"upscaler-esrgan-{DEMO_VERSION}"
    assert len(calls) == 1
    assert calls[0] != first  # built elsewhere, then renamed into place
    assert (first / ESRGAN_WEIGHTS).is_file()
    assert not list(tmp_path.glob("*.tmp"))


def test_ensure_concurrent_callers_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = demo.build_demo_pipeline

    def slow_counting(family: Family, dest: Path) -> None:
        calls.append(dest)
        threading.Event().wait(0.3)  # widen the race window
        real(family, dest)

    monkeypatch.setattr(demo, "build_demo_pipeline", slow_counting)
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(ensure_demo_pipeline(Family.UPSCALER_ESRGAN, tmp_path))
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1 and len(results) == 4


_BUILD_IN_SUBPROCESS = """
import sys
from pathlib import Path
from stableserve.inference import demo

real = demo.build_demo_pipeline

def logged(family, dest):
    with open(sys.argv[2], "a") as fh:
        fh.write("build\\n")
    real(family, dest)

demo.build_demo_pipeline = logged
print(demo.ensure_demo_pipeline("upscaler-esrgan", Path(sys.argv[1])))
"""


def test_ensure_concurrent_processes_build_once(tmp_path: Path) -> None:
    root, log = tmp_path / "root", tmp_path / "builds.log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILD_IN_SUBPROCESS, str(root), str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert {out.strip() for out, _ in outs} == {str(root / f"upscaler-esrgan-{DEMO_VERSION}")}
    assert log.read_text().count("build") == 1


def test_ensure_cleans_up_after_a_crashed_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(family: Family, dest: Path) -> None:
        (dest / "partial.bin").write_bytes(b"x")
        raise RuntimeError("boom")

    monkeypatch.setattr(demo, "build_demo_pipeline", crash)
    with pytest.raises(RuntimeError, match="boom"):
        ensure_demo_pipeline(Family.UPSCALER_ESRGAN, tmp_path)
    assert not (tmp_path / f"upscaler-esrgan-{DEMO_VERSION}").exists()
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()
    folder = ensure_demo_pipeline(Family.UPSCALER_ESRGAN, tmp_path)
    assert (folder / ESRGAN_WEIGHTS).is_file()


def test_spandrel_import_leaves_no_fake_torchvision() -> None:
    spandrel = import_spandrel()
    assert hasattr(spandrel, "ModelLoader")
    tv = sys.modules.get("torchvision")
    if tv is not None:  # a real torchvision is installed: nothing was faked
        assert "placeholder" not in (tv.__doc__ or "")
        return
    lama = sys.modules["spandrel.architectures.LaMa.__arch.LaMa"]
    with pytest.raises(RuntimeError, match=TORCHVISION_MISSING):
        lama.rotate(torch.zeros(1, 1, 2, 2), 0.0)
