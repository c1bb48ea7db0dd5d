"""``RateLimiter``: per-API-key request limits shared by every protocol (CONTRACT.md §3.1).

``requests`` per ``window_s`` (moving window, the ``limits`` library); the request that goes
over is refused and the key is then timed out for ``timeout_s`` seconds (Stability: 150
requests per 10 s, then 60 s; an organization's plan can set its own requests per window).
Counters are in memory, or in Redis when ``redis_url`` is
set, so every server process shares them. ``api.deps.principal_for_key`` calls ``hit`` for
each authenticated request, so REST, gRPC and the OpenAI routes all count.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from stableserve.errors import RateLimited
from stableserve.settings import Settings

NAMESPACE = "stableserve"


@dataclass(frozen=True)
class RateState:
    """What the ``X-RateLimit-*`` headers say: ``limit`` requests per window, ``remaining``
    in it, ``reset`` (unix seconds when the window frees up)."""

    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-Limit``, ``X-RateLimit-Remaining``, ``X-RateLimit-Reset``."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


class RateLimiter:
    """Counts requests per key (see the module docstring). Thread-safe; blocking (Redis I/O)."""

    def __init__(self, settings: Settings):
        config = settings.rate_limit
        self.enabled = config.enabled
        self.item = RateLimitItemPerSecond(config.requests, config.window_s)
        self.timeout_s = config.timeout_s
        self.storage = storage_from_string(settings.redis_url or "memory://")
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.message = self._message(config.requests, config.window_s)

    def _message(self, requests: int, window_s: int) -> str:
        return (
            f"You have exceeded the rate limit of {requests} requests within a {window_s} "
            f"second period, and have been timed out for {self.timeout_s} seconds."
        )

    def _item(self, limit: tuple[int, int] | None) -> tuple[RateLimitItemPerSecond, str]:
        """The moving-window item and 429 message of ``limit`` (``None``: the settings')."""
        if limit is None or (limit[0], limit[1]) == (self.item.amount, self.item.multiples):
            return self.item, self.message
        requests, window_s = limit
        return RateLimitItemPerSecond(requests, window_s), self._message(requests, window_s)

    def _timeout_key(self, subject: str) -> str:
        return f"{NAMESPACE}/timeout/{subject}"

    def hit(self, subject: str, limit: tuple[int, int] | None = None) -> RateState | None:
        """Count one request of ``subject`` (an API key id). Returns the state for the headers
        (``None`` when limits are off); raises ``RateLimited`` (with ``retry_after`` s) when
        the subject is timed out or this request goes over the limit.

        ``limit``: ``(requests, window_s)`` for this subject (its organization's plan, see
        ``accounts.plans.rate_limit_for``); ``None``: ``settings.rate_limit``'s. The time-out
        after going over is always ``settings.rate_limit.timeout_s``.
        """
        if not self.enabled:
            return None
        item, message = self._item(limit)
        timeout_key = self._timeout_key(subject)
        if self.storage.get(timeout_key) > 0:
            retry = max(1, math.ceil(self.storage.get_expiry(timeout_key) - time.time()))
            raise RateLimited(message, retry_after=retry)
        if not self.limiter.hit(item, NAMESPACE, subject):
            if self.timeout_s:
                self.storage.incr(timeout_key, self.timeout_s)
            raise RateLimited(message, retry_after=self.timeout_s or item.get_expiry())
        stats = self.limiter.get_window_stats(item, NAMESPACE, subject)
        return RateState(item.amount, stats.remaining, math.ceil(stats.reset_time))
