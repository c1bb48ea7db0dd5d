"""One settings tree for the whole server (pydantic-settings).

Every field can be set from the environment with the prefix ``STABLESERVE_`` and ``__`` for
nesting, e.g. ``STABLESERVE_HOME=/srv/stableserve`` or
``STABLESERVE_MODEL_CACHE__MAX_BYTES=8000000000``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelCacheSettings(BaseModel):
    """Worker-side pipeline cache.

    ``max_bytes``: memory budget for loaded pipelines, in bytes of parameters (0 = no
    limit). Least-recently-used engines are evicted when a new one would exceed it.
    """

    max_bytes: int = Field(default=0, ge=0)


class RunnerSettings(BaseModel):
    """Runner knobs. ``max_batch``: samples run as one pipeline batch, at most this many (1..16).

    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:N]``.
    """

    max_batch: int = Field(default=4, ge=1, le=16)
    device: str = "auto"


class JobSettings(BaseModel):
    """Job execution. ``workers``: LocalExecutor worker processes (1..64); ``max_queue``: queued
    jobs accepted before new work is refused (admission control).

    Leases (``jobs.dispatcher``, several server processes may share one database):
    ``lease_s``: seconds a process holds a job without renewing it; a job whose lease ran out
    is recovered by any process (its owner is taken for dead). ``heartbeat_s``: how often
    leases are renewed and expired ones looked for (must be below ``lease_s``; a third of it
    or less is wise). ``max_attempts``: executions an asynchronous job gets when its worker or
    its process dies (2: one retry). ``drain_s``: how long a graceful shutdown waits for
    running jobs before failing them (``server_shutdown``, credits released). ``poll_s``:
    how often the dispatcher looks for jobs queued by other processes.

    ``executor``: ``local`` (worker processes on this machine) or ``ray`` (Ray Serve
    deployments, ``Settings.ray``; needs ``pip install 'stableserve[ray]'``).
    """

    workers: int = Field(default=1, ge=1, le=64)
    max_queue: int = Field(default=256, ge=1)
    lease_s: float = Field(default=30.0, gt=0)
    heartbeat_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=2, ge=1)
    drain_s: float = Field(default=30.0, ge=0)
    poll_s: float = Field(default=0.5, gt=0)
    executor: Literal["local", "ray"] = "local"

    @field_validator("heartbeat_s")
    @classmethod
    def _heartbeat_below_lease(cls, value: float, info) -> float:
        lease = info.data.get("lease_s")
        if lease is not None and value >= lease:
            raise ValueError(f"heartbeat_s ({value}) must be below lease_s ({lease})")
        return value


class RayFamilySettings(BaseModel):
    """Overrides of ``RaySettings`` for the deployment of one model family (``None`` = the
    ``RaySettings`` value), e.g. ``STABLESERVE_RAY__FAMILIES='{"sdxl": {"max_replicas": 4}}'``."""

    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=1)
    num_gpus: float | None = Field(default=None, ge=0)
    num_cpus_per_replica: float | None = Field(default=None, ge=0)
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    max_models_per_replica: int | None = Field(default=None, ge=1)


class RaySettings(BaseModel):
    """The ``ray`` executor (``jobs.ray_executor``): one Ray Serve deployment per model family.

    - ``address``: the Ray cluster to join (``auto`` = the one ``ray start --head`` runs on this
      machine, or the head's ``HOST:6379``; this process joins as a Ray driver, not through Ray
      Client); ``None`` starts a private local Ray with ``num_cpus`` CPUs (``None`` = all).
      ``num_gpus``: GPUs per replica (fractions share a GPU);
      ``num_cpus_per_replica``: CPUs per replica (CPU inference uses that many threads).
    - Replicas per family: ``min_replicas`` .. ``max_replicas``; equal = a fixed count, else Ray
      autoscales on ``target_ongoing_requests`` per replica (``min_replicas`` 0 scales to zero).
    - ``max_ongoing_requests``: jobs one replica holds at once (running or waiting to form a
      batch); the executor never sends a family more than its replicas can hold, so ordering
      stays with our queue. ``batch_max_size`` / ``batch_wait_timeout_s``: ``@serve.batch``
      micro-batching (a batch never exceeds ``max_ongoing_requests``).
    - ``max_models_per_replica``: engines a replica keeps loaded (``@serve.multiplexed``;
      least recently used unloaded).
    - ``health_check_period_s``: how often Serve checks replicas (a dead one is replaced then).
    - ``app_prefix``: Serve applications are named ``<app_prefix>-<family>``; an executor uses
      a running one of that name as it is. ``keep_deployments``: leave the applications running
      at shutdown (several API processes sharing one fleet); else the executor deletes the ones
      it deployed.
    - ``families``: per-family overrides (``RayFamilySettings``), keyed by family (``sdxl``, ...).
    """

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    num_gpus: float = Field(default=0.0, ge=0)
    num_cpus_per_replica: float = Field(default=1.0, ge=0)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    max_ongoing_requests: int = Field(default=4, ge=1)
    batch_max_size: int = Field(default=4, ge=1)
    batch_wait_timeout_s: float = Field(default=0.05, ge=0)
    max_models_per_replica: int = Field(default=2, ge=1)
    health_check_period_s: float = Field(default=5.0, gt=0)
    app_prefix: str = Field(default="stableserve", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    keep_deployments: bool = False
    families: dict[str, RayFamilySettings] = Field(default_factory=dict)


class ResultSettings(BaseModel):
    """Stored results of asynchronous jobs (v2beta ``/v2beta/results/{id}``, CONTRACT.md §3.2).

    ``retention_s``: seconds a finished result stays fetchable, then it is deleted (default
    86400 = 24 h, as Stability); ``purge_interval_s``: how often expired results are deleted
    from the store; ``dir``: the filesystem ArtifactStore root (default ``<home>/results``).
    """

    retention_s: float = Field(default=86_400.0, gt=0)
    purge_interval_s: float = Field(default=600.0, gt=0)
    dir: Path | None = None


class GrpcSettings(BaseModel):
    """The gRPC API of ``stability-sdk`` (CONTRACT.md §4), served beside the HTTP API.

    - ``port``: TLS port (needs ``tls_cert`` and ``tls_key``, PEM files); ``None`` = off.
      stability-sdk only sends its key to hosts whose address ends in ``443`` (e.g. 8443).
    - ``insecure_port``: a plaintext port, off by default and meant for localhost only: the
      SDK sends no key there, so every call acts for ``insecure_org`` (an organization name).
    - ``host``: interface to bind both on.
    """

    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=1, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_port: int | None = Field(default=None, ge=1, le=65535)
    insecure_org: str | None = None


class OpenAISettings(BaseModel):
    """The OpenAI Images API (``/v1/images/*``) and its model catalog.

    ``default_model`` / ``edit_model`` / ``variation_model``: engine ids used when a request
    names no ``model``; ``url_ttl_s``: lifetime of the signed image links of
    ``response_format=url`` (default 3600 s); ``public_url``: the base URL the links start
    with (default: the URL the request came in on).
    """

    default_model: str = "stable-diffusion-xl-1024-v1-0"
    edit_model: str = "stable-inpainting-512-v2-0"
    variation_model: str = "stable-diffusion-v1-5"
    url_ttl_s: float = Field(default=3600.0, gt=0)
    public_url: str | None = None


class LogSettings(BaseModel):
    """Server logs (``observability.logs``). ``format``: ``json`` (one object per line, with
    the request id) or ``text``; ``include_prompts``: add prompt texts to the generation log
    line (off by default: prompts and images never reach the logs)."""

    format: Literal["json", "text"] = "json"
    include_prompts: bool = False


class RateLimitSettings(BaseModel):
    """Per-API-key request limits (CONTRACT.md §3.1: 150 requests per 10 s, then 60 s out).

    ``requests`` per ``window_s`` seconds (moving window); the request after the limit gets
    429 and the key is refused for ``timeout_s`` seconds. ``enabled`` false turns it off.
    The keys of an organization on a plan get the plan's ``requests`` per ``window_s`` instead.
    Counters live in memory, or in Redis when ``Settings.redis_url`` is set (shared by every
    server process).
    """

    enabled: bool = True
    requests: int = Field(default=150, ge=1)
    window_s: int = Field(default=10, ge=1)
    timeout_s: int = Field(default=60, ge=0)


class PlanSettings(BaseModel):
    """Plans' monthly credit grants (``accounts.plans``).

    ``grant_interval_s``: how often the server applies due monthly grants (at startup, then
    every interval; each organization on a plan gets its grant once per UTC month, so the
    interval only bounds how late in a month it arrives); ``grants_enabled`` false: the server
    never applies them (``stableserve plans apply-grants`` or the admin API still can).
    """

    grants_enabled: bool = True
    grant_interval_s: float = Field(default=3600.0, gt=0)


class IdempotencySettings(BaseModel):
    """``Idempotency-Key`` on POST requests (``api.idempotency``).

    - ``enabled``: false ignores the header.
    - ``ttl_s``: how long a stored response is replayed, counted from when it was stored
      (default 86400 = 24 h); later the key is free again.
    - ``lease_s``: a running request holds its key for this long and renews the hold every
      ``lease_s / 3`` seconds; a key whose server died is free again ``lease_s`` later.
    - ``max_response_bytes``: the largest response body kept (default 64 MiB); a bigger
      success is remembered without its body and its retries get 409.
    - ``purge_interval_s``: expired keys are deleted at most this often (per server process).
    """

    enabled: bool = True
    ttl_s: float = Field(default=86_400.0, gt=0)
    lease_s: float = Field(default=60.0, ge=1)
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    purge_interval_s: float = Field(default=600.0, gt=0)


class ModerationSettings(BaseModel):
    """Server-wide content moderation defaults (``core.moderation``; organizations override
    ``mode`` and add words and patterns with ``stableserve orgs moderation``).

    - ``mode``: ``block`` (refuse flagged prompts, blur flagged images), ``filter`` (only blur
      flagged images) or ``off``.
    - ``words``: whole words or phrases, case-insensitive, e.g.
      ``STABLESERVE_MODERATION__WORDS='["foo", "bar baz"]'``; ``patterns``: Python regexes
      (each at most 200 characters, no nested repeats), searched case-insensitively.
    - ``classifier``: an optional prompt classifier plugin, ``module:attr`` or an entry point
      name of group ``stableserve.moderation`` (``classify(text) -> bool | score``);
      ``classifier_threshold``: score at or above which it flags (0..1).
    - ``check_negative_prompts``: also check negative prompts (off: they steer away from content).
    - ``image_checker``: an optional image safety checker plugin, ``module:attr`` or an entry
      point of group ``stableserve.image_safety`` (``check(images) -> list[bool]``); it wins
      over ``safety_checker``: use diffusers' safety checker when the engine's weights ship
      one (SD 1.x folders with ``safety_checker/`` and ``feature_extractor/``).
    """

    mode: Literal["block", "filter", "off"] = "block"
    words: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)
    classifier: str | None = None
    classifier_threshold: float = Field(default=0.5, ge=0, le=1)
    check_negative_prompts: bool = False
    image_checker: str | None = None
    safety_checker: bool = True

    @field_validator("words")
    @classmethod
    def _words(cls, value: list[str]) -> list[str]:
        from stableserve.core.moderation import validate_words
        from stableserve.errors import InvalidRequest

        try:
            return list(validate_words(value))
        except InvalidRequest as exc:
            raise ValueError(exc.message) from None

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        from stableserve.core.moderation import validate_patterns
        from stableserve.errors import InvalidRequest

        try:
            return list(validate_patterns(value))
        except InvalidRequest as exc:
            raise ValueError(exc.message) from None


class Settings(BaseSettings):
    """Root settings.

    - ``home``: data directory (``STABLESERVE_HOME``, default ``~/.stableserve``); holds the
      database, artifacts and the model cache (``models/``, ``demo/``).
    - ``engines``: which engine registry to serve: ``demo`` (tiny offline pipelines, the
      default), ``public`` (the shipped registry of real public weights) or a path to a YAML
      registry file.
    - ``database_url``: SQLAlchemy URL; default a SQLite file ``<home>/stableserve.db``;
      PostgreSQL as ``postgresql+psycopg://user@host/db``.
    - ``secret_key``: server secret for the keyed hash of API keys; default: generated once
      and kept in ``<home>/secret.key``.
    - ``redis_url``: e.g. ``redis://127.0.0.1:6379/0``; shared state (rate limits) of many
      server processes. ``None``: in-process memory.
    - ``playground``: serve the web playground at ``/`` (``STABLESERVE_PLAYGROUND=false``: no
      page; the API is unchanged).
    """

    model_config = SettingsConfigDict(env_prefix="STABLESERVE_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".stableserve")
    engines: str = "demo"
    database_url: str | None = None
    secret_key: str | None = None
    model_cache: ModelCacheSettings = ModelCacheSettings()
    jobs: JobSettings = JobSettings()
    ray: RaySettings = RaySettings()
    runner: RunnerSettings = RunnerSettings()
    results: ResultSettings = ResultSettings()
    grpc: GrpcSettings = GrpcSettings()
    openai: OpenAISettings = OpenAISettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    logs: LogSettings = LogSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    plans: PlanSettings = PlanSettings()
    moderation: ModerationSettings = ModerationSettings()
    redis_url: str | None = None
    playground: bool = True

    @property
    def db_url(self) -> str:
        """The database URL in force (``database_url`` or the SQLite file in ``home``)."""
        return self.database_url or f"sqlite:///{self.home / 'stableserve.db'}"

    @property
    def models_dir(self) -> Path:
        """Hugging Face cache for real weights: ``<home>/models``."""
        return self.home / "models"

    @property
    def demo_dir(self) -> Path:
        """Where demo pipelines are built on first use: ``<home>/demo``."""
        return self.home / "demo"

    @property
    def results_dir(self) -> Path:
        """Root of the filesystem ArtifactStore: ``results.dir`` or ``<home>/results``."""
        return self.results.dir or self.home / "results"


def get_settings() -> Settings:
    """Settings read from the environment now (not cached: tests change the environment)."""
    return Settings()
