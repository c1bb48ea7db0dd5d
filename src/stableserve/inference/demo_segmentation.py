"""Tiny offline demo models of the two background/segmentation families (see ``inference.demo``).

- ``segmenter-clipseg``: a transformers ``CLIPSegForImageSegmentation`` shaped like
  ``CIDAS/clipseg-rd64-refined`` (CLIP text and vision towers, a FiLM-conditioned decoder
  reading three vision layers, ``reduce_dim`` channels, a transposed-convolution head back to
  the input resolution) with every width shrunk: 32-wide towers, 3 vision layers (all three
  read by the decoder, as the real one reads layers 3/6/9 of 12), 2 text layers,
  ``reduce_dim`` 16. Its ``CLIPSegProcessor`` pairs the demo CLIP tokenizer
  (``demo_tokenizers.clip_tokenizer``) with a ``ViTImageProcessor`` that resizes to 96 x 96
  with ImageNet mean/std, as the real one resizes to 352 x 352 for a 224-trained tower (the
  position embeddings are interpolated on both).
- ``matting-vitmatte``: a ``VitMatteForImageMatting`` shaped like
  ``hustvl/vitmatte-small-composition-1k`` (a 4-channel ViTDet backbone, RGB + trimap, with
  windowed and residual blocks and relative position embeddings; ConvStream + fusion
  decoder) shrunk to a 2-layer, 32-wide backbone and 8..16-channel decoder, with the real
  ``VitMatteImageProcessor`` defaults (pad to a multiple of 32, mean/std 0.5).

Each builder returns a ``SavableModel`` whose ``save_pretrained(folder)`` writes the model
(``config.json`` + ``model.safetensors``) and its processor next to it, so the demo folder is
loaded with the same ``from_pretrained(folder)`` calls as a downloaded repo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from stableserve.core.engines import Family
from stableserve.inference.demo_tokenizers import (
    BOS_TOKEN,
    EOS_TOKEN,
    MAX_TOKENS,
    clip_tokenizer,
    demo_vocabulary,
)

CLIPSEG_DEMO_INPUT = 96
"""Side in pixels the demo CLIPSeg processor resizes images to (the real one: 352)."""


class _SeedSource(Protocol):
    def next(self) -> None: ...


@dataclass
class SavableModel:
    """A transformers model and its processor, saved side by side into one folder."""

    model: Any
    processor: Any

    def save_pretrained(self, folder: str, safe_serialization: bool = True) -> None:
        """Write ``config.json``, ``model.safetensors`` and the processor files into ``folder``."""
        self.model.save_pretrained(folder, safe_serialization=safe_serialization)
        self.processor.save_pretrained(folder)


def build_demo_clipseg(family: Family, seeds: _SeedSource) -> SavableModel:
    """The demo CLIPSeg model + processor (random weights after ``seeds.next()``)."""
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTImageProcessor,
    )

    vocab, _ = demo_vocabulary()
    eos = vocab[EOS_TOKEN]
    config = CLIPSegConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": MAX_TOKENS,
            "bos_token_id": vocab[BOS_TOKEN],
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 16,
        },
        projection_dim=32,
        extract_layers=(0, 1, 2),
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    seeds.next()
    model = CLIPSegForImageSegmentation(config).eval()
    image_processor = ViTImageProcessor(
        do_resize=True,
        size={"height": CLIPSEG_DEMO_INPUT, "width": CLIPSEG_DEMO_INPUT},
        resample=2,  # bilinear, as the real preprocessor_config.json
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor = CLIPSegProcessor(image_processor=image_processor, tokenizer=clip_tokenizer())
    return SavableModel(model, processor)


def build_demo_vitmatte(family: Family, seeds: _SeedSource) -> SavableModel:
    """The demo ViTMatte model + image processor (random weights after ``seeds.next()``)."""
    from transformers import VitDetConfig, VitMatteConfig, VitMatteForImageMatting, VitMatteImageProcessor

    backbone = VitDetConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=64,
        pretrain_image_size=64,
        patch_size=16,
        num_channels=4,  # RGB + trimap
        window_block_indices=[0],
        residual_block_indices=[1],
        use_relative_position_embeddings=True,
        window_size=2,
        out_features=["stage2"],
    )
    config = VitMatteConfig(
        backbone_config=backbone,
        hidden_size=32,
        convstream_hidden_sizes=[8, 16, 16],
        fusion_hidden_sizes=[16, 16, 8, 8],
        # The decoder's batch norms start at N(0, initializer_range) scales: at the usual 0.02
        # a random matte sits at 0.5 everywhere; 0.4 makes it vary over roughly 0.1..0.95.
        initializer_range=0.4,
    )
    seeds.next()
    model = VitMatteForImageMatting(config).eval()
    return SavableModel(model, VitMatteImageProcessor())
