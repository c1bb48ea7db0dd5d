"""Credits ledger on SQLite and PostgreSQL: arithmetic, idempotent settlement, concurrency.

PostgreSQL tests run in a fresh schema per test (dropped afterwards) on
``$STABLESERVE_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
and are skipped when that server is unreachable.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import cache
from pathlib import Path

import pytest
from sqlalchemy import func, select

from stableserve.accounts import balance, capture, create_org, grant, release, reserve, summary
from stableserve.db.migrate import upgrade
from stableserve.db.models import LedgerEntry
from stableserve.db.session import dispose, session_factory
from stableserve.errors import InsufficientCredits, InvalidRequest, NotFound
from stableserve.settings import Settings

PG_URL = os.environ.get("STABLESERVE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@cache
def pg_unreachable() -> str | None:
    """Why PostgreSQL tests cannot run, or None when the server answers."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL)
    try:
        psycopg.connect(url.set(drivername="postgresql").render_as_string(False), connect_timeout=3).close()
    except Exception as exc:  # any failure means "skip"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"PostgreSQL at {url.host}:{url.port} is unreachable ({type(exc).__name__}: {first_line})"
    return None


def _pg_admin(sql: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(PG_URL).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


@contextmanager
def migrated_database(kind: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings on a migrated, empty database of ``kind`` (``sqlite``: a file under
    ``tmp_path``; ``postgresql``: a fresh schema, dropped afterwards, or a skip)."""
    home = tmp_path / "home"
    if kind == "sqlite":
        s = Settings(home=home, database_url=None, secret_key="test-secret")
        try:
            upgrade(s)
            yield s
        finally:
            dispose(s)
        return
    reason = pg_unreachable()
    if reason:
        pytest.skip(reason)
    schema = f"test_{secrets.token_hex(6)}"
    _pg_admin(f"CREATE SCHEMA {schema}")
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    s = Settings(home=home, database_url=url, secret_key="test-secret")
    try:
        upgrade(s)
        yield s
    finally:
        dispose(s)
        _pg_admin(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    """Settings on a fresh migrated database; every test runs on SQLite and PostgreSQL."""
    with migrated_database(request.param, tmp_path) as s:
        yield s


def _org(settings, credits=0, name="acme") -> str:
    """Create organization ``name`` with ``credits``; returns its id."""
    with session_factory(settings).begin() as s:
        return create_org(s, name, credits=credits).id


def test_arithmetic_and_idempotent_settlement(settings):
    org = _org(settings, credits=10)
    with session_factory(settings).begin() as s:
        reserve(s, org, "3.25", "job-1")
        reserve(s, org, Decimal("1.5"), "job-2")
        reserve(s, org, 0, "job-free")
        assert balance(s, org) == Decimal("5.25")
        assert capture(s, "job-1") is True
        assert release(s, "job-2") is True
        assert balance(s, org) == Decimal("6.75")
        # Exactly one of capture/release ever takes effect per job.
        assert capture(s, "job-1") is False
        assert release(s, "job-1") is False
        assert capture(s, "job-2") is False
        assert release(s, "job-2") is False
        assert capture(s, "no-such-job") is False and release(s, "no-such-job") is False
    with session_factory(settings).begin() as s:
        assert summary(s, org) == {
            "granted": Decimal("10"),
            "reserved": Decimal("0"),
            "captured": Decimal("3.25"),
            "released": Decimal("1.5"),
            "balance": Decimal("6.75"),
        }
        reserve(s, org, "2", "job-3")
        totals = summary(s, org)
        assert totals["reserved"] == Decimal("2") and totals["balance"] == Decimal("4.75")
        assert totals["balance"] == totals["granted"] - totals["reserved"] - totals["captured"]
        kinds = s.execute(
            select(LedgerEntry.kind, LedgerEntry.amount).where(LedgerEntry.job_id == "job-1")
        ).all()
        assert sorted(kinds) == [("capture", Decimal("0")), ("reserve", Decimal("-3.25"))]


def test_decimal_amounts_are_exact_to_six_places(settings):
    org = _org(settings)
    with session_factory(settings).begin() as s:
        for _ in range(3):
            grant(s, org, 0.1)
        grant(s, org, "0.0000006")  # rounds to 0.000001
        with pytest.raises(InvalidRequest):
            grant(s, org, "0.0000004")  # rounds to 0, which is not a positive grant
    with session_factory(settings).begin() as s:
        grant(s, org, "1234567.123456")
        value = balance(s, org)
    assert value == Decimal("1234567.423457") and isinstance(value, Decimal)
    assert value.as_tuple().exponent == -6


def test_insufficient_credits_writes_nothing(settings):
    org = _org(settings, credits="1.5")
    with session_factory(settings).begin() as s:
        with pytest.raises(InsufficientCredits) as info:
            reserve(s, org, "2.25", "job-x")
        assert info.value.needed == 2.25 and info.value.balance == 1.5
        assert info.value.code == "insufficient_credits"
        assert "costs 2.25 credits" in info.value.message and "balance is 1.5 credits" in info.value.message
        # The transaction is still usable and nothing was written.
        assert balance(s, org) == Decimal("1.5")
        reserve(s, org, "1.5", "job-y")
        assert balance(s, org) == 0


def test_invalid_calls(settings):
    org = _org(settings, credits=5)
    with session_factory(settings).begin() as s:
        reserve(s, org, 1, "dup")
        with pytest.raises(InvalidRequest) as info:
            reserve(s, org, 1, "dup")
        assert info.value.code == "conflict"
        for bad in (-1, "x", "nan"):
            with pytest.raises(InvalidRequest):
                reserve(s, org, bad, f"job-{bad}")
        with pytest.raises(InvalidRequest):
            grant(s, org, 0)
        with pytest.raises(NotFound):
            reserve(s, "org-missing", 1, "job-m")
        with pytest.raises(NotFound):
            grant(s, "org-missing", 1)
        assert balance(s, org) == 4


def test_fifty_concurrent_reservations_never_overdraw(settings):
    org = _org(settings, credits=30)
    factory = session_factory(settings)
    barrier = threading.Barrier(50)
    results: dict[str, str] = {}

    def worker(n: int) -> None:
        job = f"job-{n:02d}"
        barrier.wait()
        try:
            with factory.begin() as s:
                reserve(s, org, 1, job)
            results[job] = "ok"
        except InsufficientCredits:
            results[job] = "short"
        except Exception as exc:  # reported by the assertion below
            results[job] = repr(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    outcomes = sorted(results.values())
    assert outcomes.count("ok") == 30 and outcomes.count("short") == 20, outcomes
    with factory.begin() as s:
        assert balance(s, org) == 0
        for job, outcome in results.items():
            if outcome == "ok":
                assert capture(s, job) is True
    with factory.begin() as s:
        totals = summary(s, org)
        assert totals == {
            "granted": Decimal(30),
            "reserved": Decimal(0),
            "captured": Decimal(30),
            "released": Decimal(0),
            "balance": Decimal(0),
        }
        by_kind = dict(
            s.execute(
                select(LedgerEntry.kind, func.count())
                .where(LedgerEntry.org_id == org)
                .group_by(LedgerEntry.kind)
            ).all()
        )
        assert by_kind == {"grant": 1, "reserve": 30, "capture": 30}


def test_racing_capture_and_release_settle_once(settings):
    org = _org(settings, credits=10)
    factory = session_factory(settings)
    jobs = [f"race-{n}" for n in range(10)]
    with factory.begin() as s:
        for job in jobs:
            reserve(s, org, 1, job)
    barrier = threading.Barrier(20)
    wins: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(job: str, action) -> None:
        barrier.wait()
        with factory.begin() as s:
            took = action(s, job)
        if took:
            with lock:
                wins.append((job, action.__name__))

    threads = [threading.Thread(target=worker, args=(j, a)) for j in jobs for a in (capture, release)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(j for j, _ in wins) == jobs  # exactly one winner per job
    released = sum(1 for _, a in wins if a == "release")
    with factory.begin() as s:
        assert balance(s, org) == 10 - (10 - released)
        totals = summary(s, org)
        assert totals["captured"] + totals["released"] == 10 and totals["reserved"] == 0
