"""Train the shapes model end to end and export it as a diffusers folder (fp16 safetensors).

Usage (from the repository root)::

    nice -n 19 .venv/bin/python -m training.train --run-dir training/runs/shapes-v1 --seed 0
    nice -n 19 .venv/bin/python -m training.train --run-dir training/runs/shapes-v1 --resume
    .venv/bin/python -m training.train --run-dir training/runs/shapes-v1 --export-only --out DIR

Stages (:mod:`training.stages`): VAE on crops -> latent cache -> UNet + text encoder -> export
(``<run-dir>/model``, the layout of ``stable-diffusion-v1-5``: ``model_index.json``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``unet/``, ``scheduler/``). Each stage checkpoints every
``--checkpoint-minutes``; ``--resume`` continues from the files in the run directory, with the
hyper-parameters of its ``config.json``. Uses CUDA when available (``--device`` overrides);
CPU runs use ``--threads`` threads (default 2), bfloat16 autocast and micro-batches of 32
(:class:`training.stages.Runtime`; ``--no-bf16``, ``--micro-batch N`` override; 0 = whole
batches). ``runtime.json`` records the latest invocation's runtime settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from training import model
from training.checkpoint import add_config_arguments, load_state, open_run, run_config
from training.stages import Config, Runtime, encode_latents, train_unet, train_vae

log = logging.getLogger("training")


def export(run: Path, out: Path, *, dtype: torch.dtype = torch.float16) -> Path:
    """Write the pipeline folder from the run's VAE and (final or latest EMA) UNet/text weights.

    Returns ``out``. The VAE's ``scaling_factor`` is the one measured on the latent cache.
    """
    cache = load_state(run / "latents.pt")
    cfg = Config(**json.loads((run / "config.json").read_text()))
    vae = cfg.make_vae(scaling_factor=round(cache["scaling_factor"], 5))
    vae.load_state_dict(load_state(run / "vae_final.pt")["model"])
    final = load_state(run / "unet_final.pt") or load_state(run / "unet_state.pt")
    both = torch.nn.ModuleDict({"unet": cfg.make_unet(), "text": model.text_encoder()})
    both.load_state_dict(final["ema"])
    pipe = model.pipeline(vae, both["text"], both["unet"])
    pipe.to(dtype=dtype)
    pipe.save_pretrained(out, safe_serialization=True)
    info = {
        "unet_steps": final["step"] if "step" in final else final["steps"],
        "unet_seconds": final["spent"],
        "vae_seconds": load_state(run / "vae_final.pt")["spent"],
        "latent_seconds": cache["spent"],
        "config": json.loads((run / "config.json").read_text()),
    }
    if (run / "runtime.json").exists():
        info["runtime"] = json.loads((run / "runtime.json").read_text())
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue with the run's config.json")
    parser.add_argument("--export-only", action="store_true", help="export the latest weights and stop")
    parser.add_argument("--out", type=Path, help="export folder (default <run-dir>/model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument(
        "--until", choices=("vae", "latents", "unet"), default="unet", help="stop after this stage"
    )
    add_config_arguments(parser, Config)
    args = parser.parse_args(argv)
    run: Path = args.run_dir
    open_run(run, args.threads)
    out = args.out or run / "model"
    if args.export_only:
        log.info("exported %s", export(run, out))
        return 0
    cfg = run_config(run, Config, args, args.resume)
    rt = Runtime.for_device(args.device)
    rt = Runtime(
        rt.device,
        rt.bf16 if args.bf16 is None else args.bf16,
        rt.micro_batch if args.micro_batch is None else args.micro_batch,
    )
    (run / "runtime.json").write_text(
        json.dumps(
            {
                "device": str(rt.device),
                "bf16": rt.bf16,
                "micro_batch": rt.micro_batch,
                "threads": args.threads,
            }
        )
        + "\n"
    )
    log.info("run %s, %s: %s", run, rt, cfg)
    t0 = time.monotonic()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    train_vae(run, cfg, rt)
    if args.until == "vae":
        return 0
    encode_latents(run, cfg, rt)
    if args.until == "latents":
        return 0
    train_unet(run, cfg, rt)
    log.info("exported %s (this invocation %.0f s)", export(run, out), time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
