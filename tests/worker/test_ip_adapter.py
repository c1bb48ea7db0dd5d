"""IP-Adapter style conditioning on the demo engine ``sd15-ip-adapter`` (tiny adapter, same format
as h94/IP-Adapter's, loaded by diffusers' ``load_ip_adapter``), plus the real-weights path from a
Hugging Face cache laid out by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from safetensors import safe_open

from stableserve.core.engines import DEMO_IP_ADAPTER_REPO, EngineSpec, Family, IPAdapterSource, load_registry
from stableserve.core.types import GenerationRequest, Task, WeightedPrompt
from stableserve.errors import InvalidRequest
from stableserve.inference.demo import ensure_demo_pipeline
from stableserve.inference.ip_adapter import (
    DEMO_LAYOUT,
    build_demo_ip_adapter,
    ensure_demo_ip_adapter,
    has_ip_adapter,
)
from stableserve.inference.loading import load_engine, readiness
from stableserve.settings import Settings
from tests.worker.conftest import decode, encode, gradient

ENGINE = "sd15-ip-adapter"
P = (WeightedPrompt(text="a lighthouse on a cliff"),)


def _style(kind: str) -> Image.Image:
    if kind == "gradient":
        return gradient(96, 96)
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8), "RGB")


def t2i(engine_id: str = ENGINE, **kw) -> GenerationRequest:
    kw.setdefault("prompts", P)
    kw.setdefault("steps", 2)
    kw.setdefault("seed", 11)
    kw.setdefault("width", 64)
    kw.setdefault("height", 64)
    return GenerationRequest(engine_id=engine_id, **kw)


def _pixels(runner, req: GenerationRequest) -> np.ndarray:
    (art,) = runner.generate(req)
    return decode(art.data).astype(int)


def test_registry_entry_and_demo_layout():
    public, demo = load_registry("public").get(ENGINE), load_registry("demo").get(ENGINE)
    assert public.family == Family.SD1 and public.tasks == (Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE)
    assert public.ip_adapter == IPAdapterSource(
        repo="h94/IP-Adapter",
        subfolder="models",
        weight_name="ip-adapter_sd15.safetensors",
        image_encoder_folder="models/image_encoder",
    )
    assert demo.is_demo and demo.ip_adapter.repo == DEMO_IP_ADAPTER_REPO
    assert load_registry("demo").get("stable-diffusion-v1-5").ip_adapter is None
    with pytest.raises(ValidationError, match="ip_adapter"):
        EngineSpec.model_validate(
            {**load_registry("public").get("sd3.5-medium").model_dump(), "ip_adapter": {"repo": "x/y"}}
        )


def test_demo_adapter_has_the_release_format_and_builds_identically(stableserve_home, tmp_path):
    folder = ensure_demo_ip_adapter(Family.SD1, Path(stableserve_home) / "demo")
    weights = folder / "models" / "ip-adapter_sd15.safetensors"
    encoder = folder / "models" / "image_encoder"
    assert {p.name for p in encoder.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    }
    from diffusers import UNet2DConditionModel

    base = ensure_demo_pipeline(Family.SD1, Path(stableserve_home) / "demo")
    unet = dict(UNet2DConditionModel.load_config(str(base / "unet")))  # the shapes model's UNet
    cross, widths = unet["cross_attention_dim"], unet["block_out_channels"]
    first = widths[list(unet["down_block_types"]).index("CrossAttnDownBlock2D")]
    with safe_open(str(weights), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("image_proj.proj.weight").shape == (4 * cross, 32)  # 4 tokens x cross, CLIP dim
        assert f.get_tensor("ip_adapter.1.to_k_ip.weight").shape == (first, cross)  # first attention level
        assert f.get_tensor("ip_adapter.13.to_v_ip.weight").shape == (widths[-1], cross)  # mid block (last)
    # 7 cross-attention layers in the demo SD1 UNet -> keys 1, 3, ..., 13, as in the original files.
    assert {k for k in keys if k.startswith("ip_adapter.")} == {
        f"ip_adapter.{n}.{part}.weight" for n in range(1, 14, 2) for part in ("to_k_ip", "to_v_ip")
    }
    assert {k for k in keys if k.startswith("image_proj.")} == {
        "image_proj.proj.weight",
        "image_proj.proj.bias",
        "image_proj.norm.weight",
        "image_proj.norm.bias",
    }
    build_demo_ip_adapter(Family.SD1, tmp_path, unet)
    assert (tmp_path / "models" / DEMO_LAYOUT.weight_name).read_bytes() == weights.read_bytes()
    assert (tmp_path / "models/image_encoder/model.safetensors").read_bytes() == (
        encoder / "model.safetensors"
    ).read_bytes()


def test_demo_engine_loads_the_adapter_through_load_ip_adapter(runner):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    pipe = runner.cache.get(runner.registry.get(ENGINE)).pipeline
    assert has_ip_adapter(pipe)
    assert isinstance(pipe.image_encoder, CLIPVisionModelWithProjection)
    assert isinstance(pipe.feature_extractor, CLIPImageProcessor)
    ip_procs = [p for p in pipe.unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
    assert len(ip_procs) == 7
    plain = runner.cache.get(runner.registry.get("stable-diffusion-v1-5")).pipeline
    assert not has_ip_adapter(plain)


def test_text_to_image_with_style_is_deterministic_and_follows_strength_and_style(runner):
    style = encode(_style("gradient"))
    a = _pixels(runner, t2i(style_image=style, style_strength=1.0))
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, _pixels(runner, t2i(style_image=style, style_strength=1.0)))
    zero = _pixels(runner, t2i(style_image=style, style_strength=0.0))
    assert np.abs(a - zero).max() > 0
    other = _pixels(runner, t2i(style_image=encode(_style("noise")), style_strength=1.0))
    assert np.abs(a - other).max() > 0
    half = _pixels(runner, t2i(style_image=style))  # style_strength None = 0.5
    assert np.abs(half - a).max() > 0 and np.abs(half - zero).max() > 0


@pytest.mark.parametrize("cfg_scale", [1.0, 7.0])  # without and with classifier-free guidance
def test_batches_of_samples_take_the_style_image(runner, cfg_scale):
    req = t2i(style_image=encode(_style("gradient")), style_strength=1.0, samples=2, cfg_scale=cfg_scale)
    arts = runner.generate(req)
    assert [a.seed for a in arts] == [11, 12] and arts[0].data != arts[1].data
    solo = _pixels(runner, t2i(style_image=req.style_image, style_strength=1.0, seed=12, cfg_scale=cfg_scale))
    assert np.abs(solo - decode(arts[1].data).astype(int)).max() <= 1


def test_without_style_image_or_at_strength_zero_equals_the_plain_engine(runner):
    plain = _pixels(runner, t2i("stable-diffusion-v1-5"))  # same demo SD1 weights, no adapter
    assert np.array_equal(_pixels(runner, t2i()), plain)
    zero = _pixels(runner, t2i(style_image=encode(_style("noise")), style_strength=0.0))
    assert np.array_equal(zero, plain)


def test_style_transfer_image_to_image_keeps_the_init_size(runner):
    init = encode(gradient(128, 64))
    kw = dict(task=Task.IMAGE_TO_IMAGE, init_image=init, width=None, height=None, schedule_start=0.9)
    (art,) = runner.generate(t2i(style_image=encode(_style("noise")), style_strength=1.0, **kw))
    assert (art.width, art.height) == (128, 64)
    styled = decode(art.data).astype(int)
    assert styled.shape == (64, 128, 3)
    unstyled = _pixels(runner, t2i(**kw))
    assert np.abs(styled - unstyled).max() > 0


def test_style_image_on_an_engine_without_adapter_is_invalid(runner):
    with pytest.raises(InvalidRequest) as exc:
        runner.generate(t2i("stable-diffusion-v1-5", style_image=encode(_style("gradient"))))
    assert exc.value.param == "style_image"
    with pytest.raises(InvalidRequest) as exc:
        runner.generate(t2i(style_image=encode(Image.new("RGB", (8, 8)), "BMP")))
    assert exc.value.param == "style_image"


def _fake_hf_cache(settings: Settings, repo: str, folder: Path) -> None:
    """Lay out a Hugging Face cache entry (refs/main -> snapshot) holding ``folder``'s files."""
    base = settings.models_dir / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(folder, base / "snapshots" / commit)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)


def test_public_engine_needs_the_adapter_in_the_cache_then_loads_it(tmp_path, stableserve_home):
    settings = Settings(home=tmp_path)
    demo_root = Path(stableserve_home) / "demo"
    engine = load_registry("public").get(ENGINE)
    _fake_hf_cache(settings, engine.source.repo, ensure_demo_pipeline(Family.SD1, demo_root))
    r = readiness(engine, settings)
    assert not r.ready and "IP-Adapter h94/IP-Adapter" in r.reason and f"models pull {ENGINE}" in r.reason
    _fake_hf_cache(settings, "h94/IP-Adapter", ensure_demo_ip_adapter(Family.SD1, demo_root))
    assert readiness(engine, settings).ready
    loaded = load_engine(engine, settings)
    assert has_ip_adapter(loaded.pipeline) and loaded.pipeline.image_encoder is not None
