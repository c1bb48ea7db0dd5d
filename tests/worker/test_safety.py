"""The image safety seam of the runner (``inference.safety``): a checker plugin, diffusers'
``StableDiffusionSafetyChecker`` from an engine folder (a tiny random one built here, with its
thresholds forced), blurring and ``CONTENT_FILTERED``, and a failing checker."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from stableserve.core.types import FinishReason, GenerationRequest, WeightedPrompt
from stableserve.errors import GenerationFailed
from stableserve.inference.runner import Runner
from stableserve.settings import ModerationSettings, Settings


class Explodes:
    def check(self, images):
        raise RuntimeError("checker crashed")


def _request(**kw) -> GenerationRequest:
    return GenerationRequest(
        engine_id="stable-diffusion-v1-5",
        prompts=(WeightedPrompt(text="a red circle"),),
        width=128,
        height=128,
        steps=2,
        seed=5,
        **kw,
    )


def _energy(data: bytes) -> float:
    a = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)
    return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())


def _runner(runner: Runner, stableserve_home, **moderation) -> Runner:
    settings = Settings(home=stableserve_home, moderation=ModerationSettings(**moderation))
    return Runner(runner.registry, settings, cache=runner.cache)  # same loaded pipelines


def test_a_plugin_flags_images_which_come_back_blurred(runner, stableserve_home):
    flagging = _runner(runner, stableserve_home, image_checker="tests.api.moderation_plugins:FlagEveryImage")
    sharp = flagging.generate(_request(image_safety="off", samples=2))
    blurred = flagging.generate(_request(image_safety="blur", samples=2))
    assert [a.finish_reason for a in sharp] == [FinishReason.SUCCESS] * 2
    assert [a.finish_reason for a in blurred] == [FinishReason.CONTENT_FILTERED] * 2
    for s, b in zip(sharp, blurred, strict=True):
        assert (b.width, b.height, b.seed) == (s.width, s.height, s.seed)
        assert _energy(b.data) < _energy(s.data) / 5


def test_no_checker_leaves_images_alone(runner):
    # The demo engines ship no safety checker and no plugin is configured.
    off, blur = runner.generate(_request(image_safety="off")), runner.generate(_request(image_safety="blur"))
    assert off[0].data == blur[0].data and blur[0].finish_reason == FinishReason.SUCCESS


def test_a_failing_checker_fails_the_job(runner, stableserve_home):
    broken = _runner(runner, stableserve_home, image_checker=f"{__name__}:Explodes")
    with pytest.raises(GenerationFailed, match="image safety check failed"):
        broken.generate(_request(image_safety="blur"))
    missing = _runner(runner, stableserve_home, image_checker="no.such.module:Checker")
    with pytest.raises(GenerationFailed):
        missing.generate(_request(image_safety="blur"))


def _tiny_safety_checker(folder, flag: bool) -> None:
    """A random ``StableDiffusionSafetyChecker`` (CLIP ViT of 32 px) + feature extractor in
    ``folder``'s ``safety_checker/`` and ``feature_extractor/``; thresholds below any cosine
    (``flag``) or above any (not ``flag``)."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0 if flag else 2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    checker.save_pretrained(folder / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "feature_extractor"
    )


@pytest.mark.parametrize("flag", [True, False])
def test_the_diffusers_safety_checker_an_engine_ships_is_used(
    runner, stableserve_home, tmp_path, monkeypatch, flag
):
    from stableserve.inference import loading, safety

    _tiny_safety_checker(tmp_path, flag)
    assert safety.DiffusersSafetyChecker.ships_with(tmp_path)
    monkeypatch.setattr(loading, "weights_location", lambda engine, settings: tmp_path)
    fresh = _runner(runner, stableserve_home)  # default settings: safety_checker on, no plugin
    arts = fresh.generate(_request(image_safety="blur", samples=2))
    expected = FinishReason.CONTENT_FILTERED if flag else FinishReason.SUCCESS
    assert [a.finish_reason for a in arts] == [expected] * 2
    # Turned off in the settings: not loaded.
    unchecked = _runner(runner, stableserve_home, safety_checker=False)
    assert unchecked.generate(_request(image_safety="blur"))[0].finish_reason == FinishReason.SUCCESS
