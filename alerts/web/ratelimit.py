"""Sign-up rate limits (the ``limits`` library): moving windows in Redis, or in memory without Redis.

Keys are keyed hashes (of the address, of the client IP), never the raw values, under
``settings.ratelimit_prefix`` so deployments and test runs sharing one Redis stay apart. If Redis is down,
sign-ups are let through (and the outage logged): a lost rate limit is better than a lost subscriber.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from limits import parse
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from alerts.config import Settings

log = structlog.get_logger("alerts.web.ratelimit")

SIGNUP_PER_IP = "signup-ip"
CONFIRM_PER_ADDRESS = "confirm-address"


# Several moving-window limits checked and counted in ONE round trip (a sign-up counts the client IP and the
# address). The same lists as limits' own moving window (acquire_moving_window.lua, moving_window.lua), in
# order and with the same outcome as hitting them one by one: a limit over its amount stops there (it and the
# ones after it are not counted; the ones before it are), and says when its window frees.
# KEYS: one list per limit. ARGV: now, then (amount allowed, window seconds, cost) per key.
# Returns {0} when every limit took the hit, else {index of the limit (1-based), when it frees}.
_HIT_ALL = """
local now = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 * i - 1])
  local expiry = tonumber(ARGV[3 * i])
  local amount = tonumber(ARGV[3 * i + 1])
  local entry = amount <= limit and redis.call('lindex', key, limit - amount)
  if amount > limit or (entry and tonumber(entry) >= now - expiry) then
    local low, high, oldest = 0, limit - 1, now
    while low <= high do
      local mid = math.floor((low + high) / 2)
      local value = tonumber(redis.call('lindex', key, mid))
      if value and value >= now - expiry then
        oldest = value
        low = mid + 1
      else
        high = mid - 1
      end
    end
    return {i, tostring(oldest + expiry)}
  end
  for _ = 1, amount do
    redis.call('lpush', key, now)
  end
  redis.call('ltrim', key, 0, limit - 1)
  redis.call('expire', key, expiry)
end
return {0}
"""

# (scope, limit as a limits string, key) of one limit to count.
Hit = tuple[str, str, str]


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
        self._script: Any = None
        self._async_script: Any = None
        self._async_client: Any = None
        if isinstance(self.storage, RedisStorage):
            self._script = self.storage.storage.register_script(_HIT_ALL)

    def open_async(self, redis_url: str | None) -> None:
        """An asyncio Redis client for ``hit_all_async`` (made in the server's event loop: the app's lifespan)."""
        if redis_url and self._script is not None:
            import redis.asyncio

            self._async_client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
            self._async_script = self._async_client.register_script(_HIT_ALL)

    async def close_async(self) -> None:
        client, self._async_client, self._async_script = self._async_client, None, None
        if client is not None:
            await client.aclose()

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

    def hit_all(self, hits: Sequence[Hit]) -> None:
        """Count one attempt against each limit in order, as ``hit`` one by one would; in Redis, one round trip.

        Raises RateLimited for the first limit that is over (the ones after it are not counted).
        """
        if self._script is None:
            for scope, limit, key in hits:
                self.hit(scope, limit, key)
            return
        scopes, keys, args = self._script_call(hits)
        try:
            answer = self._script(keys=keys, args=args)
        except Exception as exc:  # redis.ConnectionError, TimeoutError...: let the sign-up through (module doc)
            log.error("ratelimit.unavailable", scope=scopes[0], error=type(exc).__name__)
            return
        self._raise_if_over(scopes, answer)

    async def hit_all_async(self, hits: Sequence[Hit]) -> None:
        """``hit_all`` awaited on the event loop (after ``open_async``; otherwise it is ``hit_all``)."""
        if self._async_script is None:
            self.hit_all(hits)
            return
        scopes, keys, args = self._script_call(hits)
        try:
            answer = await self._async_script(keys=keys, args=args)
        except Exception as exc:  # as in hit_all
            log.error("ratelimit.unavailable", scope=scopes[0], error=type(exc).__name__)
            return
        self._raise_if_over(scopes, answer)

    def _script_call(self, hits: Sequence[Hit]) -> tuple[list[str], list[str], list[float]]:
        assert isinstance(self.storage, RedisStorage)  # a script exists only for Redis
        items = [(scope, parse(limit), key) for scope, limit, key in hits]
        keys = [self.storage.prefixed_key(item.key_for(scope, key)) for scope, item, key in items]
        args: list[float] = [time.time()]
        for _, item, _ in items:
            args += [item.amount, item.get_expiry(), 1]
        return [scope for scope, _, _ in items], keys, args

    def _raise_if_over(self, scopes: list[str], answer: Sequence[Any]) -> None:
        if int(answer[0]) != 0:
            raise RateLimited(scopes[int(answer[0]) - 1], max(1, math.ceil(float(answer[1]) - time.time())))

    def reset(self) -> None:
        """Forget every counter under this limiter's prefix (tests, operators after an incident)."""
        self.storage.reset()
