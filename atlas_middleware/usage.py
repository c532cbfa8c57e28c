"""Token usage as a value type with an exact meaning.

``Usage`` counts the tokens of one or more model calls. Adding two usages adds their
counts and keeps track of where the numbers came from: a figure is *exact* only when every
call it sums was counted by the provider itself (or by the model's own tokenizer, for local
models). When any part was estimated, ``counted_by`` says so and names the tokenizer.

``cost_usd`` is ``None`` when any part's price is unknown: an unknown cost is not zero.

What includes what, as OpenAI defines its usage fields: ``completion_tokens`` *includes*
``reasoning_tokens`` (a reasoning model's hidden thinking is billed as output), and
``prompt_tokens`` *includes* ``cached_tokens`` (prompt tokens read from the provider's
cache, billed at a lower rate). The two details are parts of those counts, never added to
them, so every figure computed from ``total_tokens`` (savings, net tokens) counts a
reasoning model's thinking exactly once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["probe", "teacher", "guided", "baseline", "judge"]
ROLES: tuple[Role, ...] = ("probe", "teacher", "guided", "baseline", "judge")


class Usage(BaseModel):
    """Tokens of one or more calls. Immutable; ``a + b`` sums two of them."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = Field(
        default=0,
        description="of completion_tokens, those a reasoning model spent thinking "
        "(completion_tokens_details.reasoning_tokens); 0 when the provider reported none",
    )
    cached_tokens: int = Field(
        default=0,
        description="of prompt_tokens, those read from the provider's prompt cache "
        "(prompt_tokens_details.cached_tokens); 0 when the provider reported none",
    )
    calls: int = Field(default=0, description="how many model calls these counts sum")
    counted_by: str = Field(
        default="provider",
        description="'provider' when every count came from the provider's usage field "
        "(or a local model's own tokenizer); otherwise 'estimated:<tokenizer>' or 'mixed'",
    )
    cost_usd: float | None = Field(
        default=0.0, description="summed price; None when any part's price is unknown"
    )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def openai_usage(self) -> dict[str, Any]:
        """The OpenAI ``usage`` object of these counts, with the details a provider reported."""
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.reasoning_tokens:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        if self.cached_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return out

    @property
    def exact(self) -> bool:
        return self.counted_by == "provider"

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        if self.calls == 0:
            return other
        if other.calls == 0:
            return self
        counted_by = self.counted_by if self.counted_by == other.counted_by else "mixed"
        cost = (
            None
            if self.cost_usd is None or other.cost_usd is None
            else self.cost_usd + other.cost_usd
        )
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            calls=self.calls + other.calls,
            counted_by=counted_by,
            cost_usd=cost,
        )


ZERO_USAGE: Usage = Usage.model_construct()
"""``Usage()``, the default of every usage field. Made with ``model_construct`` (the defaults
need no validation): calling ``Usage()`` at import time would build the model's schema, and
load pydantic's plugins, in every process that imports the package (``defer_build``)."""


class UsageByRole(BaseModel):
    """Usage split by the role each call played in the teaching loop."""

    model_config = ConfigDict(defer_build=True)

    probe: Usage = ZERO_USAGE
    teacher: Usage = ZERO_USAGE
    guided: Usage = ZERO_USAGE
    baseline: Usage = ZERO_USAGE
    judge: Usage = ZERO_USAGE

    def add(self, role: Role, usage: Usage) -> None:
        setattr(self, role, getattr(self, role) + usage)

    def total(self) -> Usage:
        out = Usage()
        for role in ROLES:
            out = out + getattr(self, role)
        return out

    def student(self) -> Usage:
        """The tokens spent on the student model (probe, guided, baseline)."""
        return self.probe + self.guided + self.baseline
