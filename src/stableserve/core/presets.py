"""Stability's 17 style presets (v1 ``style_preset``) as prompt templates.

The templates live in ``stableserve/data/style_presets.yaml`` (data, not code): each preset has
a ``prompt`` template with a ``{prompt}`` placeholder and a ``negative_prompt``. Applying a
preset is pure text work on ``WeightedPrompt`` tuples, so it belongs to the protocol-neutral
core (no torch here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

import yaml

from stableserve.core.types import WeightedPrompt
from stableserve.errors import InvalidRequest

__all__ = ["STYLE_PRESETS", "PLACEHOLDER", "StyleTemplate", "apply_style_preset", "style_templates"]

PLACEHOLDER = "{prompt}"
"""Marker in a preset's ``prompt`` template that the user's prompt text replaces."""

_FILE = "stableserve/data/style_presets.yaml"

_EXPECTED = (
    "3d-model",
    "analog-film",
    "anime",
    "cinematic",
    "comic-book",
    "digital-art",
    "enhance",
    "fantasy-art",
    "isometric",
    "line-art",
    "low-poly",
    "modeling-compound",
    "neon-punk",
    "origami",
    "photographic",
    "pixel-art",
    "tile-texture",
)


@dataclass(frozen=True)
class StyleTemplate:
    """One preset: ``prompt`` template (contains ``{prompt}`` exactly once) and ``negative_prompt``.

    ``negative_prompt`` is added as one more negative prompt (weight -1); it may be empty.
    Raises ``ValueError`` on construction when ``prompt`` lacks the placeholder.
    """

    prompt: str
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if self.prompt.count(PLACEHOLDER) != 1:
            raise ValueError(f"style template must contain {PLACEHOLDER} exactly once: {self.prompt!r}")


def _load() -> Mapping[str, StyleTemplate]:
    text = resources.files("stableserve.data").joinpath("style_presets.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    presets = raw.get("presets") if isinstance(raw, dict) else None
    if not isinstance(presets, dict):
        raise RuntimeError(f"{_FILE}: expected a 'presets' mapping")
    out: dict[str, StyleTemplate] = {}
    for name, entry in presets.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
            raise RuntimeError(f"{_FILE}: preset {name!r} needs a 'prompt' string")
        out[str(name)] = StyleTemplate(entry["prompt"], str(entry.get("negative_prompt") or ""))
    if set(out) != set(_EXPECTED):
        missing = sorted(set(_EXPECTED) - set(out))
        extra = sorted(set(out) - set(_EXPECTED))
        raise RuntimeError(f"{_FILE}: missing {missing}, unexpected {extra}")
    return MappingProxyType({name: out[name] for name in _EXPECTED})


_TEMPLATES = _load()

STYLE_PRESETS: tuple[str, ...] = tuple(_TEMPLATES)
"""The 17 preset names of the Stability contract, in contract (alphabetical) order."""


def style_templates() -> Mapping[str, StyleTemplate]:
    """Read-only mapping preset name -> ``StyleTemplate`` (loaded once from the package data)."""
    return _TEMPLATES


def apply_style_preset(preset: str | None, prompts: tuple[WeightedPrompt, ...]) -> tuple[WeightedPrompt, ...]:
    """Apply a style preset to a request's prompts.

    - ``preset`` ``None``: ``prompts`` is returned unchanged.
    - Each positive prompt (weight > 0) has its text put into the preset's template (``{prompt}``
      replaced literally; braces or emphasis syntax in the user's text are kept as they are).
      Weights are kept. Negative prompts (weight < 0) and zero-weight prompts are unchanged.
    - The preset's ``negative_prompt`` is appended as one more ``WeightedPrompt`` with weight -1
      (when the preset has one).

    The template may push a text past ``WeightedPrompt``'s 10,000-character limit; styled
    prompts are copied without re-validation so that never fails here (the text encoder
    handles or truncates long prompts).

    Raises ``InvalidRequest`` (``code="bad_request"``, ``param="style_preset"``) for an unknown
    preset; the message lists the valid names.
    """
    if preset is None:
        return prompts
    template = _TEMPLATES.get(preset)
    if template is None:
        raise InvalidRequest(
            f"style_preset {preset!r} is not one of: {', '.join(STYLE_PRESETS)}",
            code="bad_request",
            param="style_preset",
        )
    styled = [
        p.model_copy(update={"text": template.prompt.replace(PLACEHOLDER, p.text)}) if p.weight > 0 else p
        for p in prompts
    ]
    if template.negative_prompt:
        styled.append(WeightedPrompt(text=template.negative_prompt, weight=-1.0))
    return tuple(styled)
