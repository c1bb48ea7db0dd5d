"""Prompt moderation: ``ModerationPolicy`` (word list, regex patterns, optional classifier plugin).

Modes (per organization, default from ``settings.moderation.mode``):

- ``block``: flagged prompts are refused before any work or charge (``ContentModerated``),
  and output images go through the image safety checker (flagged ones are blurred and marked
  ``CONTENT_FILTERED``);
- ``filter``: prompts are not refused; output images go through the image safety checker;
- ``off``: nothing is checked.

What is checked: every positive (and zero-weight) prompt, the ``mask_prompt`` (v2beta
``search_prompt`` / ``select_prompt``), and negative prompts only when ``check_negative`` is
set: a negative prompt steers the model *away* from what it names, so "nsfw, nude" there is
the usual way to ask for safe images and must not be refused.

Matching: text is NFKC-normalized and stripped of zero-width characters; words match whole
words (or phrases; whitespace inside a phrase matches any run of whitespace), case-insensitive;
patterns are Python regular expressions searched case-insensitively. Patterns are validated
when configured: at most ``MAX_PATTERN_CHARS`` characters, no nested variable repeats such as
``(a+)+`` (catastrophic backtracking), and they must compile.

A classifier plugin is any object with ``classify(text: str) -> bool | float`` (a float is a
score in 0..1, flagged at or above the policy's ``threshold``), named by ``module:attr`` /
``module.attr`` or by an entry point of group ``stableserve.moderation`` (``load_plugin``).
Pure Python: no FastAPI, no torch.
"""

from __future__ import annotations

import functools
import importlib
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any, Literal, Protocol, runtime_checkable

from stableserve.core.types import GenerationRequest
from stableserve.errors import ContentModerated, InvalidRequest

Mode = Literal["block", "filter", "off"]
MODES: tuple[str, ...] = ("block", "filter", "off")

MESSAGE = (
    "Your request was flagged by our content moderation system, as a result your request was "
    "denied and you were not charged."
)
"""The contract's 403 ``content_moderation`` message (CONTRACT.md §3.1)."""

MAX_WORDS = 2000
MAX_WORD_CHARS = 100
MAX_PATTERNS = 200
MAX_PATTERN_CHARS = 200
CLASSIFIER_GROUP = "stableserve.moderation"
"""Entry point group of prompt classifier plugins."""
IMAGE_CHECKER_GROUP = "stableserve.image_safety"
"""Entry point group of image safety checker plugins (``inference.safety``)."""

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"))


@runtime_checkable
class TextClassifier(Protocol):
    """A prompt classifier plugin: ``classify(text)`` -> True/False, or a score in 0..1."""

    def classify(self, text: str) -> bool | float: ...


# -- configuration-time validation ------------------------------------------------------------
def normalize_text(text: str) -> str:
    """``text`` NFKC-normalized (fullwidth letters, ligatures -> plain), zero-width chars removed."""
    return unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)


def validate_words(words: Iterable[str]) -> tuple[str, ...]:
    """Words/phrases cleaned up: normalized, whitespace collapsed, lower-cased, deduplicated
    (first occurrence order). Raises ``InvalidRequest(param="words")`` for an empty word, one
    over ``MAX_WORD_CHARS`` characters or more than ``MAX_WORDS`` words."""
    out: dict[str, None] = {}
    for raw in words:
        word = " ".join(normalize_text(str(raw)).split()).lower()
        if not word:
            raise InvalidRequest("words: a word may not be empty", param="words")
        if len(word) > MAX_WORD_CHARS:
            message = f"words: {word[:20]!r}... is over {MAX_WORD_CHARS} characters"
            raise InvalidRequest(message, param="words")
        out[word] = None
    if len(out) > MAX_WORDS:
        raise InvalidRequest(f"words: at most {MAX_WORDS} words", param="words")
    return tuple(out)


def validate_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """Regular expressions checked: each 1..``MAX_PATTERN_CHARS`` characters, compiles, has no
    nested variable repeat (``(a+)+``, ``(\\w*\\s?)*``); at most ``MAX_PATTERNS``, deduplicated.
    Raises ``InvalidRequest(param="patterns")`` naming the bad pattern."""
    out: dict[str, None] = {}
    for raw in patterns:
        pattern = str(raw)
        if not pattern or len(pattern) > MAX_PATTERN_CHARS:
            raise InvalidRequest(
                f"patterns: {pattern[:30]!r} must be 1..{MAX_PATTERN_CHARS} characters", param="patterns"
            )
        try:
            re.compile(pattern)
        except re.error as exc:
            message = f"patterns: {pattern!r} is not a valid regex ({exc})"
            raise InvalidRequest(message, param="patterns") from None
        if _has_nested_repeat(pattern):
            raise InvalidRequest(
                f"patterns: {pattern!r} nests a variable repeat inside a repeat (catastrophic backtracking)",
                param="patterns",
            )
        out[pattern] = None
    if len(out) > MAX_PATTERNS:
        raise InvalidRequest(f"patterns: at most {MAX_PATTERNS} patterns", param="patterns")
    return tuple(out)


def validate_mode(mode: str) -> Mode:
    """``mode`` if it is ``block``, ``filter`` or ``off``; else ``InvalidRequest(param="mode")``."""
    if mode not in MODES:
        raise InvalidRequest(f"mode: must be one of {', '.join(MODES)}, not {mode!r}", param="mode")
    return mode  # type: ignore[return-value]


def _has_nested_repeat(pattern: str) -> bool:
    try:
        from re import _parser as sre_parse  # Python 3.11+
    except ImportError:  # pragma: no cover - older Pythons
        import sre_parse  # type: ignore[no-redef]
    consts = sre_parse  # the opcodes are re-exported by the parser module
    repeats = {consts.MAX_REPEAT, consts.MIN_REPEAT, getattr(consts, "POSSESSIVE_REPEAT", None)}

    def children(op: Any, av: Any) -> Iterator[Any]:
        if op in repeats:
            yield av[2]
        elif op == consts.SUBPATTERN:
            yield av[-1]
        elif op == consts.BRANCH:
            yield from av[1]
        elif op in (consts.ASSERT, consts.ASSERT_NOT):
            yield av[1]
        elif op == getattr(consts, "ATOMIC_GROUP", None):
            yield av
        elif op == consts.GROUPREF_EXISTS:
            yield from (p for p in av[1:] if p is not None)

    def walk(sub: Any, in_repeat: bool) -> bool:
        for op, av in sub:
            if op in repeats:
                lo, hi, _body = av
                if in_repeat and lo != hi:
                    return True
                if walk(av[2], in_repeat or hi > 1):
                    return True
            elif any(walk(child, in_repeat) for child in children(op, av)):
                return True
        return False

    return walk(sre_parse.parse(pattern), False)


@functools.lru_cache(maxsize=256)
def _cached_words(words: tuple[str, ...]) -> tuple[str, ...]:
    return validate_words(words)


@functools.lru_cache(maxsize=256)
def _cached_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    return validate_patterns(patterns)


@functools.lru_cache(maxsize=256)
def _word_regex(words: tuple[str, ...]) -> re.Pattern[str] | None:
    if not words:
        return None
    alternatives = (r"\s+".join(re.escape(part) for part in w.split()) for w in words)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


@functools.lru_cache(maxsize=256)
def _pattern_regexes(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


# -- plugins ----------------------------------------------------------------------------------
def load_plugin(spec: str, group: str) -> Any:
    """The object ``spec`` names: ``package.module:attr``, ``package.module.attr`` or the name
    of an entry point of ``group``. A class is instantiated without arguments; anything else is
    returned as is. Raises ``ValueError`` naming ``spec`` when it cannot be found or built."""
    target: Any = None
    found = [ep for ep in entry_points(group=group) if ep.name == spec]
    try:
        if found:
            target = found[0].load()
        else:
            module_name, sep, attr = spec.partition(":")
            if not sep:
                module_name, _, attr = spec.rpartition(".")
            if not module_name or not attr:
                raise ValueError("expected module:attr, module.attr or an entry point name")
            target = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        return target() if isinstance(target, type) else target
    except Exception as exc:  # noqa: BLE001 - any import/build failure is a configuration error
        why = f"{type(exc).__name__}: {exc}"
        raise ValueError(f"cannot load plugin {spec!r} (group {group}): {why}") from None


def load_classifier(spec: str) -> TextClassifier:
    """The prompt classifier plugin ``spec`` names (see ``load_plugin``); a plain function
    ``f(text) -> bool | float`` is wrapped. Raises ``ValueError`` when it has no ``classify``."""
    plugin = load_plugin(spec, CLASSIFIER_GROUP)
    if isinstance(plugin, TextClassifier):
        return plugin
    if callable(plugin):
        return _FunctionClassifier(plugin)
    raise ValueError(f"plugin {spec!r} has no classify(text) method")


@dataclass(frozen=True)
class _FunctionClassifier:
    function: Any

    def classify(self, text: str) -> bool | float:
        return self.function(text)


# -- the policy -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModerationPolicy:
    """What an organization's prompts and images go through (see the module docstring).

    - ``mode``: ``block`` | ``filter`` | ``off``;
    - ``words``: whole words/phrases, case-insensitive (use ``validate_words``);
    - ``patterns``: regular expressions, case-insensitive (use ``validate_patterns``);
    - ``classifier``: optional ``TextClassifier``; ``threshold``: score at or above which a
      float answer flags (0..1);
    - ``check_negative``: also check negative prompts.

    Construction validates ``mode``, ``words`` and ``patterns`` (``InvalidRequest``).
    """

    mode: Mode = "block"
    words: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    classifier: TextClassifier | None = field(default=None, compare=False)
    threshold: float = 0.5
    check_negative: bool = False

    def __post_init__(self) -> None:
        validate_mode(self.mode)
        object.__setattr__(self, "words", _cached_words(tuple(self.words)))
        object.__setattr__(self, "patterns", _cached_patterns(tuple(self.patterns)))

    @property
    def checks_prompts(self) -> bool:
        """True in ``block`` mode (prompts may be refused)."""
        return self.mode == "block"

    @property
    def image_safety(self) -> Literal["off", "blur"]:
        """What the worker does with its output images: ``blur`` flagged ones (``block`` and
        ``filter``), or ``off``. Carried by ``GenerationRequest.image_safety``."""
        return "off" if self.mode == "off" else "blur"

    def with_override(
        self, mode: str | None = None, words: Sequence[str] = (), patterns: Sequence[str] = ()
    ) -> ModerationPolicy:
        """This (server-wide) policy with an organization's settings: its ``mode`` wins when
        set (None = keep), its words and patterns are added to these."""
        return replace(
            self,
            mode=mode or self.mode,
            words=(*self.words, *words),
            patterns=(*self.patterns, *patterns),
        )

    def flags(self, text: str) -> bool:
        """True when ``text`` matches a word or a pattern, or the classifier flags it.

        The classifier's own exceptions propagate (the caller decides; see ``check``)."""
        text = normalize_text(text)
        regex = _word_regex(self.words)
        if regex is not None and regex.search(text):
            return True
        if any(p.search(text) for p in _pattern_regexes(self.patterns)):
            return True
        if self.classifier is not None:
            verdict = self.classifier.classify(text)
            if isinstance(verdict, bool):
                return verdict
            return float(verdict) >= self.threshold
        return False

    def texts(self, request: GenerationRequest) -> Iterator[tuple[str, str]]:
        """``(field, text)`` for every text of ``request`` this policy checks (module docstring)."""
        for prompt in request.prompts:
            if prompt.weight >= 0:
                yield "prompts", prompt.text
            elif self.check_negative:
                yield "negative_prompts", prompt.text
        if request.mask_prompt:
            yield "mask_prompt", request.mask_prompt

    def check(self, request: GenerationRequest) -> None:
        """Refuse ``request`` when a checked text is flagged (``block`` mode only).

        Raises ``ContentModerated`` (message ``MESSAGE``; ``field`` and ``text`` name what was
        flagged). Classifier exceptions propagate."""
        if not self.checks_prompts:
            return
        for name, text in self.texts(request):
            if self.flags(text):
                raise ContentModerated(MESSAGE, field=name, text=text)
