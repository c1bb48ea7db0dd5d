"""The shapes model's components load and run through the stock SD 1.x pipelines."""

from __future__ import annotations

import torch

from training import data, model


def test_caption_words_are_single_tokens():
    tok = model.tokenizer()
    for word in model.CAPTION_WORDS:
        assert tok.tokenize(word) == [word + "</w>"], word
    caption = data.make_scene(1).caption
    ids = tok(caption).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


def test_untrained_pipeline_round_trips_and_sizes_latents_by_16(tmp_path):
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    torch.manual_seed(0)
    pipe = model.pipeline(model.vae(0.5), model.text_encoder(), model.unet())
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path)
    assert loaded.vae_scale_factor == model.VAE_SCALE_FACTOR == 16
    assert loaded.unet.config.sample_size * loaded.vae_scale_factor == 512
    loaded.set_progress_bar_config(disable=True)
    out = loaded("a red circle", num_inference_steps=1, width=512, height=768, output_type="latent")
    assert out.images.shape == (1, 4, 48, 32)
    inpaint = StableDiffusionInpaintPipeline(**loaded.components)
    inpaint.set_progress_bar_config(disable=True)
    image = data.render(data.make_scene(2, 256, 256))
    mask = image.convert("L").point(lambda _: 255)
    result = inpaint(
        "a blue square", image=image, mask_image=mask, num_inference_steps=1, height=256, width=256
    )
    assert result.images[0].size == (256, 256)
