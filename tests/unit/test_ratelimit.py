"""RateLimiter: the contract's 150 requests per 10 s then a 60 s time-out, in memory (with a
fake clock) and in Redis shared by two limiters (two server processes)."""

from __future__ import annotations

import secrets
import time

import pytest

from stableserve.errors import RateLimited
from stableserve.ratelimit import RateLimiter
from stableserve.settings import RateLimitSettings, Settings


class Clock:
    """A controllable ``time.time``."""

    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "time", fake)
    return fake


def test_request_151_is_refused_and_the_key_is_timed_out_for_60_s(clock, tmp_path):
    limiter = RateLimiter(Settings(home=tmp_path))
    for _ in range(150):
        state = limiter.hit("key-a")
        clock.now += 0.01
    assert state.limit == 150 and state.remaining == 0
    with pytest.raises(RateLimited) as exc:
        limiter.hit("key-a")
    assert exc.value.retry_after == 60 and "150 requests within a 10 second period" in exc.value.message
    assert limiter.hit("key-b").remaining == 149  # other keys are not affected
    clock.now += 30  # the window has passed, the time-out has not
    with pytest.raises(RateLimited) as exc:
        limiter.hit("key-a")
    assert 1 <= exc.value.retry_after <= 31
    clock.now += 31
    assert limiter.hit("key-a").remaining == 149


def test_disabled_limits_count_nothing(tmp_path):
    limiter = RateLimiter(Settings(home=tmp_path, rate_limit=RateLimitSettings(enabled=False)))
    assert all(limiter.hit("k") is None for _ in range(300))


def test_a_plan_limit_replaces_the_default_for_its_subject(clock, tmp_path):
    limiter = RateLimiter(Settings(home=tmp_path))
    for remaining in (2, 1, 0):
        assert limiter.hit("key-plan", (3, 5)).remaining == remaining
    with pytest.raises(RateLimited) as exc:
        limiter.hit("key-plan", (3, 5))
    assert "3 requests within a 5 second period" in exc.value.message and exc.value.retry_after == 60
    assert limiter.hit("key-default").limit == 150
    assert limiter.hit("key-same", (150, 10)).remaining == 149  # the default's numbers: the default


def _redis_url() -> str:
    import redis

    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:
        pytest.skip("no Redis server on 127.0.0.1:6379")
    return url


def test_redis_counters_are_shared_between_processes(tmp_path):
    settings = Settings(
        home=tmp_path, redis_url=_redis_url(), rate_limit=RateLimitSettings(requests=3, timeout_s=2)
    )
    first, second = RateLimiter(settings), RateLimiter(settings)  # as two server processes would
    key = f"key-{secrets.token_hex(6)}"
    assert first.hit(key).remaining == 2
    assert second.hit(key).remaining == 1
    assert first.hit(key).remaining == 0
    with pytest.raises(RateLimited):
        second.hit(key)
    with pytest.raises(RateLimited):  # the time-out is shared too
        first.hit(key)
