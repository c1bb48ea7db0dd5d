"""The training script: its CPU runtime (micro-batches, bf16) and a whole tiny run with resume."""

from __future__ import annotations

import json

import pytest
import torch
from training.stages import Config, Runtime, make_unet_and_text, unet_step

from training import model, train

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _batch(n: int, size: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    tokens = model.tokenizer()(
        ["a red circle on the left"] * n, padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    return (
        torch.randn(n, model.LATENT_CHANNELS, size, size, generator=g),
        torch.randn(n, model.LATENT_CHANNELS, size, size, generator=g),
        torch.randint(0, 1000, (n,), generator=g),
        tokens,
    )


def _step(rt: Runtime, batch) -> tuple[float, dict[str, torch.Tensor]]:
    cfg = Config()
    unet, text = make_unet_and_text(cfg, rt)
    opt = torch.optim.AdamW(list(unet.parameters()) + list(text.parameters()), lr=1e-3)
    loss, _ = unet_step(unet, text, opt, batch, model.scheduler().alphas_cumprod, cfg, rt)
    return loss, {k: p.grad.clone() for k, p in unet.named_parameters()}  # the step's (clipped) gradient


def test_runtime_chunks_and_cpu_defaults():
    assert Runtime(micro_batch=32).chunks(128) == [slice(0, 32), slice(32, 64), slice(64, 96), slice(96, 128)]
    assert Runtime(micro_batch=3).chunks(7) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert Runtime().chunks(5) == [slice(0, 5)]
    cpu = Runtime.for_device("cpu")
    assert cpu.bf16 and cpu.micro_batch == 32
    assert Runtime.for_device("cuda") == Runtime(torch.device("cuda"))


def test_micro_batches_accumulate_the_same_step_as_one_pass():
    batch = _batch(6)
    loss_whole, whole = _step(Runtime(), batch)
    loss_split, split = _step(Runtime(micro_batch=4), batch)
    assert loss_split == pytest.approx(loss_whole, rel=1e-5)
    for name, grad in whole.items():
        assert torch.allclose(split[name], grad, rtol=1e-4, atol=1e-7), name
    # bf16 autocast computes the same step, up to bfloat16 rounding
    loss_bf16, _ = _step(Runtime(bf16=True, micro_batch=4), batch)
    assert loss_bf16 == pytest.approx(loss_whole, rel=0.05)


def test_tiny_run_resumes_and_exports_a_loadable_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    run = tmp_path / "run"
    tiny = [
        *("--run-dir", str(run), "--seed", "5", "--vae-pool", "2", "--vae-crop", "64"),
        *("--vae-steps", "2", "--num-latents", "3", "--buckets", "256x256:1"),
        *("--unet-steps", "2", "--unet-batch", "3", "--micro-batch", "2"),
    ]
    assert train.main([*tiny, "--until", "vae"]) == 0
    assert (run / "vae_final.pt").exists() and not (run / "latents.pt").exists()
    assert train.main(["--run-dir", str(run), "--resume"]) == 0  # the rest, with config.json's settings
    info = json.loads((run / "model" / "training_info.json").read_text())
    assert info["unet_steps"] == 2 and info["config"]["seed"] == 5
    assert info["runtime"] == {"device": "cpu", "bf16": True, "micro_batch": 32, "threads": 2}
    pipe = StableDiffusionPipeline.from_pretrained(run / "model", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=1, height=256, width=256).images[0]
    assert image.size == (256, 256)
