"""Configuration as objects: one ``AtlasConfig`` of nested settings groups.

Sources, lowest priority first: defaults, a YAML file, ``ATLAS_*`` environment variables,
explicit arguments (constructor keywords or CLI flags). Environment variables are read when
``AtlasConfig.load()`` runs, never at import time.

The groups, each a small model: ``teacher`` (the model, its calls and its guidance),
``judge``, ``gate`` (the learned gate and family reuse), ``state``, ``ledger``, ``proxy``,
and the policies' ``adaptive``, ``shadow`` and ``budget``; ``policy``, ``audit_rate``,
``context_chars`` and ``lean_http`` stay at the top. A group is written as a mapping
(``teacher: {model: ..., api_base: ...}``) or, for the groups with a main setting, as that
value alone (``teacher: openai/gpt-4o``, ``ledger: none``, ``state: redis://...``).

The flat names of earlier releases (``teacher_api_base``, ``gate_threshold``,
``store_texts``, ...) are still accepted as keywords, YAML keys and ``ATLAS_*`` variables,
mapped onto the groups by ``FLAT``; the nested form is preferred.

Every variable is ``ATLAS_<GROUP>`` (the group as a JSON object, or its main value) or
``ATLAS_<GROUP>_<FIELD>``; ``env_table()`` writes the table of them all from the fields
themselves, and docs/configuration.md carries it (a test keeps the two equal).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_origin
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

if TYPE_CHECKING:
    from .teaching.judges import Judge

ENV_PREFIX = "ATLAS_"


PolicySetting = Literal["adaptive", "strict", "verify", "audit", "off", "shadow"]
POLICY_SETTINGS: tuple[PolicySetting, ...] = ("adaptive", *POLICIES)
"""The policies one may configure (or ask for per call): the flow's, and ``adaptive``, which
picks one of them per task family (``learning/adaptive.py``)."""


def unknown_setting(name: str, known: Iterable[str], owner: str | None = None) -> str:
    """The refusal of a setting ``owner`` does not have, with the closest one it does
    (no owner: ``name: no such setting``, as the configuration's other refusals read)."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{owner} has no setting '{name}'{hint}" if owner else f"{name}: no such setting{hint}"


class Settings(BaseModel):
    """A group of settings: unknown keys refused with the closest real one, a JSON object
    read from text (``ATLAS_<GROUP>``), and for a group with a ``main`` setting its value
    alone standing for the group (``teacher: openai/gpt-4o``)."""

    model_config = ConfigDict(defer_build=True, extra="forbid", validate_assignment=True,
                              use_attribute_docstrings=True)
    main: ClassVar[str | None] = None
    """The field a bare value sets; None: the group is only ever a mapping."""

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        data = as_mapping(cls, data)
        if isinstance(data, Mapping):
            unknown = sorted(str(k) for k in data if k not in cls.model_fields)
            if unknown:
                raise ValueError(unknown_setting(unknown[0], list(cls.model_fields)))
        return data


def as_mapping(group: type[Settings], value: Any) -> Any:
    """A group's value as a mapping where it can be one (anything else is left to fail)."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    if isinstance(value, str) and (group.main is None or value.lstrip().startswith("{")):
        return _json_mapping(value)
    if group.main is not None and not isinstance(value, Mapping):
        return {group.main: value}
    return value


class AdaptiveConfig(Settings):
    """``policy: adaptive``: the settings of its rule (``learning/adaptive.py``, docs/policies.md)."""

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


class ShadowConfig(Settings):
    """``policy: shadow``: the student's own answer always, and teaching compared in the
    background on a sample (docs/policies.md#shadow-the-first-step)."""

    rate: float = Field(default=0.2, gt=0, le=1)
    """Share of calls taught and compared in the background, after delivery (a call-id coin)."""
    max_pending: int = Field(default=16, ge=1)
    """Background comparisons one ``Atlas`` runs at once; a sampled call past it is not taught
    (``shadow.skipped: busy``), so a burst never queues unbounded work behind the callers."""
    timeout: float = Field(default=120.0, gt=0)
    """Seconds the guided answer made in the background may take (probe, teacher and judge
    have ``teacher.timeout``)."""


class BudgetConfig(Settings):
    """Caps on teaching spend per UTC day, in US dollars (``budgets.py``): past one, calls run
    untaught (reason ``budget_exhausted``). Unset: no cap."""

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


class TeacherConfig(Settings):
    """The teacher: which model, how its calls are made, and what is done with its guidance."""

    main: ClassVar[str | None] = "model"

    model: str | list[dict[str, Any]] | None = None
    """A LiteLLM model string, or a teacher group: a JSON list of deployments, each a mapping of
    LiteLLM params (``model``, ``api_base``, ``api_key``, ...) behind one ``litellm.Router``."""
    api_base: str | None = None
    """The teacher's server (an OpenAI-compatible ``/v1`` URL)."""
    api_key: SecretStr | None = None
    """The teacher's API key (never logged or stored)."""
    params: dict[str, Any] = Field(default_factory=dict)
    """JSON object of LiteLLM params sent with every teacher and judge call; LiteLLM's pricing
    keys (``input_cost_per_token``, ``output_cost_per_token``) price those calls instead."""
    router: dict[str, Any] = Field(default_factory=dict)
    """JSON object: a teacher group's ``litellm.Router`` settings (``routing_strategy``,
    ``allowed_fails``, ``cooldown_time``, ``timeout`` per attempt, ...)."""
    protocol: ProtocolName = "auto"
    """auto | atlas | structured: the teacher's prompt and reply format (``teaching/protocols/``)."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds per guidance-path call (probe, teacher, judge); unset: the protocol's (atlas 60, structured 30)."""
    max_tokens: int | None = Field(default=None, ge=1)
    """The teacher's tokens per reply; unset: the protocol's (atlas 2048, structured 1024)."""
    probe_max_tokens: int = Field(default=50, ge=1)
    """Tokens of the student's probe (its plan)."""
    retries: int = Field(default=3, ge=1)
    """Attempts per teacher call."""
    placement: Placement = "auto"
    """auto | user | system: where the guidance goes in the guided request."""
    leak_action: LeakAction = "strip"
    """strip | fallback | allow: guidance that states an answer."""
    skip_level: int = Field(default=5, ge=1, le=6)
    """No guidance at or above this level of the student's competence (1-5; 6: never skip)."""

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> Any:
        return teacher_deployments(v)

    @field_validator("router", mode="before")
    @classmethod
    def _router(cls, v: Any) -> Any:
        return router_settings(v)

    @field_validator("params", mode="after")
    @classmethod
    def _prices(cls, v: dict[str, Any]) -> dict[str, Any]:
        split_prices(v)  # a price of the wrong type is refused here, at start, by name
        return v

    @field_validator("protocol", "placement", "leak_action", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @property
    def name(self) -> str | None:
        """The teacher's model string; a group's first deployment's (protocol, reports)."""
        if isinstance(self.model, list):
            return str(self.model[0]["model"])
        return self.model

    @property
    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None


class JudgeConfig(Settings):
    """Who decides between the guided and the student's own answer (``judges.py``)."""

    main: ClassVar[str | None] = "use"

    use: str = "auto"
    """auto | teacher | answer | pkg.mod:fn (auto: the teacher, pairwise in both orders)."""
    threshold: float = Field(default=0.7, gt=0, le=1)
    """The teacher judge's passing score of one graded answer under ``verify`` (0-1: its 0-10 grade / 10)."""


class GateConfig(Settings):
    """The learned teaching gate and family guidance reuse (``learning/gate.py``)."""

    main: ClassVar[str | None] = "mode"

    mode: GateMode = "always"
    """always | learned: skip probe and teacher for task families where teaching does not pay."""
    threshold: float = Field(default=0.05, gt=0, lt=1)
    """A family closes below this probability that teaching pays."""
    reopen: float = Field(default=0.2, gt=0, lt=1)
    """A closed family re-opens at this probability."""
    min_gain: float = Field(default=0.05, ge=0, lt=1)
    """The improvement rate worth teaching."""
    explore: float = Field(default=0.1, ge=0, le=1)
    """Share of a closed family's calls taught anyway, to keep measuring it."""
    horizon: float = Field(default=200.0, ge=1)
    """Outcomes before evidence fades."""
    min_evidence: float = Field(default=10.0, ge=0)
    """Outcomes before a family may close."""
    max_net_tokens: float | None = None
    """Net tokens teaching may add per call; unset: no budget."""
    rebuild: int = Field(default=5000, ge=0)
    """Ledger records replayed into the evidence when a process starts."""
    reuse: ReuseMode = "none"
    """none | family: reuse guidance that won a comparison for the family's next calls."""

    @field_validator("mode", "reuse", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _consistent(self) -> GateConfig:
        if self.reopen < self.threshold:
            raise ValueError(f"gate.reopen ({self.reopen}) must not be below gate.threshold "
                             f"({self.threshold}): a family would re-open before it could close")
        if self.horizon <= self.min_evidence:
            raise ValueError(f"gate.horizon ({self.horizon:g}) must exceed gate.min_evidence "
                             f"({self.min_evidence:g}): discounted evidence never reaches the horizon, "
                             "so no family would ever leave 'learning'")
        return self

    def rule(self) -> GateRule:
        """The gate's rule: every ``GateRule`` field, read from the field of the same name."""
        return GateRule(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GateRule)})


class StateConfig(Settings):
    """What replicas share: sessions, the teacher's circuit breaker, family evidence (``state/``)."""

    main: ClassVar[str | None] = "url"

    url: str = "memory"
    """memory | redis://... | rediss://...: where sessions, the breaker and evidence live."""
    timeout: float = Field(default=0.1, gt=0, le=10)
    """Seconds a Redis operation may take before process memory answers instead."""
    prefix: str = Field(default="atlas:", min_length=1)
    """Prefix of every Redis key."""
    session_ttl: float = Field(default=3600.0, gt=0)
    """Seconds an agent session's guidance is kept."""
    circuit_failures: int = Field(default=5, ge=1)
    """Teacher failures in a row that open the circuit breaker."""
    circuit_cooldown: float = Field(default=30.0, gt=0)
    """Seconds the breaker stays open before the teacher is tried again."""

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, v: Any) -> Any:
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


class LedgerConfig(Settings):
    """Where every call is recorded (``ledger/``)."""

    main: ClassVar[str | None] = "url"

    url: str | None = None
    """sqlite:///path | postgresql://... | none; unset: ledger.db in the user data dir."""
    store_texts: bool = False
    """Keep prompt and answer texts (else hashes and lengths only)."""
    spool: str | None = None
    """JSONL file for records the ledger could not take; none: no spool; unset: beside the ledger."""
    timeout: float = Field(default=2.0, gt=0, le=60)
    """Seconds a call waits for its ledger write (never past its own timeout); then spooled."""

    def resolved_url(self) -> str:
        return self.url if self.url is not None else default_ledger_url()


class ProxyConfig(Settings):
    """The LiteLLM proxy's bounds on a model call's body (``proxy/gate.py``, docs/proxy.md)."""

    max_body_mb: float = Field(default=10.0, gt=0)
    """Largest model call body in MiB (413 above): one image at Anthropic's 5 MB limit, base64
    encoded, with its conversation; raise it for PDFs or several large images."""
    body_timeout: float = Field(default=60.0, gt=0)
    """Seconds a client has to send a model call's whole body (408 after)."""
    max_json_depth: int = Field(default=64, ge=2, le=256)
    """Deepest JSON nesting a model call's body may have (400 deeper)."""


GROUPS: dict[str, type[Settings]] = {
    "teacher": TeacherConfig, "judge": JudgeConfig, "gate": GateConfig, "state": StateConfig,
    "ledger": LedgerConfig, "proxy": ProxyConfig,
    "adaptive": AdaptiveConfig, "shadow": ShadowConfig, "budget": BudgetConfig,
}
"""The nested settings objects: ``ATLAS_<GROUP>`` (JSON, or the main value) or ``ATLAS_<GROUP>_<FIELD>`` each."""


FLAT: dict[str, tuple[str, str]] = {
    **{f"teacher_{name}": ("teacher", name)
       for name in ("api_base", "api_key", "params", "router", "protocol", "timeout", "max_tokens", "retries")},
    "probe_max_tokens": ("teacher", "probe_max_tokens"), "guidance_placement": ("teacher", "placement"),
    "leak_action": ("teacher", "leak_action"), "skip_level": ("teacher", "skip_level"),
    **{f"gate_{name}": ("gate", name)
       for name in ("threshold", "reopen", "min_gain", "explore", "horizon", "min_evidence", "max_net_tokens",
                    "rebuild")},
    "reuse": ("gate", "reuse"),
    "state_timeout": ("state", "timeout"), "state_prefix": ("state", "prefix"), "session_ttl": ("state", "session_ttl"),
    "circuit_failures": ("state", "circuit_failures"), "circuit_cooldown": ("state", "circuit_cooldown"),
    "ledger_timeout": ("ledger", "timeout"), "store_texts": ("ledger", "store_texts"), "spool": ("ledger", "spool"),
    **{f"proxy_{name}": ("proxy", name) for name in ("max_body_mb", "body_timeout", "max_json_depth")},
}
"""The flat settings of earlier releases -> (group, field), still accepted as keywords, YAML keys
and ``ATLAS_*`` variables for one release: ``teacher_api_base`` -> ``teacher.api_base``. The
groups' own names (``teacher``, ``judge``, ``gate``, ``state``, ``ledger``) take the main value."""


def default_ledger_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'atlas-middleware' / 'ledger.db'}"


class AtlasConfig(BaseModel):
    """Every setting, validated at construction; build it with ``load()`` (file, environment,
    arguments), ``build()`` (a mapping) or the constructor (keywords, flat or nested)."""

    model_config = ConfigDict(defer_build=True, extra="forbid", validate_assignment=True,
                              use_attribute_docstrings=True)

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    """The teacher model, its calls and its guidance."""
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """The judge of guided against baseline answers."""
    policy: PolicySetting = "adaptive"
    """adaptive | strict | verify | audit | off | shadow (docs/policies.md)."""
    audit_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    """Share of an explicit ``audit`` policy's calls compared after delivery (adaptive has its own)."""
    context_chars: int = Field(default=12000, ge=200)
    """Characters of the conversation the teacher and the judge read (its end kept)."""
    lean_http: bool = True
    """Call OpenAI-compatible endpoints directly (httpx sync, aiohttp async) instead of through LiteLLM."""
    gate: GateConfig = Field(default_factory=GateConfig)
    """The learned teaching gate and family guidance reuse."""
    state: StateConfig = Field(default_factory=StateConfig)
    """Where sessions, the breaker and family evidence live."""
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    """Where every call is recorded."""
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    """The proxy's bounds on a model call's body."""
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig)
    """``policy: adaptive``: its rule's settings."""
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    """``policy: shadow``: the sampled share, and the bounds of the background work."""
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    """Caps on teaching spend per UTC day, total and per family (unset: none)."""

    @model_validator(mode="before")
    @classmethod
    def _nested(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = nest(data)
        # ``gate: learned`` gates an explicit policy; set without one it means ``strict``, as it
        # did before ``adaptive`` became the default (which gates each family itself).
        gate = data.get("gate")
        if "policy" not in data and isinstance(gate, Mapping) and str(gate.get("mode", "")).strip().lower() == "learned":
            data["policy"] = "strict"
        return data

    @field_validator("policy", mode="before")
    @classmethod
    def _policy(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() not in POLICY_SETTINGS:
            raise ValueError(f"unknown policy {v!r}; choose one of {', '.join(POLICY_SETTINGS)}")
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _gate_consistent(self) -> AtlasConfig:
        if self.gate.mode != "learned":
            return self
        if self.policy == "adaptive":
            raise ValueError("gate: learned is for an explicit policy; policy adaptive gates each task family "
                             "itself: leave gate at always, or choose policy strict, audit or verify")
        if self.policy == "off":
            raise ValueError("gate: learned learns from comparisons, and policy off makes none: "
                             "choose policy strict, audit or verify")
        if self.policy == "shadow":
            raise ValueError("gate: learned gates the calls a policy teaches, and policy shadow delivers none "
                             "taught (its comparisons feed the adaptive policy's evidence): leave gate at always")
        if self.policy in ("audit", "verify") and self.audit_rate == 0:
            raise ValueError(f"gate: learned under policy {self.policy} learns from the audit_rate share of "
                             "calls, and audit_rate is 0: it would never learn")
        return self

    @property
    def teacher_name(self) -> str | None:
        """The teacher's model string; a group's first deployment's (protocol, reports)."""
        return self.teacher.name

    def gate_rule(self) -> GateRule:
        return self.gate.rule()

    def ledger_url(self) -> str:
        return self.ledger.resolved_url()

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
            data = _checked(lambda: nest(_read_yaml(Path(path))))
        data = merge(data, from_env(env))
        return cls.build(merge(data, _checked(lambda: nest({k: v for k, v in overrides.items() if v is not None}))))

    @classmethod
    def build(cls, data: Mapping[str, Any]) -> AtlasConfig:
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg'].removeprefix('Value error, ')}"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid atlas-middleware configuration: {problems}") from None

    def merged(self, overrides: Mapping[str, Any]) -> AtlasConfig:
        """This configuration with ``overrides`` (flat or nested; ``None`` ignored) over it."""
        given = _checked(lambda: nest({k: v for k, v in overrides.items() if v is not None}))
        return self.build(merge(self.model_dump(exclude_unset=True), given)) if given else self

    def loop_settings(self, protocol: TeacherProtocol | None = None) -> LoopSettings:
        """The flow's settings, with the protocol resolved and its defaults filled in
        (``protocol``: the one ``auto`` found by asking the teacher's server instead).

        Each ``LoopSettings`` field is read from the setting of its name (``_setting``):
        ``shadow_timeout`` from ``shadow.timeout``, ``skip_level`` from ``teacher.skip_level``,
        ``audit_rate`` from the top; only the derived ones (the protocol and its defaults, the
        prices split off ``teacher.params``) are set here. A new field without a setting of its
        name fails here, loudly."""
        protocol = protocol or protocol_for(self.teacher.protocol, self.teacher.name)
        teacher_params, teacher_prices = split_prices(self.teacher.params)
        derived: dict[str, Any] = {
            "policy": "strict" if self.policy == "adaptive" else self.policy,  # adaptive: chosen per call
            "teacher_model": self.teacher.name, "teacher_params": teacher_params, "teacher_prices": teacher_prices,
            "protocol": protocol, "teacher_timeout": self.teacher.timeout or protocol.teacher_timeout,
            "teacher_max_tokens": self.teacher.max_tokens or protocol.teacher_max_tokens,
        }
        named = {f.name: self._setting(f.name) for f in dataclasses.fields(LoopSettings) if f.name not in derived}
        return LoopSettings(**named, **derived)

    def _setting(self, name: str) -> Any:
        """The setting a flat name reads: a top-level field, ``<group>_<field>``, or a field
        of the teacher's (the flow's settings are mostly the teacher's)."""
        if name in type(self).model_fields:
            return getattr(self, name)
        group, _, field = name.partition("_")
        if group in GROUPS and field in GROUPS[group].model_fields:
            return getattr(getattr(self, group), field)
        if name in TeacherConfig.model_fields:
            return getattr(self.teacher, name)
        raise AttributeError(f"no setting for {name!r}")  # a new LoopSettings field needs a setting

    def judge_for(self, settings: LoopSettings, spec: Any = None) -> Judge:
        """The judge these settings name (``spec``: an object judge given instead), with the
        teacher's model, timeout, token cap, params and context."""
        from .teaching.judges import resolve_judge

        return resolve_judge(spec if spec is not None else self.judge.use, teacher_model=settings.teacher_model,
                             timeout=settings.teacher_timeout, max_tokens=settings.teacher_max_tokens,
                             params=settings.teacher_params, context_chars=settings.context_chars,
                             threshold=self.judge.threshold)


def _flat_reader(group: str, field: str) -> property:
    return property(lambda self: getattr(getattr(self, group), field),
                    doc=f"``{group}.{field}`` (the flat name of earlier releases, for one release).")


for _name, (_group, _field) in FLAT.items():  # ``config.teacher_api_base`` reads ``config.teacher.api_base``
    setattr(AtlasConfig, _name, _flat_reader(_group, _field))
del _name, _group, _field


def is_setting(name: str) -> bool:
    """Whether ``name`` is a setting ``AtlasConfig`` takes (a field, or a flat name of old)."""
    return name in AtlasConfig.model_fields or name in FLAT


def nest(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (flat names, groups as mappings, main values or JSON) with every group as a
    mapping; unknown names are refused with the closest real one."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in GROUPS:
            out[key] = {**out.get(key, {}), **_group_mapping(key, value)}
        elif key in FLAT:
            group, field = FLAT[key]
            out[group] = {**out.get(group, {}), field: value}
        elif key in AtlasConfig.model_fields:
            out[key] = value
        else:
            raise ValueError(unknown_setting(str(key), [*AtlasConfig.model_fields, *FLAT]))
    for group in GROUPS.keys() & out.keys():  # named with their group: ``shadow.rat``
        fields = GROUPS[group].model_fields
        unknown = sorted(str(k) for k in out[group] if k not in fields)
        if unknown:
            raise ValueError(unknown_setting(f"{group}.{unknown[0]}", [f"{group}.{f}" for f in fields]))
    return out


def _group_mapping(group: str, value: Any) -> dict[str, Any]:
    shaped = as_mapping(GROUPS[group], value)
    if not isinstance(shaped, Mapping):
        raise ValueError(f"{group}: must be a mapping of its settings, got {type(value).__name__}")
    return dict(shaped)


def merge(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """``high`` over ``low``, group by group (both nested, as ``nest`` makes them)."""
    out = dict(low)
    for key, value in high.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key in GROUPS
        out[key] = {**out[key], **value} if both else value
    return out


def _checked(make: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = make()
    except ValueError as exc:
        raise ConfigError(f"invalid atlas-middleware configuration: {exc}") from None
    return result


# -- environment variables ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EnvVar:
    """One ``ATLAS_*`` variable: the setting it sets (``path``), and its older name if any.
    A group's own variable (``whole``) takes the group as a JSON object, or its main value."""

    name: str
    path: tuple[str, ...]
    default: str
    meaning: str
    also: str | None = None
    whole: bool = False


def env_vars() -> list[EnvVar]:
    """Every variable ``load()`` reads, from the fields themselves, in the fields' order."""
    old = {path: ENV_PREFIX + flat.upper() for flat, path in FLAT.items()}
    out = [EnvVar(ENV_PREFIX + "CONFIG", (), "", "Path of a YAML file with any of these settings "
                  "(at the top or under an ``atlas:`` section).")]
    for name, info in AtlasConfig.model_fields.items():
        group = GROUPS.get(name)
        if group is None:
            out.append(EnvVar(ENV_PREFIX + name.upper(), (name,), _default(info), _first_sentence(info.description)))
            continue
        out.append(_group_var(name, group, info.description))
        for field, sub in group.model_fields.items():
            if field == group.main:
                continue
            canonical = f"{ENV_PREFIX}{name.upper()}_{field.upper()}"
            legacy = old.get((name, field))
            out.append(EnvVar(canonical, (name, field), _default(sub), _first_sentence(sub.description),
                              legacy if legacy != canonical else None))
    return out


def _group_var(name: str, group: type[Settings], description: str | None) -> EnvVar:
    if group.main is None:
        return EnvVar(ENV_PREFIX + name.upper(), (name,), "",
                      f"{_first_sentence(description)} A JSON object of the fields below.", whole=True)
    main = group.model_fields[group.main]
    return EnvVar(ENV_PREFIX + name.upper(), (name, group.main), _default(main),
                  f"{_first_sentence(main.description)} Or the whole ``{name}`` group as a JSON object.", whole=True)


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings ``env`` sets, nested: a group's own variable first, then older names,
    then the current ``ATLAS_<GROUP>_<FIELD>`` names (the newest name wins)."""
    data: dict[str, Any] = {}
    variables = [var for var in env_vars() if var.path]
    for var in variables:
        if (var.whole or len(var.path) == 1) and env.get(var.name):
            data = merge(data, {var.path[0]: _env_value(var, env[var.name], var.name)})
    for use_old in (True, False):
        for var in variables:
            name = var.also if use_old else var.name
            if not var.whole and len(var.path) == 2 and name and env.get(name):
                group, field = var.path
                data = merge(data, {group: {field: _env_value(var, env[name], name)}})
    return data


def _env_value(var: EnvVar, text: str, name: str) -> Any:
    """A variable's text as its setting takes it: JSON for a mapping (a group, ``params``)."""
    group = GROUPS.get(var.path[0])
    if group is None:
        return text
    try:
        if var.whole:
            return _group_mapping(var.path[0], text)
        if get_origin(group.model_fields[var.path[1]].annotation) is not dict:
            return text
        value = _json_mapping(text)
        if not isinstance(value, Mapping):
            raise ValueError(f"must be a JSON object, got {type(value).__name__}")
        return value
    except ValueError as exc:
        raise ConfigError(f"invalid atlas-middleware configuration: {name}: {exc}") from None


OTHER_ENV: dict[str, str] = {
    "ATLAS_STUDENT": "The student model of the ``atlas run``, ``eval`` and ``demo`` commands (``--student``).",
    "ATLAS_STUDENT_API_KEY": "The student's API key for those commands (``--student-api-key``).",
    "ATLAS_REPLICA": "This replica's name in the proxy's metrics; unset: host name and process id.",
    "XDG_DATA_HOME": "Where the default ledger and spool live (``atlas-middleware/`` under it); "
                     "unset: ``~/.local/share``.",
    "XDG_CACHE_HOME": "Where the embedded SmolLM2 model is converted once; unset: ``~/.cache``.",
    "VLLM_USE_V1": "vLLM's own switch, read to pick its engine for ``vllm/...`` models.",
}
"""Variables read outside ``AtlasConfig``: the CLI's, the proxy's and where files go."""


def env_table() -> str:
    """The markdown tables of every variable, as docs/configuration.md carries them."""
    rows = ["| variable | setting | default | meaning |", "| --- | --- | --- | --- |"]
    for var in env_vars():
        name = f"`{var.name}`" + (f" (or `{var.also}`)" if var.also else "")
        setting = f"`{'.'.join(var.path)}`" if var.path else ""
        rows.append(f"| {name} | {setting} | {var.default} | {_cell(var.meaning)} |")
    rows += ["", "Read outside `AtlasConfig`:", "", "| variable | meaning |", "| --- | --- |"]
    rows += [f"| `{name}` | {_cell(meaning)} |" for name, meaning in OTHER_ENV.items()]
    return "\n".join(rows) + "\n"


def _default(info: Any) -> str:
    if info.default_factory is not None:
        return ""
    value = info.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _first_sentence(text: str | None) -> str:
    flat = " ".join((text or "").split())
    end = flat.find(". ")
    return flat if end < 0 else flat[:end + 1]


def _cell(text: str) -> str:
    return text.replace("``", "`").replace("|", "\\|")


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
