"""Style presets: the 17 names of the contract, templating, errors (no torch needed)."""

from __future__ import annotations

import pytest

from stableserve.core.presets import PLACEHOLDER, STYLE_PRESETS, apply_style_preset, style_templates
from stableserve.core.types import WeightedPrompt
from stableserve.errors import InvalidRequest

CONTRACT_PRESETS = {
    "3d-model", "analog-film", "anime", "cinematic", "comic-book", "digital-art", "enhance",
    "fantasy-art", "isometric", "line-art", "low-poly", "modeling-compound", "neon-punk",
    "origami", "photographic", "pixel-art", "tile-texture",
}


def test_all_17_presets_exist():
    assert len(STYLE_PRESETS) == 17
    assert set(STYLE_PRESETS) == CONTRACT_PRESETS
    assert list(STYLE_PRESETS) == sorted(STYLE_PRESETS)


@pytest.mark.parametrize("name", sorted(CONTRACT_PRESETS))
def test_templates_are_well_formed(name):
    t = style_templates()[name]
    assert t.prompt.count(PLACEHOLDER) == 1
    assert t.negative_prompt
    # no prompt-weighting syntax in the templates themselves
    for text in (t.prompt.replace(PLACEHOLDER, "x"), t.negative_prompt):
        assert "(" not in text and ")" not in text
        assert not any(w.endswith(("+", "-")) for w in text.replace(",", " ").split())


def test_none_leaves_prompts_unchanged():
    prompts = (WeightedPrompt(text="a cat"), WeightedPrompt(text="ugly", weight=-1))
    assert apply_style_preset(None, prompts) is prompts


def test_template_applied_to_positive_prompts_only():
    prompts = (
        WeightedPrompt(text="a (red:1.3) fox", weight=0.7),
        WeightedPrompt(text="a dog {not a placeholder}", weight=0.3),
        WeightedPrompt(text="blurry", weight=-0.5),
    )
    out = apply_style_preset("anime", prompts)
    t = style_templates()["anime"]
    assert len(out) == 4
    assert out[0] == WeightedPrompt(text=t.prompt.replace(PLACEHOLDER, "a (red:1.3) fox"), weight=0.7)
    assert out[1].text == t.prompt.replace(PLACEHOLDER, "a dog {not a placeholder}")
    assert out[1].weight == 0.3
    assert out[2] == prompts[2]
    assert out[3] == WeightedPrompt(text=t.negative_prompt, weight=-1.0)
    assert "a (red:1.3) fox" in out[0].text and out[0].text != "a (red:1.3) fox"


@pytest.mark.parametrize("name", sorted(CONTRACT_PRESETS))
def test_every_preset_applies(name):
    out = apply_style_preset(name, (WeightedPrompt(text="lighthouse"),))
    assert "lighthouse" in out[0].text and out[0].weight == 1.0
    assert out[-1].weight == -1.0


def test_long_prompt_does_not_fail_validation():
    text = "x" * 10_000
    out = apply_style_preset("cinematic", (WeightedPrompt(text=text),))
    assert len(out[0].text) > 10_000


def test_unknown_preset_error_lists_valid_values():
    with pytest.raises(InvalidRequest) as err:
        apply_style_preset("watercolor", (WeightedPrompt(text="a cat"),))
    assert err.value.code == "bad_request"
    assert err.value.param == "style_preset"
    assert "watercolor" in err.value.message
    for name in CONTRACT_PRESETS:
        assert name in err.value.message
