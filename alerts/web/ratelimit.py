"""Sign-up rate limits (the ``limits`` library): moving windows in Redis, or in memory without Redis.

Keys are keyed hashes (of the address, of the client IP), never the raw values, under
``settings.ratelimit_prefix`` so deployments and test runs sharing one Redis stay apart. If Redis is down,
sign-ups are let through (and the outage logged): a lost rate limit is better than a lost subscriber.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import structlog
from limits import parse
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from alerts.config import Settings

log = structlog.get_logger("alerts.web.ratelimit")

SIGNUP_PER_IP = "signup-ip"
CONFIRM_PER_ADDRESS = "confirm-address"


class RateLimited(Exception):
    """Over a limit; ``retry_after_s`` is when the next attempt can succeed (the Retry-After header)."""

    def __init__(self, scope: str, retry_after_s: int) -> None:
        super().__init__(f"rate limited ({scope}); retry after {retry_after_s}s")
        self.scope = scope
        self.retry_after_s = retry_after_s


@dataclass
class RateLimiter:
    storage: Storage

    def __post_init__(self) -> None:
        self._strategy = MovingWindowRateLimiter(self.storage)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        if settings.redis_url:
            # Short timeouts: a stuck Redis must not hold sign-ups up for long (see ``hit``).
            storage = RedisStorage(
                settings.redis_url, key_prefix=settings.ratelimit_prefix, socket_timeout=2.0, socket_connect_timeout=2.0
            )
            return cls(storage)
        return cls(MemoryStorage())

    def hit(self, scope: str, limit: str, key: str, cost: int = 1) -> None:
        """Count ``cost`` attempts against ``limit`` for ``key``; raise RateLimited if over (nothing counted)."""
        item = parse(limit)
        try:
            if self._strategy.hit(item, scope, key, cost=cost):
                return
            reset_at = self._strategy.get_window_stats(item, scope, key).reset_time
        except Exception as exc:  # redis.ConnectionError, TimeoutError... whatever the storage raises
            log.error("ratelimit.unavailable", scope=scope, error=type(exc).__name__)
            return
        raise RateLimited(scope, max(1, math.ceil(reset_at - time.time())))

    def reset(self) -> None:
        """Forget every counter under this limiter's prefix (tests, operators after an incident)."""
        self.storage.reset()
