"""Locally generated tokenizers for the demo pipelines (no vocabulary can be downloaded).

CLIP: a deterministic byte-level BPE vocabulary (CLIP's ``bytes_to_unicode`` alphabet, each
symbol also with ``</w>``, merges learned from a built-in list of common prompt words, then
``<|startoftext|>`` / ``<|endoftext|>`` last as in CLIP). T5 (SD3's third encoder): a Unigram
vocabulary with one piece per built-in word and single-character fallbacks.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_TOKENS = 77
"""CLIP context length (tokens including BOS/EOS), as in every Stable Diffusion text encoder."""

# ---------------------------------------------------------------------------------------------
# Tokenizer

# Words the BPE merges are learned from: each becomes a single token (plus "</w>"); any other
# word is split into known sub-words or single bytes, as CLIP does for rare words.
_PROMPT_TEXT = """
a an the of on in at by with and or to from for over under above below near inside outside
photo photograph picture painting drawing illustration sketch render portrait landscape closeup
lighthouse cliff sea ocean beach wave waves sky cloud clouds sun sunset sunrise moon star stars
night day morning evening light dark shadow fog mist rain snow storm winter summer spring autumn
mountain mountains hill forest tree trees flower flowers garden field river lake water fire ice
city street house building castle tower bridge road car train boat ship window door room
cat dog horse bird fish dragon robot astronaut man woman girl boy child person people face eyes
red blue green yellow orange purple pink black white gray golden silver colorful
beautiful detailed highly intricate sharp focus cinematic dramatic lighting epic fantasy
realistic photorealistic hyperrealistic digital art artstation concept oil watercolor style
trending quality best masterpiece ultra high resolution 4k 8k hdr bokeh lens wide angle
blurry ugly deformed bad low worst extra missing text watermark signature cropped
vibrant soft warm cold old new small large big tiny giant little happy sad cute
"""
PROMPT_WORDS = _PROMPT_TEXT.split()


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def learn_merges(words: list[str], alphabet: dict[int, str]) -> list[tuple[str, str]]:
    """Classic BPE training on ``words`` (each counted once), deterministic: the most frequent
    adjacent pair is merged first, ties broken by the pair's lexicographic order; stops when
    every word is one symbol."""
    seqs = []
    for w in sorted(set(words)):
        chars = [alphabet[b] for b in w.encode("utf-8")]
        chars[-1] += "</w>"
        seqs.append(chars)
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for s in seqs:
            pairs.update(zip(s, s[1:], strict=False))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for i, s in enumerate(seqs):
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and (s[j], s[j + 1]) == best:
                    out.append(joined)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[i] = out


@lru_cache(maxsize=1)
def demo_vocabulary() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The demo CLIP vocabulary and BPE merges (deterministic, no download).

    Returns ``(vocab, merges)``: ids 0..255 are the byte symbols, 256..511 the same with
    ``</w>``, then one token per merge in merge order, then ``<|startoftext|>`` and
    ``<|endoftext|>`` (the last id), the layout of OpenAI CLIP's ``vocab.json``.
    """
    alphabet = bytes_to_unicode()
    symbols = list(alphabet.values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = learn_merges(PROMPT_WORDS, alphabet)
    vocab_list += [a + b for a, b in merges]
    vocab_list += [BOS_TOKEN, EOS_TOKEN]
    vocab: dict[str, int] = {}
    for tok in vocab_list:
        vocab.setdefault(tok, len(vocab))
    return vocab, tuple(merges)


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """Write CLIP-format ``vocab.json`` and ``merges.txt`` of the demo vocabulary into ``folder``.

    Returns their paths. ``merges.txt`` starts with ``#version: 0.2`` like CLIP's.
    """
    vocab, merges = demo_vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.json"
    merges_file = folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False, indent=0, sort_keys=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_file, merges_file


def clip_tokenizer():
    """A ``CLIPTokenizer`` over the demo vocabulary (pad = ``<|endoftext|>``, max length 77)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="stableserve-demo-tok-") as tmp:
        vocab_file, merges_file = write_tokenizer_files(Path(tmp))
        # Positional paths: transformers 5 ignores the ``vocab_file=`` keyword (builds a 3-token
        # default vocabulary) while transformers 4 requires the two paths.
        tok = CLIPTokenizer(str(vocab_file), str(merges_file), pad_token=EOS_TOKEN)
    tok.model_max_length = MAX_TOKENS
    return tok


T5_MAX_TOKENS = 512
"""T5 tokenizer context (SD3's pipeline asks for ``max_sequence_length`` = 256 of them)."""


def demo_t5_vocabulary() -> list[tuple[str, float]]:
    """The demo T5 (SentencePiece-style Unigram) vocabulary: ``(piece, log-probability)`` pairs.

    ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 as in T5, then ``▁`` (word start), one
    ``▁word`` piece per built-in prompt word (score -5) and every printable ASCII character
    (score -10), so known words are one token and others fall back to characters.
    """
    import string

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -5.0) for w in sorted(set(PROMPT_WORDS))]
    vocab += [
        (c, -10.0)
        for c in string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    ]
    return vocab


def t5_tokenizer():
    """A ``T5Tokenizer`` (tokenizers-backed in transformers 5) over ``demo_t5_vocabulary``."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=demo_t5_vocabulary(), extra_ids=0, model_max_length=T5_MAX_TOKENS)
