"""What a call costs: per-token prices given the LiteLLM way, and the student-alone counterfactual.

**Prices.** Every role of a taught call is priced by its own model: the probe, the guided
answer and the baseline by the student's, the teacher and the judge by the teacher's. A
model's price is LiteLLM's cost map, unless LiteLLM's own custom pricing parameters are
given for it, as a LiteLLM user prices a self-hosted model:

* per call: ``atlas.completion(model, messages, input_cost_per_token=..., output_cost_per_token=...)``
  (the student's price for this call; ``litellm.completion`` takes the same keywords);
* per proxy deployment: the same keys in a ``model_list`` entry's ``litellm_params`` or
  ``model_info`` (``provider/`` passes them on as the student's);
* for the teacher: the same keys in ``teacher_params``.

``cache_read_input_token_cost`` (the price of a prompt token read from the provider's cache)
is optional and defaults to the input price, as in LiteLLM. The keys are taken out of the
request before any backend sees it, so they never reach a wire body, never push a call off
the lean path (``backends/param_contract.py`` does not know them, and would hand the call
to LiteLLM), and never register a price in LiteLLM's process-wide cost map (what
``litellm.completion`` does with them: one caller's price would become another's).

**The counterfactual.** What the student alone would have spent on a call is its baseline's
usage, when the call ran one (``measured``). When it did not (``verify`` that passed,
``audit`` not sampled, ``off``), ``BaselineStats`` holds the discounted running means of the
baselines measured for the same student model and task family, and their mean stands in
(``estimated``, with the effective number of samples behind it). ``state/baselines.py``
keeps them per replica or for the fleet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .usage import Usage

INPUT, OUTPUT, CACHE_READ = "input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost"
PRICE_PARAMS: tuple[str, ...] = (INPUT, OUTPUT, CACHE_READ)
"""LiteLLM's custom pricing parameters that atlas prices by (US dollars per token)."""

BASELINE_HORIZON = 200.0
"""Measured baselines before an old one's weight fades to 1/e: a family's mean follows a
student whose answers grow or shrink, and the effective sample count stays bounded."""


@dataclass(frozen=True)
class Prices:
    """US dollars per token of one model, as LiteLLM's custom pricing gives them."""

    input_cost_per_token: float
    output_cost_per_token: float
    cache_read_input_token_cost: float | None = None
    """None: cached prompt tokens cost the input price (LiteLLM's default)."""

    def cost(self, usage: Usage) -> float:
        """The price of ``usage``: cached prompt tokens at the cache-read price, reasoning
        tokens as the output they are part of (``usage.py``)."""
        cached = usage.cached_tokens
        read = self.input_cost_per_token if self.cache_read_input_token_cost is None else self.cache_read_input_token_cost
        return ((usage.prompt_tokens - cached) * self.input_cost_per_token + cached * read
                + usage.completion_tokens * self.output_cost_per_token)

    def applied(self, usage: Usage) -> Usage:
        """``usage`` priced by these prices (whatever price it carried before)."""
        return usage.model_copy(update={"cost_usd": self.cost(usage)})


def _price(name: str, value: Any) -> float:
    """One price as a float; a ValueError naming ``name`` when it is not one.

    A numeric string is taken, as LiteLLM takes it: YAML reads ``3e-6`` (no dot) as a string.
    """
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number < 0:
        raise ValueError(f"{name}: must be a price in US dollars per token (a finite number >= 0), got {value!r}")
    return number


def split_prices(params: Mapping[str, Any]) -> tuple[dict[str, Any], Prices | None]:
    """``params`` without the price keys, and the ``Prices`` they give (None: none given).

    Raises ``ValueError`` naming the field for a price that is not a number, or one of the
    input and output prices without the other (LiteLLM prices by the pair, and so does this).
    """
    given = {k: params[k] for k in PRICE_PARAMS if params.get(k) is not None}
    rest = {k: v for k, v in params.items() if k not in PRICE_PARAMS}
    if not given:
        return rest, None
    values = {k: _price(k, v) for k, v in given.items()}
    for name, other in ((INPUT, OUTPUT), (OUTPUT, INPUT), (CACHE_READ, INPUT)):
        if name in values and other not in values:
            raise ValueError(f"{name} is given without {other}: give {INPUT} and {OUTPUT} together")
    return rest, Prices(values[INPUT], values[OUTPUT], values.get(CACHE_READ))


@dataclass(frozen=True)
class BaselineStats:
    """Discounted sums over the measured baselines of one student model and task family.

    Each new baseline first multiplies every sum by ``1 - 1/BASELINE_HORIZON``, so recent
    ones weigh most and ``samples`` (the effective count) stays below the horizon.
    """

    samples: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    priced: float = 0.0
    """The (discounted) count of baselines whose price was known: ``cost_usd / priced`` is
    the mean price; an unpriced baseline adds to the token means only."""
    cost_usd: float = 0.0

    def added(self, usage: Usage, discount: float = 1.0 - 1.0 / BASELINE_HORIZON) -> BaselineStats:
        """These sums after one more measured baseline."""
        priced, cost = self.priced * discount, self.cost_usd * discount
        if usage.cost_usd is not None:
            priced, cost = priced + 1.0, cost + usage.cost_usd
        return BaselineStats(self.samples * discount + 1.0, self.prompt_tokens * discount + usage.prompt_tokens,
                             self.completion_tokens * discount + usage.completion_tokens, priced, cost)

    @property
    def mean_completion_tokens(self) -> float:
        return self.completion_tokens / self.samples if self.samples > 0 else 0.0

    @property
    def mean_total_tokens(self) -> float:
        return (self.prompt_tokens + self.completion_tokens) / self.samples if self.samples > 0 else 0.0

    @property
    def mean_cost_usd(self) -> float | None:
        """None when no baseline behind the mean was priced: an unknown cost is not zero."""
        return self.cost_usd / self.priced if self.priced > 0 else None
