"""Resumable training state: atomic ``torch.save`` of models, optimiser, EMA and step counter;
the run directory's set-up shared by the training command lines (``config.json``, ``train.log``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict[str, Any] | None:
    """The state saved at ``path``, or ``None`` when there is none."""
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


class Ema:
    """Exponential moving average of a module's floating-point parameters (decay per step,
    warmed up as ``min(decay, (1 + step) / (10 + step))`` like diffusers' ``EMAModel``)."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        """Blend the current parameters of ``module`` into the average."""
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, module: torch.nn.Module) -> None:
        """Load the averaged weights into ``module``."""
        module.load_state_dict({k: v.to(module.state_dict()[k].dtype) for k, v in self.shadow.items()})


class Clock:
    """Wall time spent in a stage across resumes, and a timer for periodic checkpoints."""

    def __init__(self, spent: float = 0.0, every_minutes: float = 10.0) -> None:
        self.start = time.monotonic() - spent
        self.every = every_minutes * 60
        self.last = time.monotonic()

    @property
    def spent(self) -> float:
        """Seconds spent in the stage so far (including earlier runs)."""
        return time.monotonic() - self.start

    def due(self) -> bool:
        """True once every ``every_minutes``; resets the timer when it fires."""
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            return True
        return False


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded by ``(seed, step)``: batches depend on the step only, so a resumed
    run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--field-name`` option per field of the dataclass ``cls``, with its type and default."""
    for f in dataclasses.fields(cls):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)


def open_run(run: Path, threads: int) -> None:
    """Create the run directory, log INFO lines to stdout and ``<run>/train.log``, and use
    ``threads`` CPU threads (``torch.set_num_threads``)."""
    run.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(run / "train.log")],
    )
    torch.set_num_threads(threads)


def run_config(run: Path, cls: type, args: argparse.Namespace, resume: bool) -> Any:
    """The run's hyper-parameters (an instance of the dataclass ``cls``): those of
    ``<run>/config.json`` when ``resume`` and it exists, else the command line's
    (:func:`add_config_arguments`), which are then written to ``config.json``."""
    path = run / "config.json"
    if resume and path.exists():
        return cls(**json.loads(path.read_text()))
    cfg = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
    path.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return cfg
