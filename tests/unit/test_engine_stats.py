"""``jobs.stats.engine_stats`` on SQLite and PostgreSQL: percentiles, success rate, job counts,
the time window, the per-engine row bound; ``core.pricing.default_price``; the CLI listing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from stableserve.accounts import create_org
from stableserve.db.models import Job
from stableserve.db.session import session_factory
from stableserve.jobs import stats as stats_mod
from stableserve.jobs.stats import EngineStats, engine_stats, percentile
from tests.unit.test_ledger import migrated_database


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    """Settings on a fresh migrated database (SQLite, then PostgreSQL or a skip)."""
    with migrated_database(request.param, tmp_path) as s:
        yield s


def add_jobs(settings, rows: list[tuple[str, str, datetime, float | None]]) -> None:
    """Insert jobs: (engine_id, state, created_at, duration in ms or None = not finished)."""
    with session_factory(settings).begin() as s:
        org = create_org(s, "stats-org", credits=0)
        for engine_id, state, created, ms in rows:
            s.add(
                Job(
                    org_id=org.id,
                    engine_id=engine_id,
                    task="text-to-image",
                    state=state,
                    request_json="{}",
                    price=Decimal("1"),
                    created_at=created,
                    finished_at=None if ms is None else created + timedelta(milliseconds=ms),
                )
            )


def stats_since(settings, since: datetime) -> dict[str, EngineStats]:
    with session_factory(settings)() as s:
        return engine_stats(s, since)


def test_percentiles_success_rate_and_window(settings):
    now = datetime.now(UTC)
    recent = now - timedelta(minutes=10)
    old = now - timedelta(hours=2)
    rows = [("a", "succeeded", recent, ms) for ms in range(100, 1001, 100)]  # 100..1000 ms
    rows += [("a", "failed", recent, 5), ("a", "cancelled", recent, 7)]
    rows += [("a", "running", recent, None), ("a", "queued", recent, None)]
    rows += [("a", "succeeded", old, 60_000), ("a", "failed", old, 1)]  # outside the hour
    rows += [("b", "failed", recent, 3), ("b", "cancelled", recent, 4)]
    rows += [("c", "cancelled", recent, 4), ("c", "queued", recent, None)]
    rows += [("d", "succeeded", old, 10)]  # only old jobs: absent
    add_jobs(settings, rows)

    got = stats_since(settings, now - timedelta(hours=1))
    assert set(got) == {"a", "b", "c"}
    a = got["a"]
    assert (a.jobs, a.succeeded, a.failed, a.cancelled) == (14, 10, 1, 1)
    assert (a.p50_latency_ms, a.p95_latency_ms) == (500, 1000)  # nearest rank
    assert a.success_rate == pytest.approx(10 / 11)
    b = got["b"]
    assert (b.jobs, b.succeeded, b.failed, b.cancelled) == (2, 0, 1, 1)
    assert b.success_rate == 0.0 and b.p50_latency_ms is None and b.p95_latency_ms is None
    c = got["c"]
    assert c.jobs == 2 and c.success_rate is None and c.p50_latency_ms is None  # cancelled: excluded

    wide = stats_since(settings, now - timedelta(hours=3))
    assert wide["a"].jobs == 16 and wide["a"].p95_latency_ms == 60_000
    assert wide["a"].success_rate == pytest.approx(11 / 13)
    assert wide["d"].p50_latency_ms == 10 and wide["d"].success_rate == 1.0
    assert stats_since(settings, now + timedelta(minutes=1)) == {}


def test_latency_rows_are_bounded_to_the_newest(settings, monkeypatch):
    now = datetime.now(UTC)
    # Newest three are fast (10 ms), two older ones slow (9 s): with a bound of 3 only the fast count.
    rows = [("a", "succeeded", now - timedelta(minutes=m), 10) for m in (1, 2, 3)]
    rows += [("a", "succeeded", now - timedelta(minutes=m), 9000) for m in (4, 5)]
    add_jobs(settings, rows)
    monkeypatch.setattr(stats_mod, "MAX_DURATIONS_PER_ENGINE", 3)
    got = stats_since(settings, now - timedelta(hours=1))["a"]
    assert got.jobs == 5 and got.succeeded == 5  # counts are exact
    assert (got.p50_latency_ms, got.p95_latency_ms) == (10, 10)


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([1, 2, 3, 4], 95) == 4
    assert percentile(list(range(1, 101)), 95) == 95


def test_default_price_of_every_engine():
    from stableserve.core.engines import load_registry
    from stableserve.core.pricing import default_price

    registry = load_registry("public")
    prices = {e.id: default_price(e) for e in registry.engines}
    assert prices["stable-diffusion-xl-1024-v1-0"] == 0.9  # 30 default steps = reference
    assert prices["stable-inpainting-v1-0"] == 0.2  # masking only: priced from the defaults
    assert prices["sd15-controlnet-scribble"] == 0.2  # needs a control image: same
    assert prices["esrgan-v1-x2plus"] == registry.get("esrgan-v1-x2plus").price.per_image
    assert all(p >= 0 for p in prices.values())


def test_cli_engines_list_with_and_without_database(settings, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stableserve import cli

    now = datetime.now(UTC)
    add_jobs(settings, [("stable-diffusion-v1-5", "succeeded", now - timedelta(minutes=1), 1500)])
    monkeypatch.setattr(cli, "get_settings", lambda: settings)
    result = CliRunner().invoke(cli.app, ["engines", "list", "--engines", "demo"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if "stable-diffusion-v1-5" in x)
    assert "1.5 s" in line and "100%" in line and "0.2" in line

    missing = settings.model_copy(update={"home": tmp_path / "nowhere", "database_url": None})
    monkeypatch.setattr(cli, "get_settings", lambda: missing)
    result = CliRunner().invoke(cli.app, ["engines", "list", "--engines", "demo"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if "stable-diffusion-v1-5" in x)
    assert "1.5 s" not in line and "-" in line
    assert not (tmp_path / "nowhere" / "stableserve.db").exists()  # the listing creates nothing
