"""Prometheus metrics of the server process (``prometheus-client``), served at ``/metrics``.

- ``stableserve_http_requests_total{method, route, status}`` and
  ``stableserve_http_request_seconds{method, route}``: every HTTP request (``route`` is the
  route template, e.g. ``/v1/generation/{engine_id}/text-to-image``, so ids do not explode
  the label set).
- ``stableserve_generation_seconds{engine, task, outcome}``: submit to result, per job.
- ``stableserve_credits_charged_total{engine}``: credits captured for successful jobs.
- ``stableserve_jobs{state}`` and ``stableserve_queue_depth``: read from the job table on
  each scrape (queued + running = the queue depth).
- ``stableserve_model_load_seconds{engine}``: each time a worker loads an engine's pipeline.
- ``stableserve_gpu_memory_bytes{device, kind}``: torch's ``allocated`` / ``reserved`` device
  memory after the last job on that GPU (absent on CPU-only servers).

Each ``build_app`` gets its own ``CollectorRegistry`` (tests build many apps).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""Seconds; generation runs from tens of milliseconds (demo) to minutes (4 MP upscales)."""


class Metrics:
    """The metrics of one app (see the module docstring). ``render`` gives the text format."""

    def __init__(self, sessions):
        self.sessions = sessions
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "stableserve_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "stableserve_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.generation_seconds = Histogram(
            "stableserve_generation_seconds",
            "Generation latency, submit to result",
            ["engine", "task", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.credits = Counter(
            "stableserve_credits_charged",
            "Credits charged for successful jobs",
            ["engine"],
            registry=self.registry,
        )
        self.jobs = Gauge(
            "stableserve_jobs", "Jobs in the job table by state", ["state"], registry=self.registry
        )
        self.queue_depth = Gauge("stableserve_queue_depth", "Jobs queued or running", registry=self.registry)
        self.model_load_seconds = Histogram(
            "stableserve_model_load_seconds",
            "Time a worker took to load an engine's pipeline",
            ["engine"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.gpu_memory = Gauge(
            "stableserve_gpu_memory_bytes",
            "GPU memory held by torch after the last job (kind: allocated, reserved)",
            ["device", "kind"],
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency."""
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)

    def observe_generation(
        self, engine: str, task: str, outcome: str, seconds: float, credits: float
    ) -> None:
        """One job's latency; ``credits`` charged when ``outcome`` is ``succeeded``."""
        self.generation_seconds.labels(engine, task, outcome).observe(seconds)
        if outcome == "succeeded":
            self.credits.labels(engine).inc(credits)

    def observe_worker(self, stats) -> None:
        """Record a ``jobs.events.WorkerStats``: its engine load times, and GPU memory when the
        worker reports it. Thread-safe (called on executor threads)."""
        for engine, seconds in stats.loads:
            self.model_load_seconds.labels(engine).observe(seconds)
        if stats.memory_allocated is not None:
            self.gpu_memory.labels(stats.device, "allocated").set(stats.memory_allocated)
        if stats.memory_reserved is not None:
            self.gpu_memory.labels(stats.device, "reserved").set(stats.memory_reserved)

    def render(self) -> bytes:
        """The exposition text, job gauges refreshed from the database first. Blocking."""
        from stableserve.db.models import Job

        with self.sessions() as session:
            rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        counts = {state: n for state, n in rows}
        for state in ("queued", "running", "succeeded", "failed", "cancelled"):
            self.jobs.labels(state).set(counts.get(state, 0))
        self.queue_depth.set(counts.get("queued", 0) + counts.get("running", 0))
        return generate_latest(self.registry)
