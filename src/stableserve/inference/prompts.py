"""Weighted prompts -> the conditioning tensors a diffusers pipeline call takes.

``encode_prompts`` turns a request's ``WeightedPrompt`` tuple into ``prompt_embeds`` /
``negative_prompt_embeds`` (plus the pooled pair for SDXL-type and SD3 pipelines), which
replace ``prompt`` / ``negative_prompt`` in the pipeline call.

Prompt text syntax:

- A1111 emphasis ``(text:1.3)`` (nestable; ``\\(`` / ``\\)`` are literal parentheses) is
  rewritten to compel's ``(text)1.3`` by ``a1111_to_compel``; everything else is compel syntax
  (``word+``, ``word--``, ``(words)0.8``, ``("a", "b").blend(0.7, 0.3)``, ``.and()``). Weights are
  applied by compel (https://github.com/damian0815/compel): up-weighting scales a token's
  embedding away from the empty prompt's, down-weighting (< 1) blends towards the prompt with
  those tokens masked out. A1111's weight-less ``(text)`` = 1.1 and ``[text]`` = 1/1.1 are NOT
  interpreted (compel reads ``(text)`` as weight 1 and ``[text]`` as literal text).
- Long prompts are not truncated: compel encodes them in 77-token chunks
  (``truncate_long_prompts=False``), and every tensor that is blended or paired (positive with
  negative) is padded to the longest with the empty prompt's chunk - compel's own
  ``pad_conditioning_tensors_to_same_length`` scheme. UNets accept any multiple of 77 tokens.
  Pooled embeddings (SDXL) always see the first 77 tokens, as in diffusers.
- SD3 (not supported by compel): emphasis syntax is stripped to the plain words
  (``plain_text``) and the pipeline's own ``encode_prompt`` is used (CLIP truncated at 77
  tokens, T5 at ``max_sequence_length`` = 256, diffusers' defaults).

Several prompts: positive prompts (weight > 0) are encoded separately and blended as
``sum(w_i * e_i) / sum(w_i)`` (sequence and pooled embeddings alike); negative prompts
(weight < 0) the same with ``|w_i|``. Zero weights are ignored. Without a negative prompt the
negative conditioning is the empty prompt ``""`` - or zeros for SDXL-type pipelines whose
config sets ``force_zeros_for_empty_prompt`` (what diffusers does there).

Compel 2.5.1 with transformers 5: the weighting, chunking and padding paths work unchanged
(checked against a direct ``CLIPTextModel`` call: identical for unweighted prompts). One
compel behaviour is worked around: its SDXL pooled embedding encodes the raw prompt string,
syntax included (``(cat)1.5`` is tokenized with its parentheses and digits; compel issue
#96), so the pooled embedding is computed here from ``plain_text`` instead. Compel's
``Compel(tokenizer=[...], text_encoder=[...])`` form prints a deprecation notice; one
``Compel`` per text encoder is used (as ``compel.CompelForSDXL`` does).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from compel import Compel, ReturnedEmbeddingsType
from compel.prompt_parser import (
    Blend,
    Conjunction,
    CrossAttentionControlAppend,
    CrossAttentionControlSubstitute,
    FlattenedPrompt,
    Fragment,
)

from stableserve.core.engines import Family
from stableserve.core.types import WeightedPrompt
from stableserve.errors import InvalidRequest

__all__ = ["a1111_to_compel", "encode_prompts", "plain_text"]

_A1111_WEIGHT = re.compile(r"(?P<text>.*\S)\s*:\s*(?P<weight>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*", re.DOTALL)
# characters after a rewritten ``(text)w`` that compel would read as part of the number or as
# another weight operator; a space is put in between
_GLUE = re.compile(r"[\w.+\-(]")
_ESCAPABLE = re.compile(r"(\\.)|([()])", re.DOTALL)


def _format_weight(weight: float) -> str:
    weight = max(0.0, weight)  # compel has no negative token weights; 0 removes the words
    text = f"{weight:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def a1111_to_compel(text: str) -> str:
    """Rewrite A1111 emphasis ``(text:1.3)`` into compel's ``(text)1.3``; the rest is kept.

    - Nested groups work inside out: ``((a:1.2) b:0.9)`` -> ``((a)1.2 b)0.9`` (compel multiplies).
    - Only a group whose content ends in ``:<number>`` is rewritten (the last colon counts:
      ``(a:b:1.5)`` -> ``(a:b)1.5``); ``(text)``, ``(12:30 pm)``, ``[text]``, unbalanced
      parentheses (``smile :)``) and compel syntax pass through untouched.
    - ``\\(`` / ``\\)`` (escaped, literal parentheses) are copied as they are; compel unescapes them.
    - Negative weights are clamped to 0 (compel cannot weight below 0; 0 removes the words).
    - A space is inserted after a rewritten group when the next character would merge with the
      weight (``(a:1.5)2`` -> ``(a)1.5 2``).
    """
    out: list[str] = []
    stack: list[int] = []  # indices in ``out`` of unmatched "("
    glue_check = False
    i = 0
    while i < len(text):
        ch = text[i]
        if glue_check:
            glue_check = False
            if _GLUE.match(ch):
                out.append(" ")
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i : i + 2])
            i += 2
            continue
        if ch == "(":
            stack.append(len(out))
            out.append(ch)
        elif ch == ")" and stack:
            start = stack.pop()
            content = "".join(out[start + 1 :])
            m = _A1111_WEIGHT.fullmatch(content)
            if m is not None:
                out[start:] = [f"({m.group('text')}){_format_weight(float(m.group('weight')))}"]
                glue_check = True
            else:
                out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _node_text(node: Any) -> str:
    if isinstance(node, Conjunction):
        return ", ".join(t for t in (_node_text(p) for p in node.prompts) if t)
    if isinstance(node, Blend):  # the most heavily weighted of the blended prompts
        best = max(range(len(node.prompts)), key=lambda k: node.weights[k]) if node.prompts else None
        return _node_text(node.prompts[best]) if best is not None else ""
    if isinstance(node, FlattenedPrompt):
        return " ".join(t for t in (_node_text(c) for c in node.children) if t)
    if isinstance(node, Fragment):
        return node.text.strip()
    if isinstance(node, CrossAttentionControlSubstitute):
        return " ".join(t for t in (_node_text(c) for c in node.original) if t)
    if isinstance(node, CrossAttentionControlAppend):
        return _node_text(node.fragment)
    return ""


def _escape_parens(text: str) -> str:
    """``(`` / ``)`` -> ``\\(`` / ``\\)`` (already escaped characters are kept)."""
    return _ESCAPABLE.sub(lambda m: m.group(1) or "\\" + m.group(2), text)


def _to_compel(text: str) -> tuple[str, Conjunction]:
    """The compel text of a prompt and its parse.

    ``a1111_to_compel`` first; if compel cannot parse that (``("a", "b").blend(1)`` with a
    missing weight, 50 nested parentheses), the prompt is retried with every parenthesis
    escaped, i.e. read literally - a prompt Stability would accept is never rejected over
    syntax it does not define. Raises ``InvalidRequest`` (``param="prompts"``) only if even that
    fails.
    """
    compel_text = a1111_to_compel(text)
    try:
        return compel_text, Compel.parse_prompt_string(compel_text)
    except Exception:  # pyparsing / compel ParsingException / RecursionError
        literal = _escape_parens(text)
        try:
            return literal, Compel.parse_prompt_string(literal)
        except Exception as exc:
            raise InvalidRequest(
                f"could not parse prompt {text[:80]!r}: {exc}", code="bad_request", param="prompts"
            ) from None


def plain_text(text: str) -> str:
    """The words of a prompt with all emphasis syntax removed (A1111 and compel).

    ``"a (cat:1.5), dog++"`` -> ``"a cat , dog"``. Used for SD3 (no compel support) and for
    pooled CLIP embeddings. Parsed with compel's parser after ``a1111_to_compel`` (text compel
    cannot parse is read with its parentheses literal, as in ``encode_prompts``); fragments are
    joined with single spaces, a blend keeps its most heavily weighted prompt, ``.and()`` parts
    are joined with ``", "``, ``.swap()`` keeps the original words. Raises ``InvalidRequest``
    (``param="prompts"``) if compel cannot parse the text.
    """
    return _node_text(_to_compel(text)[1])


@dataclass(frozen=True)
class _Cond:
    embeds: torch.Tensor  # (1, tokens, dim)
    pooled: torch.Tensor | None  # (1, pooled_dim)


def _blend(conds: Sequence[tuple[float, _Cond]]) -> _Cond:
    """``sum(w_i * c_i) / sum(w_i)`` over equally long conditionings (weights > 0), in float32."""
    if len(conds) == 1:
        return conds[0][1]
    total = sum(w for w, _ in conds)
    embeds = torch.stack([c.embeds.float() * (w / total) for w, c in conds]).sum(0)
    pooled = None
    if conds[0][1].pooled is not None:
        pooled = torch.stack([c.pooled.float() * (w / total) for w, c in conds]).sum(0)  # type: ignore[union-attr]
    return _Cond(embeds=embeds, pooled=pooled)


def _pad_to(t: torch.Tensor, length: int, chunk: torch.Tensor) -> torch.Tensor:
    """Append copies of ``chunk`` (1, n, dim) along dim 1 until ``t`` has ``length`` tokens."""
    if t.shape[1] >= length:
        return t
    reps = -(-(length - t.shape[1]) // chunk.shape[1])
    return torch.cat([t, chunk.repeat(1, reps, 1)], dim=1)[:, :length]


def _split(prompts: Sequence[WeightedPrompt]) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    pos = [(float(p.weight), p.text) for p in prompts if p.weight > 0]
    neg = [(-float(p.weight), p.text) for p in prompts if p.weight < 0]
    return pos, neg


class _ClipStack:
    """One compel instance per CLIP text encoder of an SD1/SD2/upscaler or SDXL-type pipeline."""

    def __init__(self, pipe: Any, sdxl: bool) -> None:
        pairs = [(pipe.tokenizer, pipe.text_encoder)]
        if sdxl:
            pairs.append((getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)))
        pairs = [(tok, enc) for tok, enc in pairs if tok is not None and enc is not None]
        if not pairs:
            raise ValueError(f"{type(pipe).__name__} has no CLIP tokenizer/text encoder for prompts")
        kind = (
            ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
            if sdxl
            else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
        )
        self.compels = [
            Compel(tokenizer=tok, text_encoder=enc, truncate_long_prompts=False,
                   returned_embeddings_type=kind)
            for tok, enc in pairs
        ]
        # SDXL's pooled embedding is text_encoder_2's projected EOS embedding (diffusers:
        # ``prompt_embeds[0]`` of CLIPTextModelWithProjection).
        self.pooled_source = self.compels[-1] if sdxl else None
        self._empty: list[torch.Tensor] | None = None

    def empty_chunks(self) -> list[torch.Tensor]:
        """The empty prompt's (1, 77, dim_k) per encoder: the padding unit."""
        if self._empty is None:
            self._empty = [c.build_conditioning_tensor("") for c in self.compels]
        return self._empty

    def encode(self, text: str) -> list[torch.Tensor]:
        """Per-encoder (1, 77*n, dim_k) weighted embeddings of one prompt."""
        compel_text, _ = _to_compel(text)
        return [c.build_conditioning_tensor(compel_text) for c in self.compels]

    def pooled(self, text: str) -> torch.Tensor | None:
        """(1, pooled_dim) pooled embedding of the prompt's plain words (first 77 tokens)."""
        if self.pooled_source is None:
            return None
        provider = self.pooled_source.conditioning_provider
        return provider.get_pooled_embeddings([plain_text(text)], device=provider.device)


def _encode_clip(pipe: Any, sdxl: bool, pos: list[tuple[float, str]], neg: list[tuple[float, str]],
                 zero_negative: bool) -> tuple[_Cond, _Cond]:
    stack = _ClipStack(pipe, sdxl)
    texts = [t for _, t in pos] + [t for _, t in neg]
    if not neg and not zero_negative:
        texts.append("")
    per_text = {t: stack.encode(t) for t in dict.fromkeys(texts)}
    length = max(e.shape[1] for encs in per_text.values() for e in encs)
    empties = stack.empty_chunks()

    def cond(text: str) -> _Cond:
        padded = [_pad_to(e, length, empty) for e, empty in zip(per_text[text], empties, strict=True)]
        return _Cond(embeds=torch.cat(padded, dim=-1), pooled=stack.pooled(text))

    positive = _blend([(w, cond(t)) for w, t in pos])
    if neg:
        negative = _blend([(w, cond(t)) for w, t in neg])
    elif zero_negative:
        negative = _Cond(
            embeds=torch.zeros_like(positive.embeds),
            pooled=None if positive.pooled is None else torch.zeros_like(positive.pooled),
        )
    else:
        negative = cond("")
    return positive, negative


def _encode_sd3(pipe: Any, pos: list[tuple[float, str]], neg: list[tuple[float, str]], device: Any
                ) -> tuple[_Cond, _Cond]:
    cache: dict[str, _Cond] = {}

    def cond(text: str) -> _Cond:
        if text not in cache:
            plain = plain_text(text) if text else ""
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=plain, prompt_2=None, prompt_3=None, device=device,
                num_images_per_prompt=1, do_classifier_free_guidance=False,
            )
            cache[text] = _Cond(embeds=embeds, pooled=pooled)
        return cache[text]

    positive = _blend([(w, cond(t)) for w, t in pos])
    negative = _blend([(w, cond(t)) for w, t in neg]) if neg else cond("")
    return positive, negative


@torch.no_grad()
def encode_prompts(
    pipe: Any,
    family: Family,
    prompts: Sequence[WeightedPrompt],
    *,
    device: torch.device | str,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Encode weighted prompts into the keyword arguments of a diffusers pipeline call.

    ``pipe``: a loaded diffusers pipeline - SD1/SD2 (text-to-image, img2img, inpaint) or
    ``StableDiffusionUpscalePipeline`` (one CLIP encoder), SDXL-type (``text_encoder_2``
    present, families SDXL/SDXL_BETA; a refiner with only ``text_encoder_2`` works too) or
    SD3 (``family`` SD3; its own ``encode_prompt``). ``prompts``: weights > 0 positive, < 0
    negative (absolute value used), 0 ignored; with no positive prompt the empty prompt is the
    positive conditioning. ``device``/``dtype``: where the returned tensors go (the pipeline's
    execution device and compute dtype).

    Returns ``{"prompt_embeds", "negative_prompt_embeds"}``, each ``(1, tokens, dim)`` with the
    same ``tokens`` (a multiple of 77 for CLIP pipelines; 77 + 256 for SD3) and
    ``dim`` = the cross-attention width (SDXL: both encoders concatenated; SD3: the joint
    width). SDXL-type and SD3 add ``"pooled_prompt_embeds"`` and
    ``"negative_pooled_prompt_embeds"``, ``(1, pooled_dim)``. Batch 1: the pipeline repeats
    them for ``num_images_per_prompt``. Families without a text encoder (ESRGAN) give ``{}``.

    Deterministic (eval-mode encoders, no sampling) and side-effect free: nothing on ``pipe``
    is changed. A prompt whose syntax compel rejects is encoded with its parentheses read
    literally rather than refused; ``InvalidRequest`` (``param="prompts"``) only if even that
    does not parse. ``ValueError`` for a pipeline without the expected text encoder.
    """
    family = Family(family)
    has_encoder = any(getattr(pipe, name, None) is not None for name in ("text_encoder", "text_encoder_2"))
    if family == Family.UPSCALER_ESRGAN or not has_encoder:
        return {}
    pos, neg = _split(prompts)
    if not pos:
        pos = [(1.0, "")]
    if family == Family.SD3:
        positive, negative = _encode_sd3(pipe, pos, neg, device)
    else:
        sdxl = getattr(pipe, "text_encoder_2", None) is not None
        config = getattr(pipe, "config", {}) or {}
        zero_negative = sdxl and bool(config.get("force_zeros_for_empty_prompt", False))
        positive, negative = _encode_clip(pipe, sdxl, pos, neg, zero_negative)

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device=device, dtype=dtype)

    out = {"prompt_embeds": put(positive.embeds), "negative_prompt_embeds": put(negative.embeds)}
    if positive.pooled is not None and negative.pooled is not None:
        out["pooled_prompt_embeds"] = put(positive.pooled)
        out["negative_pooled_prompt_embeds"] = put(negative.pooled)
    return out
