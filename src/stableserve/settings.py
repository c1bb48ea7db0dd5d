"""One settings tree for the whole server (pydantic-settings).

Every field can be set from the environment with the prefix ``STABLESERVE_`` and ``__`` for
nesting, e.g. ``STABLESERVE_HOME=/srv/stableserve`` or
``STABLESERVE_MODEL_CACHE__MAX_BYTES=8000000000``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
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
    jobs accepted before new work is refused (admission control)."""

    workers: int = Field(default=1, ge=1, le=64)
    max_queue: int = Field(default=256, ge=1)


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


class RateLimitSettings(BaseModel):
    """Per-API-key request limits (CONTRACT.md §3.1: 150 requests per 10 s, then 60 s out).

    ``requests`` per ``window_s`` seconds (moving window); the request after the limit gets
    429 and the key is refused for ``timeout_s`` seconds. ``enabled`` false turns it off.
    Counters live in memory, or in Redis when ``Settings.redis_url`` is set (shared by every
    server process).
    """

    enabled: bool = True
    requests: int = Field(default=150, ge=1)
    window_s: int = Field(default=10, ge=1)
    timeout_s: int = Field(default=60, ge=0)


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
    """

    model_config = SettingsConfigDict(env_prefix="STABLESERVE_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".stableserve")
    engines: str = "demo"
    database_url: str | None = None
    secret_key: str | None = None
    model_cache: ModelCacheSettings = ModelCacheSettings()
    jobs: JobSettings = JobSettings()
    runner: RunnerSettings = RunnerSettings()
    results: ResultSettings = ResultSettings()
    grpc: GrpcSettings = GrpcSettings()
    openai: OpenAISettings = OpenAISettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    redis_url: str | None = None

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
