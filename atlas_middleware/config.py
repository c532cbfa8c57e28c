"""Configuration as one validated object.

Sources, lowest priority first: defaults, a YAML file, ``ATLAS_*`` environment variables,
explicit arguments (constructor keywords or CLI flags). Environment variables are read when
``AtlasConfig.load()`` runs, never at import time.

=============================  ================================================  =========
variable                       field                                             default
=============================  ================================================  =========
``ATLAS_CONFIG``               path of a YAML file with any of the fields below
``ATLAS_TEACHER``              ``teacher``: LiteLLM model string of the teacher
``ATLAS_TEACHER_API_BASE``     ``teacher_api_base``
``ATLAS_TEACHER_API_KEY``      ``teacher_api_key`` (never logged or stored)
``ATLAS_POLICY``               ``policy``: strict | verify | audit | off          strict
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
``ATLAS_TEACHER_RETRIES``      ``teacher_retries``: attempts per teacher call     3
``ATLAS_LEAN_HTTP``            ``lean_http``: direct httpx for OpenAI-compatible  true
=============================  ================================================  =========

Per protocol (``teaching/protocols/``): ``atlas`` 2048 teacher tokens and 60 s, room for
ATLAS-8B-Thinking's reasoning; ``structured`` 1024 tokens and 30 s. ``judge: auto`` is the
teacher as a pairwise judge (``judges.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .errors import ConfigError
from .teaching.flow import POLICIES, LeakAction, LoopSettings, Policy
from .teaching.protocols import Placement, ProtocolName, protocol_for

ENV_PREFIX = "ATLAS_"


def default_ledger_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'atlas-middleware' / 'ledger.db'}"


class AtlasConfig(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", validate_assignment=True)

    teacher: str | None = None
    teacher_api_base: str | None = None
    teacher_api_key: SecretStr | None = None
    teacher_params: dict[str, Any] = Field(default_factory=dict)
    policy: Policy = "strict"
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
    teacher_retries: int = Field(default=3, ge=1)
    circuit_failures: int = Field(default=5, ge=1)
    circuit_cooldown: float = Field(default=30.0, gt=0)
    session_ttl: float = Field(default=3600.0, gt=0)
    context_chars: int = Field(default=12000, ge=200)
    lean_http: bool = True
    """Call OpenAI-compatible endpoints directly over httpx instead of through LiteLLM."""

    @field_validator("policy", mode="before")
    @classmethod
    def _policy(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() not in POLICIES:
            raise ValueError(f"unknown policy {v!r}; choose one of {', '.join(POLICIES)}")
        return v.lower() if isinstance(v, str) else v

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

    def loop_settings(self) -> LoopSettings:
        """The flow's settings, with the protocol resolved and its defaults filled in."""
        protocol = protocol_for(self.teacher_protocol, self.teacher)
        return LoopSettings(
            policy=self.policy,
            teacher_model=self.teacher,
            teacher_params=dict(self.teacher_params),
            protocol=protocol,
            teacher_timeout=self.teacher_timeout or protocol.teacher_timeout,
            probe_max_tokens=self.probe_max_tokens,
            teacher_max_tokens=self.teacher_max_tokens or protocol.teacher_max_tokens,
            skip_level=self.skip_level,
            audit_rate=self.audit_rate,
            context_chars=self.context_chars,
            placement=self.guidance_placement,
            leak_action=self.leak_action,
        )

    def ledger_url(self) -> str:
        return self.ledger if self.ledger is not None else default_ledger_url()


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
