"""Redis: the state every replica of a fleet shares (``state: redis://...``).

Key layout, under ``state_prefix`` (default ``atlas:``, so the Redis LiteLLM already uses
can serve):

* ``<prefix>session:<session id>``: a string, the session's guidance (``""``: the teacher
  judged the student strong), set with a Redis TTL of ``session_ttl`` seconds from when it
  was stored (a read does not extend it, as in process memory). Redis, not a count of
  entries, bounds them: every entry expires.
* ``<prefix>breaker``: one hash, changed only by the Lua scripts below (one key per
  script, so it also works on a Redis Cluster): ``count`` (consecutive teacher failures),
  ``opened_at`` (ms, the Redis server's clock, so replicas' clocks need not agree) and
  ``trial_until`` (present while the fleet's one half-open trial call is out; the ms until
  which it holds the slot).

The scripts make each breaker step atomic across the fleet: in half-open state the first
``allow()`` anywhere takes the trial slot and every other replica is refused until the
trial's verdict. The slot is a lease (``trial_lease`` seconds, by default the longer of the
cool-down and a minute): a replica that dies during its trial would otherwise keep the
whole fleet's breaker open for ever; after the lease another replica may try.

Operations raise on any Redis problem; ``state/fallback.py`` turns that into process memory.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, MissingExtraError
from ..redact import register_secret
from .base import StateStatus

# Redis's clock in ms, inside a script: every replica measures the cool-down alike.
_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# allow: ARGV[1] cool-down ms, ARGV[2] trial lease ms -> 1 may call the teacher, 0 not.
_ALLOW = _NOW + """
local opened = redis.call('HGET', KEYS[1], 'opened_at')
if not opened then return 1 end
if now - tonumber(opened) < tonumber(ARGV[1]) then return 0 end
local trial = redis.call('HGET', KEYS[1], 'trial_until')
if trial and tonumber(trial) > now then return 0 end
redis.call('HSET', KEYS[1], 'trial_until', now + tonumber(ARGV[2]))
return 1
"""

# failure: ARGV[1] failures that open the circuit. A failed trial re-opens it at once.
_FAILURE = _NOW + """
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
local trial = redis.call('HEXISTS', KEYS[1], 'trial_until')
if trial == 1 or count >= tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'opened_at', now) end
redis.call('HDEL', KEYS[1], 'trial_until')
return count
"""

# state: ARGV[1] cool-down ms.
_STATE = _NOW + """
local opened = redis.call('HGET', KEYS[1], 'opened_at')
if not opened then return 'closed' end
if now - tonumber(opened) >= tonumber(ARGV[1]) then return 'half-open' end
return 'open'
"""


def connect(url: str, timeout: float) -> Any:
    """A redis-py client whose every operation gives up after about ``timeout`` seconds.

    No retries (redis-py 6+ retries three times with back-off by default, which would
    multiply the bound): the fallback wrapper is the retry policy.
    """
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise MissingExtraError("state: redis://", "redis", "redis") from None
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False, health_check_interval=0, decode_responses=True,
        )
    except ValueError as exc:
        raise ConfigError(f"state: not a usable Redis URL: {exc}") from None
    register_secret(client.connection_pool.connection_kwargs.get("password"))
    return client


class RedisSessions:
    def __init__(self, client: Any, prefix: str, ttl: float) -> None:
        self._client = client
        self._prefix = prefix + "session:"
        self._ttl_ms = max(1, round(ttl * 1000))

    def lookup(self, session_id: str) -> str | None:
        value = self._client.get(self._prefix + session_id)
        return None if value is None else str(value)

    def put(self, session_id: str, guidance: str) -> None:
        self._client.set(self._prefix + session_id, guidance, px=self._ttl_ms)

    def drop(self, session_id: str) -> None:
        self._client.delete(self._prefix + session_id)


class RedisBreaker:
    def __init__(self, client: Any, prefix: str, failures: int, cooldown: float,
                 trial_lease: float | None = None) -> None:
        self._client = client
        self._key = prefix + "breaker"
        self.failures = failures
        self.cooldown = cooldown
        self._cooldown_ms = max(1, round(cooldown * 1000))
        self._lease_ms = max(1, round((trial_lease if trial_lease is not None else max(cooldown, 60.0)) * 1000))
        self._allow = client.register_script(_ALLOW)
        self._failure = client.register_script(_FAILURE)
        self._state = client.register_script(_STATE)

    @property
    def state(self) -> str:
        return str(self._state(keys=[self._key], args=[self._cooldown_ms]))

    def allow(self) -> bool:
        return bool(self._allow(keys=[self._key], args=[self._cooldown_ms, self._lease_ms]))

    def release(self) -> None:
        self._client.hdel(self._key, "trial_until")

    def success(self) -> None:
        self._client.delete(self._key)

    def failure(self) -> None:
        self._failure(keys=[self._key], args=[self.failures])


class RedisState:
    """Sessions and breaker in one Redis. Every operation may raise (wrap it in ``FallbackState``)."""

    blocking = True

    def __init__(self, client: Any, *, prefix: str = "atlas:", session_ttl: float = 3600.0, failures: int = 5,
                 cooldown: float = 30.0, trial_lease: float | None = None) -> None:
        self.client = client
        self.sessions = RedisSessions(client, prefix, session_ttl)
        self.breaker = RedisBreaker(client, prefix, failures, cooldown, trial_lease)

    def status(self) -> StateStatus:
        return StateStatus(backend="redis")

    def close(self) -> None:
        self.client.close()
