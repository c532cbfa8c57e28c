"""Configuration as one validated object.

Sources, lowest priority first: defaults, a YAML file, ``ATLAS_*`` environment variables,
explicit arguments (constructor keywords or CLI flags). Environment variables are read when
``AtlasConfig.load()`` runs, never at import time.

=============================  ================================================  =========
variable                       field                                             default
=============================  ================================================  =========
``ATLAS_CONFIG``               path of a YAML file with any of the fields below
``ATLAS_TEACHER``              ``teacher``: LiteLLM model string of the teacher,
                               or a JSON list of deployments (a teacher group)
``ATLAS_TEACHER_ROUTER``       ``teacher_router``: JSON, a group's Router settings
``ATLAS_TEACHER_API_BASE``     ``teacher_api_base``
``ATLAS_TEACHER_API_KEY``      ``teacher_api_key`` (never logged or stored)
``ATLAS_POLICY``               ``policy``: adaptive | strict | verify | audit |    adaptive
                               off | shadow
``ATLAS_JUDGE``                ``judge``: auto | teacher | answer | pkg.mod:fn    auto
``ATLAS_TEACHER_PROTOCOL``     ``teacher_protocol``: auto | atlas | structured    auto
``ATLAS_TEACHER_TIMEOUT``      ``teacher_timeout`` seconds per guidance call      per protocol
``ATLAS_PROBE_MAX_TOKENS``     ``probe_max_tokens``                               50
``ATLAS_TEACHER_MAX_TOKENS``   ``teacher_max_tokens``                             per protocol
``ATLAS_GUIDANCE_PLACEMENT``   ``guidance_placement``: auto | user | system       auto
``ATLAS_LEAK_ACTION``          ``leak_action``: strip | fallback | allow          strip
``ATLAS_SKIP_LEVEL``           ``skip_level``: no guidance at or above (1-5)      5
``ATLAS_AUDIT_RATE``           ``audit_rate``: share of audit calls compared      0.1
``ATLAS_LEDGER``               ``ledger``: sqlite:///path, postgresql://..., none  user data dir
``ATLAS_STORE_TEXTS``          ``store_texts``: keep prompt/answer texts          false
``ATLAS_SPOOL``                ``spool``: JSONL file for unwritten records, none  user data dir
``ATLAS_LEDGER_TIMEOUT``       ``ledger_timeout``: seconds a call waits for its   2
                               ledger write (and never past its own timeout)
``ATLAS_TEACHER_RETRIES``      ``teacher_retries``: attempts per teacher call     3
``ATLAS_LEAN_HTTP``            ``lean_http``: direct httpx for OpenAI-compatible  true
``ATLAS_STATE``                ``state``: sessions and breaker, memory | redis://  memory
``ATLAS_STATE_TIMEOUT``        ``state_timeout``: seconds per Redis operation     0.1
``ATLAS_STATE_PREFIX``         ``state_prefix``: prefix of every Redis key        atlas:
``ATLAS_GATE``                 ``gate``: always | learned                         always
``ATLAS_GATE_THRESHOLD``       ``gate_threshold``: close below this probability   0.05
``ATLAS_GATE_REOPEN``          ``gate_reopen``: re-open at this probability       0.2
``ATLAS_GATE_MIN_GAIN``        ``gate_min_gain``: improvement rate worth teaching  0.05
``ATLAS_GATE_EXPLORE``         ``gate_explore``: closed families' calls taught     0.1
``ATLAS_GATE_HORIZON``         ``gate_horizon``: outcomes before evidence fades   200
``ATLAS_GATE_MIN_EVIDENCE``    ``gate_min_evidence``: outcomes before closing      10
``ATLAS_GATE_MAX_NET_TOKENS``  ``gate_max_net_tokens``: budget per call, or unset  unset
``ATLAS_GATE_REBUILD``         ``gate_rebuild``: ledger records replayed at start 5000
``ATLAS_REUSE``                ``reuse``: none | family                           none
``ATLAS_PROXY_MAX_BODY_MB``    ``proxy_max_body_mb``: the proxy's largest model    10
                               call body in MiB (413 above; docs/proxy.md)
``ATLAS_PROXY_BODY_TIMEOUT``   ``proxy_body_timeout``: seconds for the proxy to    60
                               receive a body whole (408 after)
``ATLAS_PROXY_MAX_JSON_DEPTH``  ``proxy_max_json_depth``: deepest JSON nesting     64
                               the proxy accepts (400 deeper)
``ATLAS_ADAPTIVE``             ``adaptive``: JSON, any of the fields below
``ATLAS_ADAPTIVE_NDR_TARGET``  ``adaptive.ndr_target``: least share of a family's  0.99
                               calls delivered no worse than the student alone
                               (0.5 to 0.9999)
``ATLAS_ADAPTIVE_CREDIBILITY`` ``adaptive.credibility``: probability with which    0.95
                               the evidence must bound the degradation rate
``ATLAS_ADAPTIVE_AUDIT_RATE``  ``adaptive.audit_rate``: share of ``audit`` and     0.1
                               ``verify`` families' calls compared to measure
``ATLAS_ADAPTIVE_EXPLORE``     ``adaptive.explore``: skipped families' calls      0.05
                               taught under strict
``ATLAS_ADAPTIVE_HORIZON``     ``adaptive.horizon``: outcomes before evidence     2000
                               fades
``ATLAS_ADAPTIVE_MIN_EVIDENCE``  ``adaptive.min_evidence``: a family's own         20
                               outcomes before it leaves strict, and per move
``ATLAS_ADAPTIVE_PRIOR_WEIGHT``  ``adaptive.prior_weight``: pseudo-calls a family  10
                               borrows from the model's other families
``ATLAS_ADAPTIVE_GAIN_PER_COST``  ``adaptive.gain_per_cost``: share of calls        0.1
                               teaching must improve per student-alone cost
                               it adds
``ATLAS_ADAPTIVE_JUDGE_MISS_FLOOR``  ``adaptive.judge_miss_floor``: least miss     0.1
                               rate assumed of the judge
``ATLAS_ADAPTIVE_JUDGE_MISS_FACTOR``  ``adaptive.judge_miss_factor``: miss rate    2
                               per both-orders disagreement rate
``ATLAS_SHADOW``               ``shadow``: JSON, any of the fields below
``ATLAS_SHADOW_RATE``          ``shadow.rate``: share of ``policy: shadow`` calls   0.2
                               taught in the background, after delivery
``ATLAS_SHADOW_MAX_PENDING``   ``shadow.max_pending``: background comparisons at  16
                               once (a sampled call past it is not taught)
``ATLAS_SHADOW_TIMEOUT``       ``shadow.timeout``: seconds for the guided answer   120
                               made in the background
``ATLAS_BUDGET``               ``budget``: JSON, any of the fields below
``ATLAS_BUDGET_DAILY_USD``     ``budget.daily_usd``: teaching spend of all calls   unset
                               per UTC day, in US dollars (a positive amount)
``ATLAS_BUDGET_FAMILY_DAILY_USD``  ``budget.family_daily_usd``: the same, per     unset
                               task family
=============================  ================================================  =========

Per protocol (``teaching/protocols/``): ``atlas`` 2048 teacher tokens and 60 s, room for
ATLAS-8B-Thinking's reasoning; ``structured`` 1024 tokens and 30 s. ``judge: auto`` is the
teacher as a pairwise judge (``judges.py``).

``gate`` and ``reuse`` learn per task family from the calls' own comparisons
(``learning/gate.py`` has the rule); their evidence lives in ``state`` and is rebuilt from
the ledger's last ``gate_rebuild`` records when a process starts.

``policy: adaptive`` (the default) chooses, per task family and student model, the cheapest
of ``skip`` (no teaching), ``audit``, ``verify`` and ``strict`` whose evidence keeps the
family within ``adaptive.ndr_target`` (``learning/adaptive.py``; docs/policies.md). Its
settings are the nested ``adaptive`` object; its evidence lives and is rebuilt like the
gate's, which it replaces (``gate: learned`` is for an explicit policy, and set without a
policy means ``strict``, as before). The top-level
``audit_rate`` is the explicit ``audit`` policy's; the adaptive policy uses its own.

``policy: shadow`` delivers the student's own answer and teaches a ``shadow.rate`` sample
after delivery, in the background, to report what teaching would have delivered
(docs/policies.md). ``budget`` caps teaching spend per UTC day (``budgets.py``); unset, none.

``state`` is where agent sessions and the teacher's circuit breaker live: ``memory`` (this
process) or a ``redis://`` / ``rediss://`` URL shared by every replica; when Redis fails or
takes longer than ``state_timeout``, process memory stands in (``state/``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .learning.adaptive import AdaptiveRule
from .learning.gate import GateMode, GateRule, ReuseMode
from .pricing import split_prices
from .teaching.flow import POLICIES, LeakAction, LoopSettings
from .teaching.protocols import Placement, ProtocolName, TeacherProtocol, protocol_for

ENV_PREFIX = "ATLAS_"


PolicySetting = Literal["adaptive", "strict", "verify", "audit", "off", "shadow"]
POLICY_SETTINGS: tuple[PolicySetting, ...] = ("adaptive", *POLICIES)
"""The policies one may configure (or ask for per call): the flow's, and ``adaptive``, which
picks one of them per task family (``learning/adaptive.py``)."""


class AdaptiveConfig(BaseModel):
    """``policy: adaptive``: the settings of its rule (``learning/adaptive.py``, docs/policies.md)."""

    model_config = ConfigDict(defer_build=True, extra="forbid", validate_assignment=True)

    ndr_target: float = 0.99
    """The non-degradation target: at most ``1 - ndr_target`` of a family's calls may be
    delivered worse than the student alone would have answered."""
    credibility: float = Field(default=0.95, ge=0.5, lt=1)
    """The probability with which a family's evidence must bound its degradation rate below
    the target before it moves to a cheaper mode."""
    audit_rate: float = Field(default=0.1, gt=0, le=1)
    """Share of an ``audit`` family's calls compared after delivery, and of a ``verify``
    family's calls measured under ``strict``."""
    explore: float = Field(default=0.05, ge=0, le=1)
    """Share of a skipped family's calls taught under ``strict``, to keep measuring it."""
    horizon: float = Field(default=2000.0, ge=10)
    """Evidence fades: each outcome multiplies a family's counts by ``1 - 1/horizon``."""
    min_evidence: float = Field(default=20.0, ge=1)
    """A family's own outcomes before it leaves ``learning`` (strict), and outcomes in a mode
    before it moves to a cheaper one."""
    prior_weight: float = Field(default=10.0, ge=0)
    """Pseudo-calls a family borrows from its student model's other families (0: none)."""
    gain_per_cost: float = Field(default=0.1, ge=0)
    """Teaching must improve this share of calls per unit of cost it adds (the student alone = 1)."""
    judge_miss_floor: float = Field(default=0.1, ge=0, le=0.5)
    """The least miss rate assumed of the judge, whatever its measured disagreement."""
    judge_miss_factor: float = Field(default=2.0, ge=1)
    """Assumed misses per measured both-orders disagreement (errors correlated on hard items
    fool both orders alike and cannot be seen)."""

    @field_validator("ndr_target")
    @classmethod
    def _target(cls, v: float) -> float:
        if not 0.5 <= v <= 0.9999:
            raise ValueError(f"must be between 0.5 and 0.9999 (0.99: at most 1% of a family's calls delivered "
                             f"worse than the student alone), got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AdaptiveConfig:
        if self.horizon <= self.min_evidence:
            raise ValueError(f"horizon ({self.horizon:g}) must exceed min_evidence ({self.min_evidence:g}): "
                             "discounted evidence would never reach it")
        return self

    def rule(self) -> AdaptiveRule:
        return AdaptiveRule(**self.model_dump())


class ShadowConfig(BaseModel):
    """``policy: shadow``: the student's own answer always, and teaching compared in the
    background on a sample (docs/policies.md#shadow-the-first-step)."""

    model_config = ConfigDict(defer_build=True, extra="forbid", validate_assignment=True)

    rate: float = Field(default=0.2, gt=0, le=1)
    """Share of calls taught and compared in the background, after delivery (a call-id coin)."""
    max_pending: int = Field(default=16, ge=1)
    """Background comparisons one ``Atlas`` runs at once; a sampled call past it is not taught
    (``shadow.skipped: busy``), so a burst never queues unbounded work behind the callers."""
    timeout: float = Field(default=120.0, gt=0)
    """Seconds the guided answer made in the background may take (probe, teacher and judge
    have ``teacher_timeout``)."""


class BudgetConfig(BaseModel):
    """Caps on teaching spend per UTC day, in US dollars (``budgets.py``): past one, calls run
    untaught (reason ``budget_exhausted``). Unset: no cap."""

    model_config = ConfigDict(defer_build=True, extra="forbid", validate_assignment=True)

    daily_usd: float | None = None
    """Teaching spend of every call together, per UTC day."""
    family_daily_usd: float | None = None
    """Teaching spend of each task family (per tenant and student model), per UTC day."""

    @field_validator("daily_usd", "family_daily_usd", mode="before")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if v is None:
            return v
        try:
            amount = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            amount = math.nan
        if not (math.isfinite(amount) and amount > 0):
            raise ValueError(f"must be a positive amount of US dollars per day, got {v!r}")
        return amount

    @property
    def active(self) -> bool:
        return self.daily_usd is not None or self.family_daily_usd is not None


NESTED: dict[str, type[BaseModel]] = {"adaptive": AdaptiveConfig, "shadow": ShadowConfig, "budget": BudgetConfig}
"""The nested settings objects: ``ATLAS_<NAME>`` (JSON) or ``ATLAS_<NAME>_<FIELD>`` each."""


def default_ledger_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'atlas-middleware' / 'ledger.db'}"


class AtlasConfig(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", validate_assignment=True)

    teacher: str | list[dict[str, Any]] | None = None
    """A LiteLLM model string, or a teacher group: a list of deployments, each a mapping of
    LiteLLM params (``model``, ``api_base``, ``api_key``, ...) served through one
    ``litellm.Router`` (``backends/group.py``)."""
    teacher_api_base: str | None = None
    teacher_api_key: SecretStr | None = None
    teacher_params: dict[str, Any] = Field(default_factory=dict)
    """LiteLLM params of every teacher (and judge) call; LiteLLM's custom pricing keys
    (``input_cost_per_token``, ``output_cost_per_token``) price those calls (``pricing.py``)."""
    teacher_router: dict[str, Any] = Field(default_factory=dict)
    """A teacher group's ``litellm.Router`` settings (``routing_strategy``, ``allowed_fails``,
    ``cooldown_time``, ``timeout`` per attempt, ...)."""
    policy: PolicySetting = "adaptive"
    """``adaptive``: per task family, the cheapest checking that keeps it within
    ``adaptive.ndr_target``; or one policy for every call."""
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    """``policy: shadow``: the sampled share, and the bounds of the background work."""
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    """Caps on teaching spend per UTC day, total and per family (unset: none)."""
    judge: str = "auto"
    teacher_protocol: ProtocolName = "auto"
    teacher_timeout: float | None = Field(default=None, gt=0)
    """Seconds per guidance-path call (probe, teacher, judge); None: the protocol's default."""
    probe_max_tokens: int = Field(default=50, ge=1)
    teacher_max_tokens: int | None = Field(default=None, ge=1)
    """None: the protocol's default."""
    guidance_placement: Placement = "auto"
    leak_action: LeakAction = "strip"
    skip_level: int = Field(default=5, ge=1, le=6)
    audit_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    ledger: str | None = None
    store_texts: bool = False
    spool: str | None = None  # None: default path per ledger URL; "none": no spool
    ledger_timeout: float = Field(default=2.0, gt=0, le=60)
    """Seconds a call waits for its ledger write (never past the call's ``timeout``); a
    write that takes longer is spooled and left to finish (``ledger/spool.py``)."""
    teacher_retries: int = Field(default=3, ge=1)
    circuit_failures: int = Field(default=5, ge=1)
    circuit_cooldown: float = Field(default=30.0, gt=0)
    session_ttl: float = Field(default=3600.0, gt=0)
    state: str = "memory"
    """Where sessions and the breaker live: ``memory``, or a ``redis://``/``rediss://`` URL."""
    state_timeout: float = Field(default=0.1, gt=0, le=10)
    """Seconds a Redis operation may take before process memory answers instead."""
    state_prefix: str = Field(default="atlas:", min_length=1)
    gate: GateMode = "always"
    """``learned``: skip probe and teacher for task families where teaching does not pay."""
    gate_threshold: float = Field(default=0.05, gt=0, lt=1)
    gate_reopen: float = Field(default=0.2, gt=0, lt=1)
    gate_min_gain: float = Field(default=0.05, ge=0, lt=1)
    gate_explore: float = Field(default=0.1, ge=0, le=1)
    gate_horizon: float = Field(default=200.0, ge=1)
    gate_min_evidence: float = Field(default=10.0, ge=0)
    gate_max_net_tokens: float | None = None
    gate_rebuild: int = Field(default=5000, ge=0)
    reuse: ReuseMode = "none"
    """``family``: reuse guidance that won a comparison for the family's next calls."""
    context_chars: int = Field(default=12000, ge=200)
    lean_http: bool = True
    """Call OpenAI-compatible endpoints directly over httpx instead of through LiteLLM."""
    proxy_max_body_mb: float = Field(default=10.0, gt=0)
    """The proxy only (``proxy/gate.py``): a model call's body over this many MiB is a 413,
    refused before it is read whole. 10 MiB holds one image at Anthropic's 5 MB limit, base64
    encoded, with its conversation; raise it for PDFs or several large images."""
    proxy_body_timeout: float = Field(default=60.0, gt=0)
    """The proxy only: seconds a client has to send a model call's whole body (then 408)."""
    proxy_max_json_depth: int = Field(default=64, ge=2, le=256)
    """The proxy only: a model call's body nesting JSON deeper than this is a 400."""

    @field_validator("policy", mode="before")
    @classmethod
    def _policy(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() not in POLICY_SETTINGS:
            raise ValueError(f"unknown policy {v!r}; choose one of {', '.join(POLICY_SETTINGS)}")
        return v.lower() if isinstance(v, str) else v

    @field_validator("adaptive", "shadow", "budget", mode="before")
    @classmethod
    def _adaptive(cls, v: Any) -> Any:
        return _json_mapping(v) if isinstance(v, str) else v  # ATLAS_ADAPTIVE, ATLAS_SHADOW, ATLAS_BUDGET

    @field_validator("gate", "reuse", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _gate_keeps_its_policy(cls, data: Any) -> Any:
        """``gate: learned`` gates an explicit policy; set without one it means ``strict``, as it
        did before ``adaptive`` became the default (which gates each family itself)."""
        if isinstance(data, Mapping) and "policy" not in data and str(data.get("gate", "")).strip().lower() == "learned":
            return {**data, "policy": "strict"}
        return data

    @model_validator(mode="after")
    def _gate_consistent(self) -> AtlasConfig:
        if self.gate_reopen < self.gate_threshold:
            raise ValueError(f"gate_reopen ({self.gate_reopen}) must not be below gate_threshold "
                             f"({self.gate_threshold}): a family would re-open before it could close")
        if self.gate == "learned" and self.policy == "adaptive":
            raise ValueError("gate: learned is for an explicit policy; policy adaptive gates each task family "
                             "itself: leave gate at always, or choose policy strict, audit or verify")
        if self.gate == "learned" and self.policy == "off":
            raise ValueError("gate: learned learns from comparisons, and policy off makes none: "
                             "choose policy strict, audit or verify")
        if self.gate == "learned" and self.policy == "shadow":
            raise ValueError("gate: learned gates the calls a policy teaches, and policy shadow delivers none "
                             "taught (its comparisons feed the adaptive policy's evidence): leave gate at always")
        if self.gate == "learned" and self.policy in ("audit", "verify") and self.audit_rate == 0:
            raise ValueError(f"gate: learned under policy {self.policy} learns from the audit_rate share of "
                             "calls, and audit_rate is 0: it would never learn")
        if self.gate_horizon <= self.gate_min_evidence:
            raise ValueError(f"gate_horizon ({self.gate_horizon:g}) must exceed gate_min_evidence "
                             f"({self.gate_min_evidence:g}): discounted evidence never reaches the horizon, "
                             "so no family would ever leave 'learning'")
        return self

    def gate_rule(self) -> GateRule:
        return GateRule(threshold=self.gate_threshold, reopen=self.gate_reopen, min_gain=self.gate_min_gain,
                        explore=self.gate_explore, horizon=self.gate_horizon,
                        min_evidence=self.gate_min_evidence, max_net_tokens=self.gate_max_net_tokens)

    @field_validator("state", mode="before")
    @classmethod
    def _state(cls, v: Any) -> Any:
        # The URL may hold a password: the messages name the scheme, never the URL.
        if not isinstance(v, str):
            return v
        v = v.strip()
        if v.lower() == "memory":
            return "memory"
        scheme = v.split("://", 1)[0].lower() if "://" in v else ""
        if scheme not in ("redis", "rediss"):
            got = f" (got a {scheme}:// URL)" if scheme else ""
            raise ValueError(f"must be 'memory' or a redis:// or rediss:// URL{got}")
        try:
            urlsplit(v).port  # noqa: B018 (a bad port raises)
        except ValueError as exc:
            raise ValueError(f"not a valid Redis URL: {exc}") from None
        return v

    @field_validator("teacher_params", mode="after")
    @classmethod
    def _teacher_prices(cls, v: dict[str, Any]) -> dict[str, Any]:
        split_prices(v)  # a price of the wrong type is refused here, at start, by name
        return v

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher(cls, v: Any) -> Any:
        return teacher_deployments(v)

    @field_validator("teacher_router", mode="before")
    @classmethod
    def _teacher_router(cls, v: Any) -> Any:
        return router_settings(v)

    @property
    def teacher_name(self) -> str | None:
        """The teacher's model string; a group's first deployment's (protocol, reports)."""
        if isinstance(self.teacher, list):
            return str(self.teacher[0]["model"])
        return self.teacher

    @field_validator("teacher_protocol", "guidance_placement", "leak_action", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> AtlasConfig:
        """Merge YAML, environment and explicit values (``None`` overrides are ignored)."""
        env = os.environ if env is None else env
        data: dict[str, Any] = {}
        path = config_file or env.get(ENV_PREFIX + "CONFIG")
        if path:
            data.update(_read_yaml(Path(path)))
        for name in cls.model_fields:
            value = env.get(ENV_PREFIX + name.upper())
            if value is not None and value != "":
                data[name] = value
        for group, model in NESTED.items():
            _nested_env(data, env, group, model)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.build(data)

    @classmethod
    def build(cls, data: Mapping[str, Any]) -> AtlasConfig:
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid atlas-middleware configuration: {problems}") from None

    def loop_settings(self, protocol: TeacherProtocol | None = None) -> LoopSettings:
        """The flow's settings, with the protocol resolved and its defaults filled in
        (``protocol``: the one ``auto`` found by asking the teacher's server instead)."""
        protocol = protocol or protocol_for(self.teacher_protocol, self.teacher_name)
        teacher_params, teacher_prices = split_prices(self.teacher_params)
        return LoopSettings(
            policy="strict" if self.policy == "adaptive" else self.policy,  # adaptive: chosen per call
            teacher_model=self.teacher_name,
            teacher_params=teacher_params,
            teacher_prices=teacher_prices,
            protocol=protocol,
            teacher_timeout=self.teacher_timeout or protocol.teacher_timeout,
            probe_max_tokens=self.probe_max_tokens,
            teacher_max_tokens=self.teacher_max_tokens or protocol.teacher_max_tokens,
            skip_level=self.skip_level,
            audit_rate=self.audit_rate,
            context_chars=self.context_chars,
            placement=self.guidance_placement,
            leak_action=self.leak_action,
            shadow_timeout=self.shadow.timeout,
        )

    def ledger_url(self) -> str:
        return self.ledger if self.ledger is not None else default_ledger_url()


ROUTING_STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing",
                      "usage-based-routing-v2", "cost-based-routing")


def teacher_deployments(value: Any) -> Any:
    """A teacher group's deployments as flat LiteLLM params, each with a ``model``; a model
    string passes through. Takes JSON (``ATLAS_TEACHER``) and LiteLLM's ``model_list`` form
    (``{model_name, litellm_params: {...}}``) too."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        import json

        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not a valid JSON list of deployments: {exc}") from None
    if not isinstance(value, (list, tuple)):
        return value
    if not value:
        raise ValueError("a teacher group needs at least one deployment")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            raise ValueError(f"teacher[{i}]: a deployment is a mapping of LiteLLM params "
                             f"(model, api_base, api_key, ...), got {type(entry).__name__}")
        params = dict(entry)
        if "litellm_params" in params:  # LiteLLM's model_list form
            inner = params.pop("litellm_params")
            if not isinstance(inner, Mapping):
                raise ValueError(f"teacher[{i}].litellm_params: must be a mapping")
            params.pop("model_name", None)
            params.pop("model_info", None)
            params = {**params, **inner}
        model = params.get("model")
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"teacher[{i}]: a deployment needs a 'model' (a LiteLLM model string)")
        if model.startswith(("local/", "vllm/")):
            raise ValueError(f"teacher[{i}]: {model!r} runs in this process; a group's deployments are servers")
        for key in ("api_base", "api_key"):
            if params.get(key) is not None and not isinstance(params[key], str):
                raise ValueError(f"teacher[{i}].{key}: must be a string")
        out.append(params)
    return out


def router_settings(value: Any) -> Any:
    """A teacher group's Router settings, checked where a mistake is cheap to name."""
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as exc:
            raise ValueError(f"not a valid JSON mapping: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping of litellm.Router settings")
    strategy = value.get("routing_strategy")
    if strategy is not None and strategy not in ROUTING_STRATEGIES:
        raise ValueError(f"unknown routing_strategy {strategy!r}; choose one of {', '.join(ROUTING_STRATEGIES)}")
    for key, positive in (("allowed_fails", False), ("num_retries", False), ("cooldown_time", True),
                          ("timeout", True)):
        number = value.get(key)
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))
                                   or number < 0 or (positive and number == 0)):
            # (LiteLLM reads a cooldown_time of 0 as its default; disable_cooldowns turns them off)
            raise ValueError(f"{key}: must be a number " + ("> 0" if positive else ">= 0"))
    return dict(value)


def _nested_env(data: dict[str, Any], env: Mapping[str, str], group: str, model: type[BaseModel]) -> None:
    """``ATLAS_<GROUP>_<FIELD>`` variables over the group's mapping (YAML or ``ATLAS_<GROUP>`` JSON)."""
    prefix = f"{ENV_PREFIX}{group.upper()}_"
    nested = {name: env[prefix + name.upper()] for name in model.model_fields if env.get(prefix + name.upper())}
    if not nested:
        return
    current = data.get(group)
    if isinstance(current, str):
        try:
            current = _json_mapping(current)
        except ValueError as exc:
            raise ConfigError(f"invalid atlas-middleware configuration: {group}: {exc}") from None
    data[group] = {**(current if isinstance(current, Mapping) else {}), **nested}


def _json_mapping(value: str) -> Any:
    import json

    try:
        return json.loads(value) if value.strip() else {}
    except ValueError as exc:
        raise ValueError(f"not a valid JSON mapping: {exc}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    # Accept an ``atlas:`` section so the file can be shared with other tools' settings.
    inner = data.get("atlas", data)
    return dict(inner) if isinstance(inner, dict) else {}
