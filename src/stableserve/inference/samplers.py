"""Stability's sampler enum mapped onto diffusers noise schedulers.

The table follows the A1111/k-diffusion column of diffusers' scheduler overview
(https://huggingface.co/docs/diffusers/api/schedulers/overview). Every scheduler is built from
the engine pipeline's own scheduler config (``pipe.scheduler.config``) so the model's training
schedule - ``beta_start``/``beta_end``/``beta_schedule``, ``prediction_type`` (epsilon or
v-prediction), ``timestep_spacing``, ``steps_offset``, Karras sigmas, a flow ``shift`` - is kept;
only the options that define the sampler itself are overridden. Keys the target class does not
know are dropped by ``ConfigMixin.from_config``.

Flow-matching families (``FLOW_MATCHING_FAMILIES``: SD3) have their own table with the two
samplers diffusers implements for rectified flow (Euler and Heun); every other sampler is an
``InvalidRequest`` with code ``invalid_sampler`` there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from stableserve.core.engines import FLOW_MATCHING_FAMILIES, FLOW_MATCHING_SAMPLERS, Family
from stableserve.core.types import Sampler
from stableserve.errors import InvalidRequest

__all__ = [
    "DIFFUSION_SAMPLERS",
    "FLOW_SAMPLERS",
    "SamplerSpec",
    "make_noise_scheduler",
    "supported_samplers",
]


@dataclass(frozen=True)
class SamplerSpec:
    """One row of the sampler table.

    - ``scheduler``: the diffusers scheduler class.
    - ``k_diffusion``: the k-diffusion function (and A1111 name) it corresponds to.
    - ``overrides``: config keys forced on top of the base config (the sampler's own options).
    - ``defaults``: config keys used only when the base config lacks them (e.g. a DDIM built from
      an Euler or PNDM config, which has no ``set_alpha_to_one``).
    - ``seeded``: config keys set to the request seed (stochastic samplers whose noise does not
      come from the pipeline's ``generator``).
    - ``note``: where diffusers differs from k-diffusion.
    """

    scheduler: type[SchedulerMixin]
    k_diffusion: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    seeded: tuple[str, ...] = ()
    note: str = ""


_LATENT = {"clip_sample": False}
# Latent diffusion: never clip the predicted x0 to [-1, 1]. The scheduler classes default to True
# and configs of other schedulers (PNDM, Euler) do not carry the key; diffusers' SD pipelines
# patch it in their constructor only, SDXL's do not.

DIFFUSION_SAMPLERS: Mapping[Sampler, SamplerSpec] = {
    Sampler.DDIM: SamplerSpec(
        DDIMScheduler,
        "DDIM, eta=0 (A1111 'DDIM'; not a k-diffusion sampler)",
        overrides=_LATENT,
        defaults={"set_alpha_to_one": False},  # as every Stable Diffusion DDIM config
    ),
    Sampler.DDPM: SamplerSpec(
        DDPMScheduler,
        "ancestral DDPM (A1111 'DDPM'; not a k-diffusion sampler; needs many steps)",
        overrides=_LATENT,
    ),
    Sampler.K_EULER: SamplerSpec(EulerDiscreteScheduler, "k_diffusion.sampling.sample_euler ('Euler')"),
    Sampler.K_EULER_ANCESTRAL: SamplerSpec(
        EulerAncestralDiscreteScheduler, "k_diffusion.sampling.sample_euler_ancestral ('Euler a')"
    ),
    Sampler.K_HEUN: SamplerSpec(HeunDiscreteScheduler, "k_diffusion.sampling.sample_heun ('Heun')"),
    Sampler.K_DPM_2: SamplerSpec(KDPM2DiscreteScheduler, "k_diffusion.sampling.sample_dpm_2 ('DPM2')"),
    Sampler.K_DPM_2_ANCESTRAL: SamplerSpec(
        KDPM2AncestralDiscreteScheduler, "k_diffusion.sampling.sample_dpm_2_ancestral ('DPM2 a')"
    ),
    Sampler.K_LMS: SamplerSpec(LMSDiscreteScheduler, "k_diffusion.sampling.sample_lms ('LMS')"),
    Sampler.K_DPMPP_2M: SamplerSpec(
        DPMSolverMultistepScheduler,
        "k_diffusion.sampling.sample_dpmpp_2m ('DPM++ 2M')",
        overrides={"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    Sampler.K_DPMPP_2S_ANCESTRAL: SamplerSpec(
        DPMSolverSinglestepScheduler,
        "k_diffusion.sampling.sample_dpmpp_2s_ancestral ('DPM++ 2S a')",
        overrides={"algorithm_type": "dpmsolver++", "solver_order": 2},
        note=(
            "diffusers has no ancestral DPM++ 2S (its scheduler table lists 'DPM++ 2S a' as N/A); "
            "the deterministic second-order singlestep DPM-Solver++ is the closest it offers"
        ),
    ),
    Sampler.K_DPMPP_SDE: SamplerSpec(
        DPMSolverSDEScheduler,
        "k_diffusion.sampling.sample_dpmpp_sde ('DPM++ SDE')",
        seeded=("noise_sampler_seed",),
        note="its Brownian-tree noise is seeded with the request seed, not the pipeline generator",
    ),
}
"""Samplers of noise-prediction (epsilon / v) families: all eleven of the enum."""

FLOW_SAMPLERS: Mapping[Sampler, SamplerSpec] = {
    Sampler.K_EULER: SamplerSpec(
        FlowMatchEulerDiscreteScheduler, "k_diffusion.sampling.sample_euler on the rectified-flow ODE"
    ),
    Sampler.K_HEUN: SamplerSpec(
        FlowMatchHeunDiscreteScheduler, "k_diffusion.sampling.sample_heun on the rectified-flow ODE"
    ),
}
"""Samplers of flow-matching families (SD3): Euler and Heun; the base config's ``shift`` is kept."""

assert tuple(FLOW_SAMPLERS) == FLOW_MATCHING_SAMPLERS, "FLOW_SAMPLERS must match core.engines"
assert set(DIFFUSION_SAMPLERS) == set(Sampler), "every Sampler needs a diffusion scheduler"


def _table(family: Family) -> Mapping[Sampler, SamplerSpec]:
    if family in FLOW_MATCHING_FAMILIES:
        return FLOW_SAMPLERS
    if family == Family.UPSCALER_ESRGAN:  # a feed-forward network: no noise schedule at all
        return {}
    return DIFFUSION_SAMPLERS


def supported_samplers(family: Family) -> tuple[Sampler, ...]:
    """Samplers ``make_noise_scheduler`` accepts for ``family``, in enum order.

    All eleven for noise-prediction families, (K_EULER, K_HEUN) for flow matching, none for
    ESRGAN (the same answer as ``EngineSpec.supported_samplers``).
    """
    table = _table(family)
    return tuple(s for s in Sampler if s in table)


def make_noise_scheduler(
    sampler: Sampler, base_config: Mapping[str, Any], family: Family, seed: int
) -> SchedulerMixin:
    """Build the diffusers scheduler for ``sampler`` from an engine's scheduler config.

    ``base_config`` is the engine pipeline's ``pipe.scheduler.config`` (a FrozenDict or any
    mapping); it is not modified. The result is ``Cls.from_config(base_config, **overrides)``
    with ``Cls``/``overrides`` from ``DIFFUSION_SAMPLERS`` (or ``FLOW_SAMPLERS`` for
    flow-matching families). ``seed`` (uint32, 0..4294967295) seeds stochastic samplers whose
    noise does not come from the pipeline's ``generator`` (``K_DPMPP_SDE``: ``noise_sampler_seed``);
    without it ``DPMSolverSDEScheduler`` draws a random Brownian tree and is not reproducible.
    A fresh scheduler is returned on every call (schedulers hold per-run state).

    Raises ``InvalidRequest`` (``code="invalid_sampler"``, ``param="sampler"``) when the family
    has no scheduler for the sampler (flow matching: only K_EULER and K_HEUN; ESRGAN: none).
    """
    table = _table(family)
    spec = table.get(Sampler(sampler))
    if spec is None:
        allowed = ", ".join(s.value for s in table) or "none (this engine takes no sampler)"
        raise InvalidRequest(
            f"sampler {Sampler(sampler).value} is not supported by {family.value} engines; "
            f"use one of: {allowed}",
            code="invalid_sampler",
            param="sampler",
        )
    overrides: dict[str, Any] = {k: v for k, v in spec.defaults.items() if k not in base_config}
    overrides.update(spec.overrides)
    for key in spec.seeded:
        overrides[key] = int(seed)
    factory: Callable[..., SchedulerMixin] = spec.scheduler.from_config
    return factory(dict(base_config), **overrides)
