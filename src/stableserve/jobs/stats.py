"""Per-engine job statistics over a recent window (the live model catalog, ``engines list``).

``engine_stats(session, since)`` reads the ``jobs`` table with two statements whatever the
number of engines (portable SQL: the same on SQLite and PostgreSQL):

1. counts per engine (``GROUP BY engine_id``) of jobs created at or after ``since``: all of
   them, and the succeeded / failed / cancelled ones;
2. the ``created_at``/``finished_at`` of succeeded jobs in the window, at most
   ``MAX_DURATIONS_PER_ENGINE`` per engine (the newest, ``ROW_NUMBER() OVER (PARTITION BY
   engine_id ...)``); latency percentiles are computed in Python from those durations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from stableserve.db.models import Job

MAX_DURATIONS_PER_ENGINE = 10_000
"""At most this many (the newest) succeeded jobs per engine feed the latency percentiles."""


@dataclass(frozen=True)
class EngineStats:
    """What one engine's jobs did in the window.

    - ``jobs``: jobs created in the window, any state (queued and running included).
    - ``succeeded`` / ``failed`` / ``cancelled``: how many of them ended so.
    - ``p50_latency_ms`` / ``p95_latency_ms``: nearest-rank percentiles (integer
      milliseconds) of ``finished_at - created_at`` of the succeeded jobs (queueing included);
      ``None`` without a succeeded job.
    - ``success_rate``: ``succeeded / (succeeded + failed)`` in 0..1 (cancelled jobs left out);
      ``None`` when no job succeeded or failed.
    """

    engine_id: str
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    p50_latency_ms: int | None = None
    p95_latency_ms: int | None = None

    @property
    def success_rate(self) -> float | None:
        """``succeeded / (succeeded + failed)``, or ``None`` when neither happened."""
        finished = self.succeeded + self.failed
        return self.succeeded / finished if finished else None


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile ``pct`` (0 < pct <= 100) of ascending ``sorted_values``.

    The smallest value with at least ``pct`` % of the values at or below it (always an
    observed value); ``None`` for an empty list. E.g. p50 of [1, 2, 3, 4] is 2, p95 is 4.
    """
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def engine_stats(session: Session, since: datetime) -> dict[str, EngineStats]:
    """Statistics of the jobs created at or after ``since`` (aware datetime), keyed by engine id.

    Engines without a job in the window are absent (callers default to ``EngineStats(id)``).
    Read-only; runs inside the caller's session. Database errors (e.g. an unmigrated
    database) propagate as SQLAlchemy exceptions.
    """

    def count(state: str):
        return func.coalesce(func.sum(case((Job.state == state, 1), else_=0)), 0)

    counts = session.execute(
        select(
            Job.engine_id,
            func.count(),
            count("succeeded"),
            count("failed"),
            count("cancelled"),
        )
        .where(Job.created_at >= since)
        .group_by(Job.engine_id)
    ).all()

    newest = (
        select(
            Job.engine_id,
            Job.created_at,
            Job.finished_at,
            func.row_number().over(partition_by=Job.engine_id, order_by=Job.created_at.desc()).label("rn"),
        )
        .where(Job.state == "succeeded", Job.created_at >= since, Job.finished_at.is_not(None))
        .subquery()
    )
    # Columns of the subquery keep the ORM types (UTCDateTime: aware datetimes on both databases).
    rows = session.execute(
        select(newest.c.engine_id, newest.c.created_at, newest.c.finished_at).where(
            newest.c.rn <= MAX_DURATIONS_PER_ENGINE
        )
    ).all()
    durations: dict[str, list[float]] = {}
    for engine_id, created_at, finished_at in rows:
        ms = max(0.0, (finished_at - created_at).total_seconds() * 1000)
        durations.setdefault(engine_id, []).append(ms)

    stats: dict[str, EngineStats] = {}
    for engine_id, jobs, succeeded, failed, cancelled in counts:
        values = sorted(durations.get(engine_id, ()))
        p50, p95 = percentile(values, 50), percentile(values, 95)
        stats[engine_id] = EngineStats(
            engine_id=engine_id,
            jobs=int(jobs),
            succeeded=int(succeeded),
            failed=int(failed),
            cancelled=int(cancelled),
            p50_latency_ms=None if p50 is None else round(p50),
            p95_latency_ms=None if p95 is None else round(p95),
        )
    return stats
