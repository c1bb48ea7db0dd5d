"""Usage reports: jobs, images and credits per organization, engine and UTC day.

Summed in the database from ``jobs`` (by ``created_at``, the day a job was submitted) and the
ledger (a job's credits count once it is captured: ``capture`` entry, i.e. the job succeeded
and was charged). Runs in the caller's transaction.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from sqlalchemy import JSON, String, and_, case, cast, func, select
from sqlalchemy.orm import Session, aliased

from stableserve.db.base import to_credits
from stableserve.db.models import Job, LedgerEntry
from stableserve.errors import InvalidRequest


@dataclass(frozen=True)
class UsageRow:
    """One organization's use of one engine on one UTC ``day``: jobs submitted (``jobs``, of
    which ``succeeded``, ``failed``, ``cancelled``; the rest are still queued or running),
    ``images`` produced by the succeeded ones and ``credits`` charged (6-decimal ``Decimal``)."""

    org_id: str
    engine_id: str
    day: date
    jobs: int
    succeeded: int
    failed: int
    cancelled: int
    images: int
    credits: Decimal


#: The CSV header row (``UsageRow``'s field names, in order).
CSV_COLUMNS = tuple(f.name for f in fields(UsageRow))


def _day(session: Session):
    if session.get_bind().dialect.name == "sqlite":  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC)
        return func.substr(cast(Job.created_at, String), 1, 10)
    return func.to_char(func.timezone("UTC", Job.created_at), "YYYY-MM-DD")


def _images(session: Session):
    if session.get_bind().dialect.name == "sqlite":
        return func.json_array_length(Job.result_json)
    return func.json_array_length(cast(Job.result_json, JSON))


def _count(condition) -> object:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def usage_report(
    session: Session, *, org_id: str | None = None, start: date | None = None, end: date | None = None
) -> list[UsageRow]:
    """Rows for jobs submitted from day ``start`` to day ``end`` (both inclusive, UTC; ``None``:
    unbounded), of ``org_id`` only when given; ordered by day, organization, engine. Raises
    ``InvalidRequest`` when ``start`` is after ``end``. (An unknown ``org_id`` gives no rows.)"""
    if start is not None and end is not None and start > end:
        raise InvalidRequest("from: must not be after to", param="from")
    captured = aliased(LedgerEntry)
    day = _day(session).label("day")
    succeeded = Job.state == "succeeded"
    query = (
        select(
            Job.org_id,
            Job.engine_id,
            day,
            func.count(Job.id),
            _count(succeeded),
            _count(Job.state == "failed"),
            _count(Job.state == "cancelled"),
            func.coalesce(func.sum(case((succeeded, _images(session)), else_=0)), 0),
            func.sum(case((captured.id.is_not(None), Job.price), else_=0)),
        )
        .outerjoin(captured, and_(captured.job_id == Job.id, captured.kind == "capture"))
        .group_by(Job.org_id, Job.engine_id, day)
        .order_by(day, Job.org_id, Job.engine_id)
    )
    if org_id is not None:
        query = query.where(Job.org_id == org_id)
    if start is not None:
        query = query.where(Job.created_at >= datetime.combine(start, time(), UTC))
    if end is not None and end < date.max:
        query = query.where(Job.created_at < datetime.combine(end + timedelta(days=1), time(), UTC))
    return [
        UsageRow(
            org_id=row[0],
            engine_id=row[1],
            day=date.fromisoformat(row[2]),
            jobs=int(row[3]),
            succeeded=int(row[4]),
            failed=int(row[5]),
            cancelled=int(row[6]),
            images=int(row[7] or 0),
            credits=to_credits(row[8] or 0),
        )
        for row in session.execute(query)
    ]


def to_csv(rows: Iterable[UsageRow]) -> str:
    """``rows`` as CSV text: the ``CSV_COLUMNS`` header row, then one line per row (days as
    ``YYYY-MM-DD``, credits with their 6 decimals), ``\\r\\n`` line ends."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(astuple(row))
    return buf.getvalue()
