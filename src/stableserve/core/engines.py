"""The engine registry: which engine ids exist, what backs them, what they accept, what they cost.

A registry is a YAML file validated with pydantic (``EngineRegistry``). Two ship with the
package: ``public`` (``data/engines.yaml``: every Stability v1 engine id mapped to real public
weights) and ``demo`` (the same ids, each backed by a tiny pipeline of its diffusers family,
built locally; see ``inference.demo``). Any other value is a path to a registry file.

Sources (``EngineSource.kind``):
- ``hf``: Hugging Face repo ``repo`` at ``revision`` (optional ``filename`` for single-file
  weights such as ESRGAN ``.pth``/``.safetensors``), cached under ``<home>/models``.
- ``local``: ``path`` to a diffusers folder (``model_index.json``) or a weights file.
- ``single_file``: ``path`` (or ``repo`` + ``filename``) of an original-format ``.safetensors``
  checkpoint, with ``config`` (a HF repo id or local diffusers folder) for
  ``from_single_file``.
- ``url``: a single weights file at ``url`` (optional ``sha256``), e.g. the Real-ESRGAN release
  assets, downloaded to ``<home>/models/url/<engine id>/``.
- ``demo``: a tiny pipeline of the engine's family, built on first use.
"""

from __future__ import annotations

from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stableserve.core.types import Sampler, Task
from stableserve.errors import NotFound, RegistryError


class Family(StrEnum):
    """Model family: decides the diffusers pipeline classes and the default rules."""

    SD1 = "sd1"
    SD2_512 = "sd2-512"
    SD2_768 = "sd2-768"
    SDXL = "sdxl"
    SDXL_BETA = "sdxl-beta"
    SD3 = "sd3"
    INPAINT = "inpaint"
    UPSCALER_ESRGAN = "upscaler-esrgan"
    UPSCALER_LATENT_X4 = "upscaler-latent-x4"
    SEGMENTER_CLIPSEG = "segmenter-clipseg"
    MATTING_VITMATTE = "matting-vitmatte"


DIFFUSION_FAMILIES = frozenset(
    {Family.SD1, Family.SD2_512, Family.SD2_768, Family.SDXL, Family.SDXL_BETA, Family.SD3, Family.INPAINT}
)
"""Families that denoise (text-to-image / image-to-image / masking); the rest are helpers."""

NON_DIFFUSION_TASKS = {
    Family.UPSCALER_ESRGAN: (Task.UPSCALE,),
    Family.UPSCALER_LATENT_X4: (Task.UPSCALE,),
    Family.SEGMENTER_CLIPSEG: (Task.REMOVE_BACKGROUND,),
    Family.MATTING_VITMATTE: (Task.REMOVE_BACKGROUND,),
}
"""The only tasks each non-diffusion family may list."""


FLOW_MATCHING_FAMILIES = frozenset({Family.SD3})
"""Families trained with rectified flow: only the flow-matching samplers apply."""

FLOW_MATCHING_SAMPLERS = (Sampler.K_EULER, Sampler.K_HEUN)
"""Samplers that have a flow-matching noise scheduler in diffusers (Euler, Heun)."""


class EngineSource(BaseModel):
    """Where an engine's weights come from (see the module docstring for the kinds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hf", "local", "single_file", "url", "demo"]
    repo: str | None = None
    revision: str = "main"
    filename: str | None = None
    path: str | None = None
    config: str | None = None
    variant: str | None = None
    url: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _needs(self) -> EngineSource:
        if self.kind == "hf" and not self.repo:
            raise ValueError("kind 'hf' needs 'repo'")
        if self.kind == "local" and not self.path:
            raise ValueError("kind 'local' needs 'path'")
        if self.kind == "url" and not self.url:
            raise ValueError("kind 'url' needs 'url'")
        if self.kind == "single_file":
            if not (self.path or (self.repo and self.filename)):
                raise ValueError("kind 'single_file' needs 'path' or 'repo' + 'filename'")
            if not self.config:
                raise ValueError("kind 'single_file' needs 'config' (HF repo id or diffusers folder)")
        return self


class DimensionRule(BaseModel):
    """Allowed output sizes (CONTRACT.md §2.4).

    - ``pixel_range``: sides multiple of ``multiple`` and >= ``min_side``; ``min_pixels`` <=
      w*h <= ``max_pixels`` (else ``invalid_pixel_count``).
    - ``fixed``: (w, h) must be one of ``sizes`` (else ``error`` e.g. ``invalid_sdxl_v1_dimensions``).
    - ``sdxl_beta``: sides >= ``min_side``, multiple of 64, only one side above 512, none above
      ``max_side`` (896) (else ``invalid_sdxl_v222_dimensions``).
    - ``any``: no rule (upscalers: their output limit is ``max_output_pixels``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["pixel_range", "fixed", "sdxl_beta", "any"]
    multiple: int = 64
    min_side: int = 128
    max_side: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    sizes: tuple[tuple[int, int], ...] = ()
    error: str = "invalid_pixel_count"


class PriceRule(BaseModel):
    """Credits for one request (CONTRACT.md §2.4 SDXL rule as the pattern).

    credits = ``per_image`` * samples * max(1, steps / ``reference_steps``)
    [* max(1, pixels / ``reference_pixels``)]; a ``None`` reference turns that factor off.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_image: float = Field(ge=0)
    reference_steps: int | None = Field(default=None, ge=1)
    reference_pixels: int | None = Field(default=None, ge=1)


class IPAdapterSource(BaseModel):
    """IP-Adapter weights for an engine (diffusers ``load_ip_adapter``): ``repo`` (HF repo or
    local folder), ``subfolder``, ``weight_name`` and the CLIP image encoder's folder inside
    ``repo`` (``image_encoder_folder``). Demo engines build a tiny one of the same format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: str
    subfolder: str = "models"
    weight_name: str = "ip-adapter_sd15.safetensors"
    image_encoder_folder: str = "models/image_encoder"


DEMO_IP_ADAPTER_REPO = "demo"
"""``IPAdapterSource.repo`` of demo engines: the tiny adapter ``inference.ip_adapter`` builds."""

IP_ADAPTER_FAMILIES = frozenset(
    {Family.SD1, Family.SD2_512, Family.SD2_768, Family.INPAINT, Family.SDXL, Family.SDXL_BETA}
)
"""Families with a cross-attention UNet, the only ones ``ip_adapter`` may be given to."""


class EngineSpec(BaseModel):
    """One served engine (a row of the registry).

    ``id`` is Stability's engine id; ``type`` is always ``PICTURE`` here. ``tasks`` lists the
    v1 tasks it accepts; ``default_width``/``default_height`` in pixels; ``default_steps``
    1..150; ``dtype`` one of float32/float16/bfloat16 (CPU always runs float32);
    ``upscale_factor`` is the native scale of an upscaler; ``max_output_pixels`` caps an
    upscaler's output (CONTRACT.md §2.4: 4,194,304).

    Helpers of other engines: ``segmenter`` (id of a ``segmenter-clipseg`` engine) makes
    ``TEXT_PROMPT`` masks for this engine and the coarse subject mask of a matting engine;
    ``controlnet`` (weights of a diffusers ``ControlNetModel``) with ``control_preprocess``
    (``sketch``: the input drawing as scribble conditioning; ``canny``: edges of the input
    image) makes this a ControlNet engine; ``ip_adapter`` adds IP-Adapter style conditioning.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    name: str
    description: str
    type: Literal["PICTURE"] = "PICTURE"
    family: Family
    source: EngineSource
    tasks: tuple[Task, ...]
    dimensions: DimensionRule
    default_width: int = 512
    default_height: int = 512
    default_sampler: Sampler = Sampler.K_DPMPP_2M
    default_steps: int = Field(default=30, ge=1, le=150)
    dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    price: PriceRule
    upscale_factor: int | None = None
    max_output_pixels: int | None = None
    segmenter: str | None = None
    controlnet: EngineSource | None = None
    control_preprocess: Literal["sketch", "canny"] | None = None
    ip_adapter: IPAdapterSource | None = None

    @field_validator("tasks")
    @classmethod
    def _tasks_nonempty(cls, v: tuple[Task, ...]) -> tuple[Task, ...]:
        if not v:
            raise ValueError("at least one task")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> EngineSpec:
        is_upscaler = self.family in (Family.UPSCALER_ESRGAN, Family.UPSCALER_LATENT_X4)
        only = NON_DIFFUSION_TASKS.get(self.family)
        if only is not None and self.tasks != only:
            raise ValueError(f"family {self.family.value} serves exactly {[t.value for t in only]}")
        if only is None and set(self.tasks) & {Task.UPSCALE, Task.REMOVE_BACKGROUND}:
            raise ValueError("diffusion families serve text-to-image, image-to-image and masking only")
        if (self.controlnet is None) != (self.control_preprocess is None):
            raise ValueError("'controlnet' and 'control_preprocess' go together")
        if self.ip_adapter is not None and self.family not in IP_ADAPTER_FAMILIES:
            raise ValueError(f"family {self.family.value} cannot take an 'ip_adapter' (UNet families only)")
        if is_upscaler and not self.upscale_factor:
            raise ValueError("upscalers need 'upscale_factor'")
        if self.family in FLOW_MATCHING_FAMILIES and self.default_sampler not in FLOW_MATCHING_SAMPLERS:
            raise ValueError(
                f"default_sampler of a flow-matching family must be one of {FLOW_MATCHING_SAMPLERS}"
            )
        return self

    @property
    def is_demo(self) -> bool:
        """True when a tiny offline pipeline backs this engine."""
        return self.source.kind == "demo"

    def supported_samplers(self) -> tuple[Sampler, ...]:
        """Samplers this engine's family can run (all eleven, or Euler/Heun for flow matching)."""
        if self.family in FLOW_MATCHING_FAMILIES:
            return FLOW_MATCHING_SAMPLERS
        if self.family in (Family.UPSCALER_ESRGAN,):
            return ()
        return tuple(Sampler)


class ProductSpec(BaseModel):
    """One product of the registry's ``products:`` mapping.

    - ``engine``: id of the engine that serves it (must exist in the registry).
    - ``credits``: flat price per successful image (CONTRACT.md §3.3, 2026-09 column).
    - ``cfg_scale``: default guidance scale (e.g. 4 for SD 3.5 Large, 1 for Turbo); ``None`` =
      the request's default.
    - ``steps``: denoising steps; ``None`` = the engine's default.
    - ``negative_prompt``: whether a negative prompt is accepted (False for turbo models: a
      negative prompt is refused with 400, as Stability documents).
    - ``output_pixels``: target output area of a diffusion upscaler (conservative: 4 MP).
    - ``noise_level_per_creativity``: x4 upscaler ``noise_level`` = ``creativity`` x this.
    - ``prompt`` / ``negative_prompt_text``: prompts used when the endpoint takes none (erase)
      or the client sent none (outpaint, style-transfer).
    - ``strength``: how much of a masked or init image is re-noised, 0..1 (diffusers
      ``strength``; e.g. below 1 for recolor, which keeps structure); ``None`` = 1 for masks.
    - ``mask_prompt``: what the segmenter masks when the endpoint names nothing itself
      (replace-background-and-relight: ``background``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: str = Field(min_length=1)
    credits: float = Field(ge=0)
    cfg_scale: float | None = Field(default=None, ge=0, le=35)
    steps: int | None = Field(default=None, ge=1, le=150)
    negative_prompt: bool = True
    output_pixels: int | None = Field(default=None, ge=1)
    noise_level_per_creativity: float | None = Field(default=None, ge=0, le=700)
    prompt: str | None = Field(default=None, min_length=1, max_length=10_000)
    negative_prompt_text: str | None = Field(default=None, min_length=1, max_length=10_000)
    strength: float | None = Field(default=None, gt=0, le=1)
    mask_prompt: str | None = Field(default=None, min_length=1, max_length=10_000)


class EngineRegistry(BaseModel):
    """A validated registry: ``engines`` keyed by id, in file order; ``products`` (v2beta
    product name -> ``ProductSpec``) and ``product_aliases`` (legacy name -> product name).
    ``origin`` names the file."""

    model_config = ConfigDict(extra="forbid")

    engines: tuple[EngineSpec, ...]
    products: dict[str, ProductSpec] = Field(default_factory=dict)
    product_aliases: dict[str, str] = Field(default_factory=dict)
    origin: str = "<memory>"

    @model_validator(mode="after")
    def _products_resolve(self) -> EngineRegistry:
        ids = {e.id for e in self.engines}
        for name, product in self.products.items():
            if product.engine not in ids:
                raise ValueError(f"product {name!r}: engine {product.engine!r} is not in the registry")
        for alias, target in self.product_aliases.items():
            if target not in self.products:
                raise ValueError(f"product alias {alias!r}: {target!r} is not a product")
        families = {e.id: e.family for e in self.engines}
        for e in self.engines:
            if e.segmenter is not None and families.get(e.segmenter) != Family.SEGMENTER_CLIPSEG:
                raise ValueError(f"engine {e.id!r}: segmenter {e.segmenter!r} is not a clipseg engine")
        return self

    def product(self, name: str) -> tuple[ProductSpec, EngineSpec]:
        """The product ``name`` (or a legacy alias of one) and the engine serving it.

        Raises ``NotFound`` (param ``model``) when the registry does not offer it.
        """
        product = self.products.get(self.product_aliases.get(name, name))
        if product is None:
            raise NotFound(f"model: {name} is not served here", param="model")
        return product, self.get(product.engine)

    @field_validator("engines")
    @classmethod
    def _unique(cls, v: tuple[EngineSpec, ...]) -> tuple[EngineSpec, ...]:
        seen: set[str] = set()
        for e in v:
            if e.id in seen:
                raise ValueError(f"duplicate engine id {e.id!r}")
            seen.add(e.id)
        return v

    def get(self, engine_id: str) -> EngineSpec:
        """The engine with this id; raises ``NotFound`` (contract message) when unknown."""
        for e in self.engines:
            if e.id == engine_id:
                return e
        raise NotFound(f"The specified engine (ID {engine_id}) was not found.", param="engine_id")

    def ids(self) -> list[str]:
        """Engine ids in registry order."""
        return [e.id for e in self.engines]


PUBLIC_REGISTRY = "public"
DEMO_REGISTRY = "demo"


def _describe_error(origin: str, raw: dict, err: ValidationError) -> str:
    lines = [f"invalid engine registry {origin}:"]
    engines = raw.get("engines") if isinstance(raw, dict) else None
    for e in err.errors():
        loc = list(e["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "engines" and isinstance(loc[1], int):
            idx = loc[1]
            eid = None
            if isinstance(engines, list) and idx < len(engines) and isinstance(engines[idx], dict):
                eid = engines[idx].get("id")
            where = f"engine {eid or '#' + str(idx)}"
            loc = loc[2:]
        field = ".".join(str(x) for x in loc) or "(engine)"
        lines.append(f"  {where + ', ' if where else ''}field {field}: {e['msg']}")
    return "\n".join(lines)


def parse_registry(text: str, origin: str) -> EngineRegistry:
    """Parse and validate registry YAML text.

    Raises ``RegistryError`` whose message names ``origin`` (the file), the engine id and
    the field for every problem.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"invalid engine registry {origin}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or "engines" not in raw:
        raise RegistryError(f"invalid engine registry {origin}: expected a mapping with an 'engines' list")
    # Top-level keys starting with "x-" hold YAML anchors (shared rules); they are not engines.
    body = {k: v for k, v in raw.items() if not str(k).startswith("x-")}
    try:
        return EngineRegistry.model_validate({**body, "origin": origin})
    except ValidationError as exc:
        raise RegistryError(_describe_error(origin, raw, exc)) from None


def _public_text() -> str:
    return resources.files("stableserve.data").joinpath("engines.yaml").read_text(encoding="utf-8")


def demo_registry(base: EngineRegistry) -> EngineRegistry:
    """The same engine ids as ``base``, each backed by a tiny pipeline of its family.

    Descriptions say so, names get a "(demo)" suffix, and fp32 is used (CPU). Dimension
    rules, tasks and prices stay those of the real engine. An ``ip_adapter`` becomes the tiny
    locally built one (``repo`` = ``DEMO_IP_ADAPTER_REPO``), so no demo engine needs the network.
    """
    engines = []
    for e in base.engines:
        engines.append(
            e.model_copy(
                update={
                    "name": f"{e.name} (demo)",
                    "description": (
                        f"DEMO: a tiny random-weight {e.family.value} pipeline standing in for "
                        f"{e.name}; images are noise-like. Serve the 'public' registry for real weights."
                    ),
                    "source": EngineSource(kind="demo"),
                    # A demo engine's ControlNet is a demo one too (built from the family's demo UNet).
                    "controlnet": EngineSource(kind="demo") if e.controlnet is not None else None,
                    "dtype": "float32",
                    "ip_adapter": IPAdapterSource(repo=DEMO_IP_ADAPTER_REPO) if e.ip_adapter else None,
                }
            )
        )
    return EngineRegistry(
        engines=tuple(engines),
        products=base.products,
        product_aliases=base.product_aliases,
        origin=f"demo (from {base.origin})",
    )


def load_registry(spec: str) -> EngineRegistry:
    """Load a registry by name (``demo`` or ``public``) or file path.

    Raises ``RegistryError`` for a missing or invalid file.
    """
    if spec == PUBLIC_REGISTRY:
        return parse_registry(_public_text(), "stableserve/data/engines.yaml")
    if spec == DEMO_REGISTRY:
        return demo_registry(parse_registry(_public_text(), "stableserve/data/engines.yaml"))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise RegistryError(f"engine registry {spec!r} is neither 'demo', 'public' nor a readable file")
    return parse_registry(path.read_text(encoding="utf-8"), str(path))
