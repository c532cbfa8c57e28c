"""The adaptive policy's rule: per task family and student model, the cheapest way to serve
the family that keeps it within the non-degradation target. Pure: no I/O (``gate.py`` reads
the evidence, asks ``choose``, and writes the mode back).

The modes, from the least checking to the most:

==========  ===============================================  ================================
mode        what a call does                                 what it can deliver worse than
                                                             the student alone
==========  ===============================================  ================================
``skip``    the student alone (the gate's closed state);     nothing
            an ``explore`` share is taught under ``strict``
``audit``   the guided answer; an ``audit_rate`` share is    every guided answer that is
            compared with the student's own after delivery   worse: the family's rate ``pd``
``verify``  the guided answer if its grade passes, else      a worse guided answer the grader
            compared; an ``audit_rate`` share is measured    passed: at most ``pd`` times the
            under ``strict``                                 judge's miss rate
``strict``  both answers, the judge's pick                   the judge's consistent mistakes
                                                             (the safe mode)
==========  ===============================================  ================================

**Evidence.** Every call in the family's unbiased sample (``strict`` calls, the audit
sample, measured and explored calls; ``gate.in_sample``) adds its outcome (improved,
degraded, unchanged), whether the pairwise judge read two different answers and whether its
two orders disagreed, and what teaching and checking cost as shares of the student alone
(dollars when every role is priced, else tokens). Counts fade with ``horizon``.

**A shared prior.** Each call is also added to its student model's pooled evidence (family
key ``POOLED``). A family's posterior adds the pooled rates scaled to ``prior_weight``
pseudo-calls (an empirical-Bayes prior, down-weighted): a rare family borrows strength from
the others, but only towards the safe side: with fewer than ``min_evidence`` outcomes of its
own a family runs ``strict``, or ``skip`` when the prior says teaching does not pay (then
``PRIOR_EXPLORE`` of its calls are taught, so that its own outcomes soon decide). A cheaper
checking mode needs the family's own evidence.

**The judge's errors.** The outcomes are the judge's verdicts, and a judge misses some
degradations: it calls them ties or improvements, or its two orders disagree (``undecided``,
not counted). The share of judged comparisons whose orders disagreed is a *lower* bound on
how often the judge errs; errors correlated on hard items (both orders fooled alike) are
invisible to it. So the miss rate assumed is ``judge_miss_factor`` (2: as many invisible
errors as visible ones) times the credible upper bound of the disagreement rate, at least
``judge_miss_floor``, at most ``MAX_MISS`` (one verdict alone, a grade: ``factor - 1/2``
times, ``judge_misses``); the observed degradations are inflated by it (``d / (1 - miss)``)
before the bound below. Never optimistic: with no judged comparison yet the miss rate is
``MAX_MISS``, and a judge's false alarm (an improvement it called a degradation) counts as
a degradation, since nothing in the data tells the two apart. Outcomes graded against gold
answers (``Atlas.learn``; ``FamilyEvidence.graded``) have no judge in them and are counted
as they are: they are the way to a bound the judge's errors cannot keep up.

**The bound.** ``degradation`` is the ``credibility`` quantile of the Beta posterior of the
(inflated) degradation rate, uniform prior plus shared prior plus own counts. ``audit`` is
admissible when ``degradation <= 1 - ndr_target``; ``verify`` when ``degradation *
grade_miss <= 1 - ndr_target`` (the grader is the same teacher: one verdict's error);
``strict`` always (it is the reference the others are measured
against). The cheapest admissible of the three is the *candidate*.

**Teach or skip.** Teaching must pay for its checking: its value is the posterior mean of
(improved - degraded) minus ``gain_per_cost`` times the candidate's extra cost over the
student alone (negative when teaching saves money: shorter guided answers); ``skip``'s is
minus its exploration's extra cost. A taught family is skipped when the candidate's value
falls ``MARGIN`` below skip's, a skipped one taught again when it rises ``MARGIN`` above.
A family is kept under ``strict`` to learn instead (``prospect``, why ``prospect``) when
``audit`` would cost less than skipping (or than ``verify``, where that is what its bound
admits: verify measures a sample, strict every call), and the outcomes that would certify
audit at the family's own degradation rate cost less than one ``horizon`` of audit's
saving: shorter guided answers can make a family cheaper under audit than skipped, and only
evidence shows whether they may.

**Moves.** To more checking (``strict``, ``skip``, or a cheaper mode whose bound no longer
holds): at once. To ``audit`` or ``verify`` from a mode with more checking: only after
``min_evidence`` outcomes in the current mode (``mode_outcomes``), so a family moved back
earns its way down again. Any degradation found by an audited or measured call of an
``audit`` or ``verify`` family moves it back to ``strict`` at once (``gate.py``). A state
backend that is down serves every family ``strict`` (``why = state_unavailable``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Literal

from ..state.base import FamilyEvidence
from ..usage import Usage, UsageByRole
from .posterior import beta_quantile

Mode = Literal["skip", "audit", "verify", "strict"]
MODES: tuple[Mode, ...] = ("skip", "audit", "verify", "strict")
Why = Literal["learning", "prior", "rare", "prospect", "bound", "checked", "settling", "degraded", "no_gain",
              "state_unavailable"]

POOLED = "*"
"""The family key of a student model's pooled evidence (real keys are ``t:...``/``f:...``)."""
RARE = "~"
"""The family key of a student model's rare families as a class: the outcomes of calls made
while their family had fewer than ``min_evidence`` outcomes of its own."""
MAX_MISS = 0.5
"""A judge that misses half the degradations is no better than a coin: the most assumed."""
MARGIN = 0.01
"""Hysteresis of the teach-or-skip decision, in value (share of calls)."""
ASSUMED_TEACH, ASSUMED_CHECK = 1.0, 0.1
"""Cost shares assumed before any call measured them: teaching as dear as the student alone."""
VERIFY_FAILS = 0.5
"""Share of ``verify`` calls assumed to fail their grade and pay for a baseline."""
PRIOR_EXPLORE = 0.25
"""Share of a family skipped on the shared prior alone that is taught under ``strict``: its
own outcomes should decide as soon as it has some."""
_RISK: dict[str, int] = {"skip": 0, "strict": 1, "verify": 2, "audit": 3}


@dataclass(frozen=True)
class AdaptiveRule:
    """The adaptive policy's settings (``AtlasConfig.adaptive``), validated there."""

    ndr_target: float = 0.99
    credibility: float = 0.95
    audit_rate: float = 0.1
    explore: float = 0.05
    horizon: float = 2000.0
    min_evidence: float = 20.0
    prior_weight: float = 10.0
    gain_per_cost: float = 0.1
    judge_miss_floor: float = 0.1
    judge_miss_factor: float = 2.0

    @property
    def tolerance(self) -> float:
        """The share of a family's calls that may be delivered worse than the student alone."""
        return 1.0 - self.ndr_target

    @property
    def discount(self) -> float:
        return 1.0 - 1.0 / self.horizon


@dataclass(frozen=True)
class Figures:
    """What a family's evidence says, for the rule and the report."""

    own: float
    """The family's own (discounted) outcomes."""
    borrowed: float
    """Pseudo-outcomes of the shared prior in the posterior."""
    gain: float
    """Posterior mean of the improved share minus the degraded share under guidance."""
    degradation: float
    """Credible upper bound of the share of calls guidance makes worse (judge-corrected)."""
    judge_miss: float
    """The pairwise judge's assumed miss rate (both orders): how often it fails to call a
    degradation one."""
    grade_miss: float
    """A single verdict's assumed error rate (``verify``'s grade)."""
    costs: tuple[float, float, float, float]
    """Expected cost of a call per mode (``MODES`` order), the student alone = 1."""
    bad: float = 0.0
    """Judge-inflated degradations in the posterior (shared prior included): the bound's count."""
    total: float = 0.0
    """Outcomes in the posterior (shared prior included)."""
    own_bad: float = 0.0
    """Of ``bad``, the family's own: ``own_bad / own`` is its judge-inflated degradation rate."""

    def cost(self, mode: Mode) -> float:
        return self.costs[MODES.index(mode)]


@dataclass(frozen=True)
class Choice:
    mode: Mode
    why: Why
    figures: Figures


def _scale(weight: float, total: float) -> float:
    """How much of the pooled counts the prior keeps: ``weight`` pseudo-calls at most."""
    return min(1.0, weight / total) if total > 0 else 0.0


def judge_misses(e: FamilyEvidence, pooled: FamilyEvidence, rule: AdaptiveRule) -> tuple[float, float]:
    """The judge's assumed miss rates (module docstring): of the pairwise verdict, and of one
    verdict alone (a grade), from the upper bound of the both-orders disagreement rate.

    A pairwise verdict misses when its orders disagree (rate ``x``, seen) or both err alike
    (``w``, unseen); one verdict errs with probability ``x / 2 + w``. Assuming ``w <=
    (factor - 1) * x`` (errors correlated on hard items at most ``factor - 1`` times as
    frequent as the disagreements they leave), the two are at most ``factor * x`` and
    ``(factor - 1/2) * x``; both between the floor and ``MAX_MISS``."""
    s = _scale(rule.prior_weight, pooled.judged)
    undecided, judged = e.undecided + s * pooled.undecided, e.judged + s * pooled.judged
    upper = beta_quantile(rule.credibility, 1.0 + undecided, 1.0 + max(judged - undecided, 0.0))
    pair, one = rule.judge_miss_factor * upper, (rule.judge_miss_factor - 0.5) * upper
    return (min(MAX_MISS, max(rule.judge_miss_floor, pair)), min(MAX_MISS, max(rule.judge_miss_floor, one)))


def _costs(e: FamilyEvidence, pooled: FamilyEvidence, rule: AdaptiveRule) -> tuple[float, float, float, float]:
    s = _scale(rule.prior_weight, pooled.cost_calls)
    calls = e.cost_calls + s * pooled.cost_calls
    teach, check = ASSUMED_TEACH, ASSUMED_CHECK
    if calls > 0:
        teach = (e.cost_teach + s * pooled.cost_teach) / calls
        check = (e.cost_check + s * pooled.cost_check) / calls
    return (1.0 + rule.explore * (teach + check), teach + rule.audit_rate * (1.0 + check),
            teach + check + VERIFY_FAILS * (1.0 + check), teach + 1.0 + check)


@functools.lru_cache(maxsize=4096)
def figures(e: FamilyEvidence | None, pooled: FamilyEvidence | None, rule: AdaptiveRule) -> Figures:
    """The family's figures from its evidence ``e`` and its model's ``pooled`` evidence."""
    e, pooled = e or FamilyEvidence(), pooled or FamilyEvidence()
    s = _scale(rule.prior_weight, pooled.outcomes)
    improved, degraded = e.improved + s * pooled.improved, e.degraded + s * pooled.degraded
    total = e.outcomes + s * pooled.outcomes
    miss, grade_miss = judge_misses(e, pooled, rule)
    bad = min(_inflated(e, miss) + s * _inflated(pooled, miss), total)
    bound = beta_quantile(rule.credibility, 1.0 + bad, 1.0 + total - bad)
    # Dirichlet(1, 1, 1) prior: the means of the improved and degraded shares.
    gain = (improved - degraded) / (total + 3.0)
    return Figures(own=e.outcomes, borrowed=s * pooled.outcomes, gain=gain, degradation=bound, judge_miss=miss,
                   grade_miss=grade_miss, costs=_costs(e, pooled, rule), bad=bad, total=total,
                   own_bad=min(_inflated(e, miss), e.outcomes))


def _inflated(e: FamilyEvidence, miss: float) -> float:
    """``e``'s degradations with the judged ones inflated for the judge's misses; graded ones
    (gold answers) are counted as they are."""
    graded = min(e.graded_degraded, e.degraded)
    return (e.degraded - graded) / (1.0 - miss) + graded


def value(f: Figures, mode: Mode, rule: AdaptiveRule) -> float:
    """What serving the family in ``mode`` is worth, in share of calls improved (module docstring)."""
    gain = 0.0 if mode == "skip" else f.gain
    return gain - rule.gain_per_cost * (f.cost(mode) - 1.0)


def candidate(f: Figures, rule: AdaptiveRule) -> Mode:
    """The cheapest taught mode whose bound keeps the family within the target."""
    if f.degradation <= rule.tolerance:
        return "audit"
    if f.degradation * f.grade_miss <= rule.tolerance:
        return "verify"
    return "strict"


def prospect(f: Figures, rule: AdaptiveRule, instead: Mode = "skip") -> bool:
    """Whether to learn under ``strict`` towards ``audit`` rather than serve the family as
    ``instead`` (``skip``, or ``verify``, whichever is worth more: module docstring, "Teach or
    skip"). Audit must cost less than that by more than ``MARGIN`` of value (money alone: a
    gain borrowed from the shared prior buys no learning) and be worth no less; against
    ``verify``, an outcome must cost less measured under strict (every call, at strict's
    premium over audit) than under verify (an ``audit_rate`` share of its calls); and if the
    family's calls keep degrading at its own judge-inflated rate so far, the bound must admit
    audit within the outcomes that one ``horizon`` of audit's saving pays for (each costs
    strict's premium over the rival). It only buys evidence: the family stays ``strict`` until
    the bound itself admits a cheaper mode."""
    rival = instead if value(f, instead, rule) >= value(f, "skip", rule) else "skip"
    saving, premium = f.cost(rival) - f.cost("audit"), f.cost("strict") - f.cost(rival)
    if f.own <= 0 or rule.gain_per_cost * saving <= MARGIN or value(f, "audit", rule) < value(f, rival, rule):
        return False
    if rival == "verify" and f.cost("strict") - f.cost("audit") >= saving / rule.audit_rate:
        return False
    more = min(rule.horizon * saving / max(premium, 1e-9), rule.horizon - f.own)
    return more > 0 and _projected_bound(f.bad, f.total, f.own_bad / f.own, more, rule.credibility) <= rule.tolerance


@functools.lru_cache(maxsize=4096)
def _projected_bound(bad: float, total: float, rate: float, more: float, credibility: float) -> float:
    """The degradation bound after ``more`` outcomes that degrade at ``rate``."""
    bad, total = bad + rate * more, total + more
    return beta_quantile(credibility, 1.0 + bad, 1.0 + total - bad)


def choose(e: FamilyEvidence | None, pooled: FamilyEvidence | None, rule: AdaptiveRule, *,
           state_available: bool = True, rare: FamilyEvidence | None = None) -> Choice:
    """The family's mode now, from its evidence (``e.mode``: the mode it is in), its model's
    ``pooled`` evidence and, for a family with too little of its own, its model's ``rare``
    families as a class (module docstring, "Rare families")."""
    f = figures(e, pooled, rule)
    if not state_available:
        return Choice("strict", "state_unavailable", f)
    current: Mode = _mode(e)
    if f.own < rule.min_evidence:
        if (as_rare := _rare(f, e, rare, pooled, rule)) is not None:
            return as_rare
        informed = pooled is not None and pooled.outcomes >= rule.min_evidence
        if informed and value(f, "strict", rule) < value(f, "skip", rule) - MARGIN:
            return Choice("skip", "prior", f)
        return Choice("strict", "learning", f)
    best = candidate(f, rule)
    if best == "verify" and prospect(f, rule, "verify"):  # a detour: verify measures a sample, strict every call
        return Choice("strict", "prospect", f)
    margin = MARGIN if current == "skip" else -MARGIN
    if value(f, best, rule) - value(f, "skip", rule) <= margin:
        if prospect(f, rule):  # skipping costs more than audit would, once the evidence admits it
            return Choice("strict", "prospect", f)
        return Choice("skip", "no_gain", f)
    if best != "strict" and _RISK[best] > _RISK[current] and (e is None or e.mode_outcomes < rule.min_evidence):
        # Less checking than now: only once the current mode has shown min_evidence outcomes.
        kept: Mode = current if current in ("strict", "verify") else "strict"
        return Choice(kept, "settling", f)
    return Choice(best, "checked" if best == "strict" else "bound", f)


def _rare(f: Figures, e: FamilyEvidence | None, rare: FamilyEvidence | None, pooled: FamilyEvidence | None,
          rule: AdaptiveRule) -> Choice | None:
    """``verify`` for a family with too little evidence of its own, when the model's rare
    families as a class bound verify's degradation rate within the target and teaching them
    under verify pays; None otherwise. Never for a family whose own outcomes hold a
    degradation, and never ``audit``: a cheaper mode than verify needs a family's own evidence."""
    if rare is None or rare.outcomes < rule.min_evidence or (e is not None and e.degraded > 0):
        return None
    fr = figures(rare, pooled, rule)
    if candidate(fr, rule) == "strict" or value(fr, "verify", rule) - value(fr, "skip", rule) <= MARGIN:
        return None
    # The class's figures, reported as borrowed: the family's own outcomes are still its own.
    return Choice("verify", "rare", replace(fr, own=f.own, borrowed=fr.own, own_bad=f.own_bad))


def explore_rate(choice: Choice, rule: AdaptiveRule) -> float:
    """The share of a skipped family's calls taught under ``strict`` to keep measuring it."""
    return max(rule.explore, PRIOR_EXPLORE) if choice.why == "prior" else rule.explore


def _mode(e: FamilyEvidence | None) -> Mode:
    mode = e.mode if e is not None else None
    return mode if mode in _RISK else "strict"  # type: ignore[return-value]


def cost_shares(usage: UsageByRole) -> tuple[float, float] | None:
    """A call's (teaching, checking) cost as shares of its own baseline (the student alone):
    probe + teacher + guided, and the judge. Dollars when every call of it was priced, else
    tokens; None without a baseline to divide by."""
    base = usage.baseline
    if not base.calls:
        return None
    roles = (usage.probe, usage.teacher, usage.guided, usage.judge)
    priced = base.cost_usd is not None and base.cost_usd > 0 and all(
        u.cost_usd is not None for u in roles if u.calls)

    def amount(u: Usage) -> float:
        if not u.calls:
            return 0.0
        return float(u.cost_usd or 0.0) if priced else float(u.total_tokens)

    alone = amount(base)
    if alone <= 0:
        return None
    return (amount(usage.probe) + amount(usage.teacher) + amount(usage.guided)) / alone, amount(usage.judge) / alone
