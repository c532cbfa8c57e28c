"""Redis: the state every replica of a fleet shares (``state: redis://...``).

Key layout, under ``state_prefix`` (default ``atlas:``, so the Redis LiteLLM already uses
can serve):

* ``<prefix>session:<tenant scope>:<session id>``: a string, the session's guidance (``""``:
  the teacher judged the student strong), set with a Redis TTL of ``session_ttl`` seconds
  from when it was stored (a read does not extend it, as in process memory). Redis, not a
  count of entries, bounds them: every entry expires. The tenant scope (32 hex digits,
  ``tenants.scoped``; ``Atlas`` builds the key, memory uses the same one) keeps one caller's
  session from another's that chose the same id.
* ``<prefix>breaker``: one hash, changed only by the Lua scripts below (one key per
  script, so it also works on a Redis Cluster): ``count`` (consecutive teacher failures),
  ``opened_at`` (ms, the Redis server's clock, so replicas' clocks need not agree) and
  ``trial_until`` (present while the fleet's one half-open trial call is out; the ms until
  which it holds the slot).

* ``<prefix>family:<tenant scope>:<model>|<family key>``: one hash per tenant, student model
  and task family (``learning.gate.gate_key``; ``state.FamilyEvidence``): the
  discounted outcome counts ``improved``, ``degraded``, ``unchanged``, the net-token sums
  ``net_tokens`` and ``net_calls``, the gate's ``closed`` (``1``/``0``), the reusable
  ``guidance`` with ``guidance_from``, and the adaptive policy's evidence: the judge's
  ``judged`` and ``undecided`` counts, the cost shares ``cost_teach``, ``cost_check`` and
  ``cost_calls``, its ``mode`` and ``mode_outcomes``, and the outcomes graded against gold
  answers, ``graded`` and ``graded_degraded``. The pooled evidence of a student model (the
  adaptive policy's shared prior) is one more such hash, under the family key ``*``
  (``learning.adaptive.POOLED``), and its rare families as a class another, under ``~``
  (``learning.adaptive.RARE``). Each call's update is one Lua script (decay and add
  together, so two replicas' calls never lose one another's), and every write renews a TTL
  of ``family_ttl`` (30 days): a template nobody uses any more is forgotten.
* ``<prefix>baseline:<model>|<family key>``: one hash per student model and task family
  (``state/baselines.py``): the discounted sums of the family's measured baselines
  (``samples``, ``prompt_tokens``, ``completion_tokens``, ``priced``, ``cost_usd``;
  ``pricing.BaselineStats``), updated by one Lua script per baseline, with the same TTL.
* ``<prefix>budget:<UTC day>:<counter>``: a float, the teaching spend in US dollars of that
  day against one cap (``state/budgets.py``: ``total``, or a family's evidence key), added to
  with ``INCRBYFLOAT`` and expiring ``BUDGET_TTL`` (two days) after its last charge.
* ``<prefix>families:rebuilt:tenants``: ``claimed`` (a 5-minute lease) by the replica
  rebuilding the evidence from the ledger, ``done`` once the evidence is in Redis; the others
  find it and do not count the ledger a second time. A rebuild that failed gives the claim
  back, and one whose replica died is retried when the lease ends. (The name changed when
  family keys gained their tenant scope, so a Redis rebuilt under the old keys, which no
  call reads any more, is rebuilt once more.)

The scripts make each breaker step atomic across the fleet: in half-open state the first
``allow()`` anywhere takes the trial slot and every other replica is refused until the
trial's verdict. The slot is a lease (``trial_lease`` seconds, by default the longer of the
cool-down and a minute): a replica that dies during its trial would otherwise keep the
whole fleet's breaker open for ever; after the lease another replica may try.

Operations raise on any Redis problem; ``state/fallback.py`` turns that into process memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._redact import register_secret
from ..errors import ConfigError, MissingExtraError
from ..pricing import BASELINE_HORIZON, BaselineStats
from ..usage import Usage
from . import breaker
from .base import FamilyEvidence, StateStatus
from .budgets import BUDGET_TTL

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
# -> 1 when this failure opened a closed circuit (the one replica that logs it), else 0.
_FAILURE = _NOW + """
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
local trial = redis.call('HEXISTS', KEYS[1], 'trial_until')
local was_open = redis.call('HEXISTS', KEYS[1], 'opened_at')
local opens = trial == 1 or count >= tonumber(ARGV[1])
if opens then redis.call('HSET', KEYS[1], 'opened_at', now) end
redis.call('HDEL', KEYS[1], 'trial_until')
if opens and was_open == 0 then return 1 end
return 0
"""

# success: -> 1 when it closed an open circuit (the one replica that logs it), else 0.
_SUCCESS = """
local was_open = redis.call('HEXISTS', KEYS[1], 'opened_at')
redis.call('DEL', KEYS[1])
return was_open
"""

# state: ARGV[1] cool-down ms.
_STATE = _NOW + """
local opened = redis.call('HGET', KEYS[1], 'opened_at')
if not opened then return 'closed' end
if now - tonumber(opened) >= tonumber(ARGV[1]) then return 'half-open' end
return 'open'
"""


# observe: ARGV[1] outcome ('' none), ARGV[2] net tokens ('' none), ARGV[3] discount,
# ARGV[4] TTL ms, ARGV[5] the judge's read ('' none, 'decided', 'undecided'), ARGV[6] and
# ARGV[7] the teaching and checking cost shares ('' none), ARGV[8] '1' when the outcome was
# graded against gold answers -> the hash after the update (HGETALL's flat list).
# ``FamilyEvidence.observed`` is the same update in Python.
_OBSERVE = """
local g = tonumber(ARGV[3])
local function num(x) return string.format('%.17g', x) end
local function decayed(names, adds)
  local v = redis.call('HMGET', KEYS[1], unpack(names))
  for k = 1, #names do
    redis.call('HSET', KEYS[1], names[k], num((tonumber(v[k]) or 0) * g + adds[k]))
  end
end
if ARGV[1] ~= '' then
  local names = {'improved', 'degraded', 'unchanged'}
  local adds = {0, 0, 0}
  for k = 1, 3 do
    if names[k] == ARGV[1] then adds[k] = 1 end
  end
  decayed(names, adds)
  redis.call('HINCRBYFLOAT', KEYS[1], 'mode_outcomes', 1)
  local graded, graded_degraded = 0, 0
  if ARGV[8] == '1' then
    graded = 1
    if ARGV[1] == 'degraded' then graded_degraded = 1 end
  end
  decayed({'graded', 'graded_degraded'}, {graded, graded_degraded})
end
if ARGV[2] ~= '' then
  decayed({'net_tokens', 'net_calls'}, {tonumber(ARGV[2]), 1})
end
if ARGV[5] ~= '' then
  local undecided = 0
  if ARGV[5] == 'undecided' then undecided = 1 end
  decayed({'judged', 'undecided'}, {1, undecided})
end
if ARGV[6] ~= '' then
  decayed({'cost_teach', 'cost_check', 'cost_calls'}, {tonumber(ARGV[6]), tonumber(ARGV[7]), 1})
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

# add a baseline: ARGV[1] prompt tokens, ARGV[2] completion tokens, ARGV[3] price ('' unknown),
# ARGV[4] discount, ARGV[5] TTL ms (``BaselineStats.added``, decay and add in one step).
_ADD_BASELINE = """
local g = tonumber(ARGV[4])
local function num(x) return string.format('%.17g', x) end
local v = redis.call('HMGET', KEYS[1], 'samples', 'prompt_tokens', 'completion_tokens', 'priced', 'cost_usd')
local priced, cost = (tonumber(v[4]) or 0) * g, (tonumber(v[5]) or 0) * g
if ARGV[3] ~= '' then priced, cost = priced + 1, cost + tonumber(ARGV[3]) end
redis.call('HSET', KEYS[1], 'samples', num((tonumber(v[1]) or 0) * g + 1),
           'prompt_tokens', num((tonumber(v[2]) or 0) * g + tonumber(ARGV[1])),
           'completion_tokens', num((tonumber(v[3]) or 0) * g + tonumber(ARGV[2])),
           'priced', num(priced), 'cost_usd', num(cost))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""
_BASELINE_FIELDS = ("samples", "prompt_tokens", "completion_tokens", "priced", "cost_usd")

_FLOATS = ("improved", "degraded", "unchanged", "net_tokens", "net_calls", "judged", "undecided", "cost_teach",
           "cost_check", "cost_calls", "mode_outcomes", "graded", "graded_degraded")


def evidence_of(fields: dict[str, str]) -> FamilyEvidence:
    """A family's hash as ``FamilyEvidence``."""
    return FamilyEvidence(
        **{k: float(fields[k]) for k in _FLOATS if k in fields},
        closed=fields.get("closed") == "1",
        guidance=fields.get("guidance"),
        guidance_from=fields.get("guidance_from"),
        mode=fields.get("mode") or None,
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
        self._success = client.register_script(_SUCCESS)
        self._state = client.register_script(_STATE)

    @property
    def state(self) -> str:
        return str(self._state(keys=[self._key], args=[self._cooldown_ms]))

    def allow(self) -> bool:
        return bool(self._allow(keys=[self._key], args=[self._cooldown_ms, self._lease_ms]))

    def release(self) -> None:
        self._client.hdel(self._key, "trial_until")

    def success(self) -> None:
        if self._success(keys=[self._key]):
            breaker.closed()

    def failure(self) -> None:
        if self._failure(keys=[self._key], args=[self.failures]):
            breaker.opened(self.failures, self.cooldown)


class RedisFamilies:
    def __init__(self, client: Any, prefix: str, ttl: float = 30 * 86400.0, claim_lease: float = 300.0) -> None:
        self._client = client
        self._prefix = prefix + "family:"
        self._rebuilt = prefix + "families:rebuilt:tenants"
        self._ttl_ms = max(1, round(ttl * 1000))
        self._claim_ms = max(1, round(claim_lease * 1000))
        self._observe = client.register_script(_OBSERVE)
        self._drop = client.register_script(_DROP_GUIDANCE)

    def get(self, family: str) -> FamilyEvidence | None:
        fields = self._client.hgetall(self._prefix + family)
        return evidence_of(fields) if fields else None

    def observe(self, family: str, outcome: str | None, net_tokens: float | None, discount: float, *,
                judge: str | None = None, cost: tuple[float, float] | None = None,
                graded: bool = False) -> FamilyEvidence:
        flat = self._observe(keys=[self._prefix + family],
                             args=[outcome or "", "" if net_tokens is None else repr(float(net_tokens)),
                                   repr(float(discount)), self._ttl_ms, judge or "",
                                   *(("", "") if cost is None else (repr(float(cost[0])), repr(float(cost[1])))),
                                   "1" if graded else ""])
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

    def set_mode(self, family: str, mode: str) -> None:
        self._write(family, {"mode": mode, "mode_outcomes": "0"})

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
            if e.mode is not None:
                mapping["mode"] = e.mode
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


class RedisBaselines:
    def __init__(self, client: Any, prefix: str, ttl: float = 30 * 86400.0,
                 discount: float = 1.0 - 1.0 / BASELINE_HORIZON) -> None:
        self._client = client
        self._prefix = prefix + "baseline:"
        self._ttl_ms = max(1, round(ttl * 1000))
        self._discount = discount
        self._add = client.register_script(_ADD_BASELINE)

    def get(self, key: str) -> BaselineStats | None:
        fields = self._client.hgetall(self._prefix + key)
        if not fields:
            return None
        return BaselineStats(**{k: float(fields[k]) for k in _BASELINE_FIELDS if k in fields})

    def add(self, key: str, usage: Usage) -> None:
        cost = "" if usage.cost_usd is None else repr(float(usage.cost_usd))
        self._add(keys=[self._prefix + key], args=[usage.prompt_tokens, usage.completion_tokens, cost,
                                                   repr(self._discount), self._ttl_ms])


class RedisBudgets:
    def __init__(self, client: Any, prefix: str, ttl: int = BUDGET_TTL) -> None:
        self._client = client
        self._prefix = prefix + "budget:"
        self._ttl = ttl

    def spent(self, day: str, keys: Sequence[str]) -> list[float]:
        values = self._client.mget([f"{self._prefix}{day}:{key}" for key in keys])
        return [float(v) if v is not None else 0.0 for v in values]

    def charge(self, day: str, keys: Sequence[str], amount: float) -> None:
        pipe = self._client.pipeline(transaction=True)
        for key in keys:
            name = f"{self._prefix}{day}:{key}"
            pipe.incrbyfloat(name, amount)
            pipe.expire(name, self._ttl)  # renewed by each charge: a day's key outlives it by at most the TTL
        pipe.execute()


class RedisState:
    """Sessions, breaker and family evidence in one Redis. Every operation may raise (wrap it in ``FallbackState``)."""

    blocking = True

    def __init__(self, client: Any, *, prefix: str = "atlas:", session_ttl: float = 3600.0, failures: int = 5,
                 cooldown: float = 30.0, trial_lease: float | None = None) -> None:
        self.client = client
        self.sessions = RedisSessions(client, prefix, session_ttl)
        self.breaker = RedisBreaker(client, prefix, failures, cooldown, trial_lease)
        self.families = RedisFamilies(client, prefix)
        self.baselines = RedisBaselines(client, prefix)
        self.budgets = RedisBudgets(client, prefix)

    def status(self) -> StateStatus:
        return StateStatus(backend="redis")

    def close(self) -> None:
        self.client.close()
