"""Samplers -> diffusers schedulers, weighted prompts -> conditioning tensors (tiny demo pipelines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stableserve.core.engines import FLOW_MATCHING_SAMPLERS, Family
from stableserve.core.types import Sampler, WeightedPrompt
from stableserve.errors import InvalidRequest
from stableserve.inference.prompts import a1111_to_compel, encode_prompts, plain_text
from stableserve.inference.samplers import (
    DIFFUSION_SAMPLERS,
    FLOW_SAMPLERS,
    make_noise_scheduler,
    supported_samplers,
)

diffusers = pytest.importorskip("diffusers")

# scheduler_config.json of stable-diffusion-v1-5 (PNDM), -2-1 (DDIM, v-prediction), SDXL base
# (Euler) and SD3 medium (flow matching).
_BETAS = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085}
SD15_CONFIG = {
    "_class_name": "PNDMScheduler", **_BETAS,
    "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}
SD21_CONFIG = {
    "_class_name": "DDIMScheduler", **_BETAS,
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
SDXL_CONFIG = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
}
SD3_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}

EXPECTED_CLASS = {
    Sampler.DDIM: "DDIMScheduler",
    Sampler.DDPM: "DDPMScheduler",
    Sampler.K_EULER: "EulerDiscreteScheduler",
    Sampler.K_EULER_ANCESTRAL: "EulerAncestralDiscreteScheduler",
    Sampler.K_HEUN: "HeunDiscreteScheduler",
    Sampler.K_DPM_2: "KDPM2DiscreteScheduler",
    Sampler.K_DPM_2_ANCESTRAL: "KDPM2AncestralDiscreteScheduler",
    Sampler.K_LMS: "LMSDiscreteScheduler",
    Sampler.K_DPMPP_2M: "DPMSolverMultistepScheduler",
    Sampler.K_DPMPP_2S_ANCESTRAL: "DPMSolverSinglestepScheduler",
    Sampler.K_DPMPP_SDE: "DPMSolverSDEScheduler",
}


# ---------------------------------------------------------------------------------------------
# Sampler table


def test_table_is_data_covering_the_enum():
    assert set(DIFFUSION_SAMPLERS) == set(Sampler) == set(EXPECTED_CLASS)
    assert tuple(FLOW_SAMPLERS) == FLOW_MATCHING_SAMPLERS
    for spec in [*DIFFUSION_SAMPLERS.values(), *FLOW_SAMPLERS.values()]:
        assert spec.k_diffusion
    assert supported_samplers(Family.SD1) == tuple(Sampler)
    assert supported_samplers(Family.SD3) == FLOW_MATCHING_SAMPLERS
    assert supported_samplers(Family.UPSCALER_ESRGAN) == ()


@pytest.mark.parametrize("sampler", list(Sampler))
@pytest.mark.parametrize(
    ("family", "base"),
    [(Family.SD1, SD15_CONFIG), (Family.SD2_768, SD21_CONFIG), (Family.SDXL, SDXL_CONFIG)],
)
def test_every_sampler_builds_from_the_engine_config(sampler, family, base):
    before = dict(base)
    s = make_noise_scheduler(sampler, base, family, seed=1234)
    assert type(s).__name__ == EXPECTED_CLASS[sampler]
    assert base == before  # not mutated
    cfg = s.config
    # the model's training schedule is kept
    assert (cfg.beta_start, cfg.beta_end, cfg.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert cfg.num_train_timesteps == 1000
    assert cfg.get("prediction_type", "epsilon") == base.get("prediction_type", "epsilon")
    if "timestep_spacing" in base and "timestep_spacing" in cfg:
        assert cfg.timestep_spacing == base["timestep_spacing"]
    if "steps_offset" in cfg:
        assert cfg.steps_offset == 1
    s.set_timesteps(4)
    assert len(s.timesteps) >= 4


def test_sampler_specific_overrides():
    base = {**SD15_CONFIG, "algorithm_type": "sde-dpmsolver++", "solver_order": 3}
    m = make_noise_scheduler(Sampler.K_DPMPP_2M, base, Family.SD1, 0)
    assert (m.config.algorithm_type, m.config.solver_order) == ("dpmsolver++", 2)
    s = make_noise_scheduler(Sampler.K_DPMPP_2S_ANCESTRAL, base, Family.SD1, 0)
    assert (s.config.algorithm_type, s.config.solver_order) == ("dpmsolver++", 2)
    sde = make_noise_scheduler(Sampler.K_DPMPP_SDE, base, Family.SD1, 987654321)
    assert sde.config.noise_sampler_seed == 987654321
    # latent diffusion: no x0 clipping, SD's final alpha - also from configs without the keys
    for sampler in (Sampler.DDIM, Sampler.DDPM):
        sch = make_noise_scheduler(sampler, SDXL_CONFIG | {"clip_sample": True}, Family.SDXL, 0)
        assert sch.config.clip_sample is False
    ddim = make_noise_scheduler(Sampler.DDIM, {"num_train_timesteps": 1000}, Family.SD1, 0)
    assert ddim.config.set_alpha_to_one is False
    # Karras sigmas of the engine config are kept
    karras = make_noise_scheduler(Sampler.K_EULER, SDXL_CONFIG | {"use_karras_sigmas": True}, Family.SDXL, 0)
    assert karras.config.use_karras_sigmas is True


def test_flow_matching_samplers_keep_shift():
    euler = make_noise_scheduler(Sampler.K_EULER, SD3_CONFIG, Family.SD3, 7)
    heun = make_noise_scheduler(Sampler.K_HEUN, SD3_CONFIG, Family.SD3, 7)
    assert type(euler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert type(heun).__name__ == "FlowMatchHeunDiscreteScheduler"
    assert euler.config.shift == heun.config.shift == 3.0


@pytest.mark.parametrize("sampler", [s for s in Sampler if s not in FLOW_MATCHING_SAMPLERS])
def test_flow_matching_rejects_other_samplers(sampler):
    with pytest.raises(InvalidRequest) as err:
        make_noise_scheduler(sampler, SD3_CONFIG, Family.SD3, 7)
    assert err.value.code == "invalid_sampler"
    assert err.value.param == "sampler"
    assert "K_EULER" in err.value.message and "K_HEUN" in err.value.message


def test_esrgan_has_no_sampler():
    with pytest.raises(InvalidRequest) as err:
        make_noise_scheduler(Sampler.K_EULER, SD15_CONFIG, Family.UPSCALER_ESRGAN, 0)
    assert err.value.code == "invalid_sampler"


# ---------------------------------------------------------------------------------------------
# Emphasis syntax


@pytest.mark.parametrize(
    ("a1111", "compel"),
    [
        ("a cat", "a cat"),
        ("a (cat:1.5) photo", "a (cat)1.5 photo"),
        ("(cat: 1.25 )", "(cat)1.25"),
        ("((cat:1.2) dog:0.9)", "((cat)1.2 dog)0.9"),
        ("((cat:1.2):1.1)", "((cat)1.2)1.1"),
        ("(a, b:1.3), c", "(a, b)1.3, c"),
        ("(a:b:1.5)", "(a:b)1.5"),
        ("(cat:.5)", "(cat)0.5"),
        ("(cat:2)", "(cat)2"),
        ("(cat:-1)", "(cat)0"),
        ("(cat:1.5)2", "(cat)1.5 2"),
        ("(cat:1.5). octane", "(cat)1.5 . octane"),
        ("(cat:1.5)(dog:0.5)", "(cat)1.5 (dog)0.5"),
        ("(cat)", "(cat)"),
        ("(meet at 12:30 pm)", "(meet at 12:30 pm)"),
        ("(a:b)", "(a:b)"),
        ("(:1.5)", "(:1.5)"),
        ("[cat]", "[cat]"),
        ("smile :)", "smile :)"),
        ("(cat:1.5", "(cat:1.5"),
        (r"\(cat:1.5\)", r"\(cat:1.5\)"),
        (r"(a \) b:1.2)", r"(a \) b)1.2"),
        ("cat++ (dog)0.8", "cat++ (dog)0.8"),
        ('("a cat", "a dog").blend(0.7, 0.3)', '("a cat", "a dog").blend(0.7, 0.3)'),
    ],
)
def test_a1111_to_compel(a1111, compel):
    assert a1111_to_compel(a1111) == compel


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("a (cat:1.5) photo", "a cat photo"),
        ("a (cat)1.5 photo", "a cat photo"),
        ("cat++ dog-", "cat dog"),
        ("((cat:1.2) dog:0.9)", "cat dog"),
        (r"\(literal\)", "(literal)"),
        ('("a cat", "a dog").blend(0.3, 0.7)', "a dog"),
        ("", ""),
    ],
)
def test_plain_text(text, plain):
    assert plain_text(text) == plain


# ---------------------------------------------------------------------------------------------
# Tiny pipelines


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models: OpenMP threads only add overhead (and spin badly on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


def _load(family: Family, root: Path):
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    from stableserve.inference.demo import ensure_demo_pipeline

    dlogging.disable_progress_bar()
    extra = {"text_encoder_3": None, "tokenizer_3": None} if family == Family.SD3 else {}
    pipe = DiffusionPipeline.from_pretrained(ensure_demo_pipeline(family, root), **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd1(demo_root):
    return _load(Family.SD1, demo_root)


@pytest.fixture(scope="module")
def sdxl(demo_root):
    return _load(Family.SDXL, demo_root)


@pytest.fixture(scope="module")
def sd3(demo_root):
    return _load(Family.SD3, demo_root)


@pytest.fixture(scope="module")
def upscaler(demo_root):
    return _load(Family.UPSCALER_LATENT_X4, demo_root)


def enc(pipe, family, *prompts: tuple[str, float]):
    return encode_prompts(
        pipe, family, [WeightedPrompt(text=t, weight=w) for t, w in prompts], device="cpu",
        dtype=torch.float32,
    )


def _state(pipe) -> dict:
    encoders = [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
    return {
        "config": dict(pipe.config),
        "scheduler": dict(pipe.scheduler.config),
        "params": [
            {k: v.clone() for k, v in e.state_dict().items()} for e in encoders if e is not None
        ],
        "training": [e.training for e in encoders if e is not None],
        "tokenizer_len": len(pipe.tokenizer),
    }


def test_sd1_shapes_and_diffusers_parity(sd1):
    out = enc(sd1, Family.SD1, ("a cat photo", 1.0))
    assert set(out) == {"prompt_embeds", "negative_prompt_embeds"}
    width = sd1.text_encoder.config.hidden_size  # the shapes model's text encoder (128)
    assert out["prompt_embeds"].shape == out["negative_prompt_embeds"].shape == (1, 77, width)
    # unweighted prompt: exactly diffusers' own encoding ("" as the negative)
    ref, ref_neg = sd1.encode_prompt("a cat photo", "cpu", 1, True, negative_prompt=None)
    torch.testing.assert_close(out["prompt_embeds"], ref, rtol=0, atol=0)
    torch.testing.assert_close(out["negative_prompt_embeds"], ref_neg, rtol=0, atol=0)
    out = enc(sd1, Family.SD1, ("a cat photo", 1.0), ("blurry", -1.0))
    ref, ref_neg = sd1.encode_prompt("a cat photo", "cpu", 1, True, negative_prompt="blurry")
    torch.testing.assert_close(out["negative_prompt_embeds"], ref_neg, rtol=0, atol=0)


def test_sdxl_shapes_pooled_and_zero_negative(sdxl):
    assert sdxl.config.force_zeros_for_empty_prompt
    out = enc(sdxl, Family.SDXL, ("a cat photo", 1.0))
    assert out["prompt_embeds"].shape == (1, 77, 32 + 64)
    assert out["pooled_prompt_embeds"].shape == (1, 32)
    assert torch.count_nonzero(out["negative_prompt_embeds"]) == 0
    assert torch.count_nonzero(out["negative_pooled_prompt_embeds"]) == 0
    ref = sdxl.encode_prompt("a cat photo", device="cpu", num_images_per_prompt=1,
                             do_classifier_free_guidance=True)
    torch.testing.assert_close(out["prompt_embeds"], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(out["pooled_prompt_embeds"], ref[2], rtol=0, atol=0)
    out = enc(sdxl, Family.SDXL, ("a cat photo", 1.0), ("blurry", -1.0))
    ref = sdxl.encode_prompt(
        "a cat photo", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
        negative_prompt="blurry",
    )
    torch.testing.assert_close(out["negative_prompt_embeds"], ref[1], rtol=0, atol=0)
    torch.testing.assert_close(out["negative_pooled_prompt_embeds"], ref[3], rtol=0, atol=0)
    # emphasis changes the sequence embedding, not the pooled one (plain words: compel issue #96)
    weighted = enc(sdxl, Family.SDXL, ("a (cat:1.5) photo", 1.0))
    assert not torch.allclose(weighted["prompt_embeds"], ref[0])
    torch.testing.assert_close(weighted["pooled_prompt_embeds"], ref[2], rtol=0, atol=0)


def test_sd3_shapes_and_emphasis_stripped(sd3):
    out = enc(sd3, Family.SD3, ("a (cat:1.5) photo", 1.0))
    assert set(out) == {"prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                        "negative_pooled_prompt_embeds"}
    assert out["prompt_embeds"].shape == out["negative_prompt_embeds"].shape == (1, 77 + 256, 128)
    assert out["pooled_prompt_embeds"].shape == (1, 32 + 64)
    plain = enc(sd3, Family.SD3, ("a cat photo", 1.0))
    torch.testing.assert_close(out["prompt_embeds"], plain["prompt_embeds"], rtol=0, atol=0)
    ref = sd3.encode_prompt("a cat photo", None, None, device="cpu", do_classifier_free_guidance=True)
    torch.testing.assert_close(out["prompt_embeds"], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(out["negative_prompt_embeds"], ref[1], rtol=0, atol=0)
    torch.testing.assert_close(out["negative_pooled_prompt_embeds"], ref[3], rtol=0, atol=0)
    two = enc(sd3, Family.SD3, ("a cat", 3.0), ("a dog", 1.0), ("ugly", -2.0))
    a, b = enc(sd3, Family.SD3, ("a cat", 1.0)), enc(sd3, Family.SD3, ("a dog", 1.0))
    torch.testing.assert_close(two["prompt_embeds"], (3 * a["prompt_embeds"] + b["prompt_embeds"]) / 4)
    torch.testing.assert_close(
        two["pooled_prompt_embeds"], (3 * a["pooled_prompt_embeds"] + b["pooled_prompt_embeds"]) / 4
    )
    neg = enc(sd3, Family.SD3, ("x", 1.0), ("ugly", -1.0))
    torch.testing.assert_close(two["negative_prompt_embeds"], neg["negative_prompt_embeds"])


def test_unparsable_compel_syntax_is_read_literally(sd1):
    bad = '("a", "b").blend(1)'  # one weight for two prompts: compel refuses it
    assert plain_text(bad).endswith(".blend(1)")
    out = enc(sd1, Family.SD1, (bad, 1.0), ("(" * 60 + "deep" + ")" * 60, -1.0))  # too deep for compel
    width = sd1.text_encoder.config.hidden_size
    assert out["prompt_embeds"].shape == out["negative_prompt_embeds"].shape == (1, 2 * 77, width)


def test_upscaler_works_like_sd1(upscaler):
    out = enc(upscaler, Family.UPSCALER_LATENT_X4, ("a cat", 1.0))
    assert set(out) == {"prompt_embeds", "negative_prompt_embeds"}
    assert out["prompt_embeds"].shape == (1, 77, 32)


def test_esrgan_gets_no_conditioning():
    assert encode_prompts(object(), Family.UPSCALER_ESRGAN, [WeightedPrompt(text="x")], device="cpu",
                          dtype=torch.float32) == {}


def test_emphasis_changes_embedding(sd1):
    plain = enc(sd1, Family.SD1, ("a cat", 1.0))["prompt_embeds"]
    a1111 = enc(sd1, Family.SD1, ("a (cat:1.5)", 1.0))["prompt_embeds"]
    compel = enc(sd1, Family.SD1, ("a (cat)1.5", 1.0))["prompt_embeds"]
    down = enc(sd1, Family.SD1, ("a (cat:0.5)", 1.0))["prompt_embeds"]
    assert not torch.allclose(plain, a1111)
    assert not torch.allclose(plain, down)
    torch.testing.assert_close(a1111, compel, rtol=0, atol=0)


def test_blend_is_the_weighted_mean(sd1, sdxl):
    for pipe, family in ((sd1, Family.SD1), (sdxl, Family.SDXL)):
        blend = enc(pipe, family, ("a cat", 3.0), ("a red dog", 1.0), ("ugly", -0.5), ("blurry", -1.5))
        a, b = enc(pipe, family, ("a cat", 1.0)), enc(pipe, family, ("a red dog", 1.0))
        n1 = enc(pipe, family, ("x", 1.0), ("ugly", -1.0))
        n2 = enc(pipe, family, ("x", 1.0), ("blurry", -1.0))
        torch.testing.assert_close(blend["prompt_embeds"], (3 * a["prompt_embeds"] + b["prompt_embeds"]) / 4)
        torch.testing.assert_close(
            blend["negative_prompt_embeds"],
            (0.5 * n1["negative_prompt_embeds"] + 1.5 * n2["negative_prompt_embeds"]) / 2,
        )
        if family == Family.SDXL:
            torch.testing.assert_close(
                blend["pooled_prompt_embeds"], (3 * a["pooled_prompt_embeds"] + b["pooled_prompt_embeds"]) / 4
            )
            torch.testing.assert_close(
                blend["negative_pooled_prompt_embeds"],
                (0.5 * n1["negative_pooled_prompt_embeds"] + 1.5 * n2["negative_pooled_prompt_embeds"]) / 2,
            )


def test_long_prompts_are_chunked_and_padded(sd1, sdxl):
    long = ", ".join(["a photo of a cat"] * 16)  # > 75 tokens: 2 chunks of 77
    for pipe, family in ((sd1, Family.SD1), (sdxl, Family.SDXL)):
        out = enc(pipe, family, (long, 1.0), ("a dog", 1.0), ("ugly", -1.0))
        n = out["prompt_embeds"].shape[1]
        assert n > 77 and n % 77 == 0
        assert out["negative_prompt_embeds"].shape == out["prompt_embeds"].shape
        # the short prompt is padded with the empty prompt's chunk: the blend is the mean of the
        # long prompt and [short, empty, empty, ...]
        short = enc(pipe, family, ("a dog", 1.0))["prompt_embeds"]
        empty = enc(pipe, family, ("x", -1.0))["prompt_embeds"]  # no positive prompt: ""
        alone = enc(pipe, family, (long, 1.0))["prompt_embeds"]
        padded = torch.cat([short] + [empty] * (n // 77 - 1), dim=1)
        torch.testing.assert_close(out["prompt_embeds"], (alone + padded) / 2)


def test_deterministic_and_pipeline_untouched(sd1, sdxl):
    for pipe, family in ((sd1, Family.SD1), (sdxl, Family.SDXL)):
        before = _state(pipe)
        prompts = (("a (cat:1.4) on a [mat], dog--", 0.8), ("sunset", 0.2), ("(ugly:1.2)", -1.0))
        first = enc(pipe, family, *prompts)
        second = enc(pipe, family, *prompts)
        assert first.keys() == second.keys()
        for k in first:
            assert torch.equal(first[k], second[k])
        after = _state(pipe)
        assert after["config"] == before["config"] and after["scheduler"] == before["scheduler"]
        assert after["training"] == before["training"] and after["tokenizer_len"] == before["tokenizer_len"]
        for p0, p1 in zip(before["params"], after["params"], strict=True):
            assert all(torch.equal(p0[k], p1[k]) for k in p0)


def test_dtype_and_no_positive_prompt(sd1):
    out = encode_prompts(sd1, Family.SD1, [WeightedPrompt(text="ugly", weight=-1)], device="cpu",
                         dtype=torch.float16)
    assert out["prompt_embeds"].dtype == torch.float16
    ref, _ = sd1.encode_prompt("", "cpu", 1, False)
    torch.testing.assert_close(out["prompt_embeds"], ref.half())


# ---------------------------------------------------------------------------------------------
# Every scheduler inside a real pipeline call


STOCHASTIC = (Sampler.DDPM, Sampler.K_EULER_ANCESTRAL, Sampler.K_DPM_2_ANCESTRAL, Sampler.K_DPMPP_SDE)


def _run(pipe, cond, scheduler, seed: int = 1) -> np.ndarray:
    view = type(pipe).from_pipe(pipe, scheduler=scheduler)
    view.set_progress_bar_config(disable=True)
    out = view(**cond, num_inference_steps=2, width=32, height=32, output_type="np",
               generator=torch.Generator("cpu").manual_seed(seed))
    return out.images[0]


@pytest.mark.parametrize("sampler", list(Sampler))
def test_each_sampler_runs_in_the_sd1_pipeline(sd1, sampler):
    cond = enc(sd1, Family.SD1, ("a (cat:1.2)", 1.0), ("ugly", -1.0))
    base = sd1.scheduler.config
    image = _run(sd1, cond, make_noise_scheduler(sampler, base, Family.SD1, 42))
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()
    if sampler in STOCHASTIC:  # fresh noise every step: still reproducible from the seed
        again = _run(sd1, cond, make_noise_scheduler(sampler, base, Family.SD1, 42))
        np.testing.assert_array_equal(image, again)
    assert type(sd1.scheduler).__name__ == "PNDMScheduler"  # the engine's own scheduler is untouched


def test_dpmpp_sde_noise_follows_the_seed(sd1):
    from diffusers import DPMSolverSDEScheduler

    cond = enc(sd1, Family.SD1, ("a cat", 1.0))
    base = sd1.scheduler.config
    a = _run(sd1, cond, make_noise_scheduler(Sampler.K_DPMPP_SDE, base, Family.SD1, 7))
    b = _run(sd1, cond, make_noise_scheduler(Sampler.K_DPMPP_SDE, base, Family.SD1, 7))
    c = _run(sd1, cond, make_noise_scheduler(Sampler.K_DPMPP_SDE, base, Family.SD1, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # same generator, other Brownian tree
    # without noise_sampler_seed diffusers draws an unseeded tree: not reproducible
    u1 = _run(sd1, cond, DPMSolverSDEScheduler.from_config(base))
    u2 = _run(sd1, cond, DPMSolverSDEScheduler.from_config(base))
    assert not np.array_equal(u1, u2)


@pytest.mark.parametrize("sampler", FLOW_MATCHING_SAMPLERS)
def test_flow_samplers_run_in_the_sd3_pipeline(sd3, sampler):
    cond = enc(sd3, Family.SD3, ("a (cat:1.2)", 1.0), ("ugly", -1.0))
    image = _run(sd3, cond, make_noise_scheduler(sampler, sd3.scheduler.config, Family.SD3, 3))
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()


def test_sdxl_pipeline_accepts_long_weighted_conditioning(sdxl):
    long = ", ".join(["a (red:1.3) fox in the snow"] * 12)
    cond = enc(sdxl, Family.SDXL, (long, 1.0), ("blurry", -1.0))
    assert cond["prompt_embeds"].shape[1] > 77
    scheduler = make_noise_scheduler(Sampler.K_DPMPP_2M, sdxl.scheduler.config, Family.SDXL, 5)
    image = _run(sdxl, cond, scheduler)
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()
