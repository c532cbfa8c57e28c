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

* ``<prefix>family:<model>|<family key>``: one hash per student model and task family
  (``learning.gate.gate_key``; ``state.FamilyEvidence``): the
  discounted outcome counts ``improved``, ``degraded``, ``unchanged``, the net-token sums
  ``net_tokens`` and ``net_calls``, the gate's ``closed`` (``1``/``0``), and the reusable
  ``guidance`` with ``guidance_from``. Each call's update is one Lua script (decay and add
  together, so two replicas' calls never lose one another's), and every write renews a TTL
  of ``family_ttl`` (30 days): a template nobody uses any more is forgotten.
* ``<prefix>families:rebuilt``: ``claimed`` (a 5-minute lease) by the replica rebuilding the
  evidence from the ledger, ``done`` once the evidence is in Redis; the others find it and
  do not count the ledger a second time. A rebuild that failed gives the claim back, and one
  whose replica died is retried when the lease ends.

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
from .base import FamilyEvidence, StateStatus

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


# observe: ARGV[1] outcome ('' none), ARGV[2] net tokens ('' none), ARGV[3] discount,
# ARGV[4] TTL ms -> the hash after the update (HGETALL's flat list).
_OBSERVE = """
local g = tonumber(ARGV[3])
local function num(x) return string.format('%.17g', x) end
if ARGV[1] ~= '' then
  local names = {'improved', 'degraded', 'unchanged'}
  local v = redis.call('HMGET', KEYS[1], unpack(names))
  for k = 1, 3 do
    local x = (tonumber(v[k]) or 0) * g
    if names[k] == ARGV[1] then x = x + 1 end
    redis.call('HSET', KEYS[1], names[k], num(x))
  end
end
if ARGV[2] ~= '' then
  local v = redis.call('HMGET', KEYS[1], 'net_tokens', 'net_calls')
  redis.call('HSET', KEYS[1], 'net_tokens', num((tonumber(v[1]) or 0) * g + tonumber(ARGV[2])),
             'net_calls', num((tonumber(v[2]) or 0) * g + 1))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('HGETALL', KEYS[1])
"""

# drop guidance: ARGV[1] the call id whose guidance it must still be.
_DROP_GUIDANCE = """
if redis.call('HGET', KEYS[1], 'guidance_from') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'guidance', 'guidance_from')
  return 1
end
return 0
"""

_FLOATS = ("improved", "degraded", "unchanged", "net_tokens", "net_calls")


def evidence_of(fields: dict[str, str]) -> FamilyEvidence:
    """A family's hash as ``FamilyEvidence``."""
    return FamilyEvidence(
        **{k: float(fields[k]) for k in _FLOATS if k in fields},
        closed=fields.get("closed") == "1",
        guidance=fields.get("guidance"),
        guidance_from=fields.get("guidance_from"),
    )


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


class RedisFamilies:
    def __init__(self, client: Any, prefix: str, ttl: float = 30 * 86400.0, claim_lease: float = 300.0) -> None:
        self._client = client
        self._prefix = prefix + "family:"
        self._rebuilt = prefix + "families:rebuilt"
        self._ttl_ms = max(1, round(ttl * 1000))
        self._claim_ms = max(1, round(claim_lease * 1000))
        self._observe = client.register_script(_OBSERVE)
        self._drop = client.register_script(_DROP_GUIDANCE)

    def get(self, family: str) -> FamilyEvidence | None:
        fields = self._client.hgetall(self._prefix + family)
        return evidence_of(fields) if fields else None

    def observe(self, family: str, outcome: str | None, net_tokens: float | None,
                discount: float) -> FamilyEvidence:
        flat = self._observe(keys=[self._prefix + family],
                             args=[outcome or "", "" if net_tokens is None else repr(float(net_tokens)),
                                   repr(float(discount)), self._ttl_ms])
        return evidence_of(dict(zip(flat[::2], flat[1::2], strict=True)))

    def _write(self, family: str, fields: dict[str, str]) -> None:
        """Set some of a family's fields and renew its TTL, in one transaction."""
        key = self._prefix + family
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, self._ttl_ms)
        pipe.execute()

    def set_closed(self, family: str, closed: bool) -> None:
        self._write(family, {"closed": "1" if closed else "0"})

    def keep_guidance(self, family: str, guidance: str, call_id: str) -> None:
        self._write(family, {"guidance": guidance, "guidance_from": call_id})

    def drop_guidance(self, family: str, call_id: str) -> None:
        self._drop(keys=[self._prefix + family], args=[call_id])

    def load(self, families: dict[str, FamilyEvidence]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for family, e in families.items():
            key = self._prefix + family
            mapping = {k: repr(float(getattr(e, k))) for k in _FLOATS}
            mapping["closed"] = "1" if e.closed else "0"
            if e.guidance is not None and e.guidance_from is not None:
                mapping.update(guidance=e.guidance, guidance_from=e.guidance_from)
            pipe.delete(key)
            pipe.hset(key, mapping=mapping)
            pipe.pexpire(key, self._ttl_ms)
        pipe.execute()

    def claim_rebuild(self) -> bool:
        return bool(self._client.set(self._rebuilt, "claimed", nx=True, px=self._claim_ms))

    def finish_rebuild(self, done: bool) -> None:
        if done:
            self._client.set(self._rebuilt, "done")  # for good (until Redis is emptied)
        else:
            self._client.delete(self._rebuilt)


class RedisState:
    """Sessions, breaker and family evidence in one Redis. Every operation may raise (wrap it in ``FallbackState``)."""

    blocking = True

    def __init__(self, client: Any, *, prefix: str = "atlas:", session_ttl: float = 3600.0, failures: int = 5,
                 cooldown: float = 30.0, trial_lease: float | None = None) -> None:
        self.client = client
        self.sessions = RedisSessions(client, prefix, session_ttl)
        self.breaker = RedisBreaker(client, prefix, failures, cooldown, trial_lease)
        self.families = RedisFamilies(client, prefix)

    def status(self) -> StateStatus:
        return StateStatus(backend="redis")

    def close(self) -> None:
        self.client.close()
