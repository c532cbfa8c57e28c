"""The adaptive policy's rule, on evidence (``learning/adaptive.py``: pure, no I/O)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from atlas_middleware.config import AtlasConfig
from atlas_middleware.errors import ConfigError
from atlas_middleware.learning.adaptive import (
    MARGIN,
    MAX_MISS,
    PRIOR_EXPLORE,
    AdaptiveRule,
    candidate,
    choose,
    cost_shares,
    explore_rate,
    figures,
    judge_misses,
    prospect,
    value,
)
from atlas_middleware.learning.posterior import beta_quantile
from atlas_middleware.state.base import FamilyEvidence
from atlas_middleware.usage import Usage, UsageByRole

RULE = AdaptiveRule(min_evidence=20, prior_weight=0.0, gain_per_cost=0.0)


def ev(improved: float = 0, degraded: float = 0, unchanged: float = 0, *, judged: float = 0, undecided: float = 0,
       mode: str | None = None, mode_outcomes: float | None = None, teach: float = 0, check: float = 0,
       cost_calls: float = 0) -> FamilyEvidence:
    n = improved + degraded + unchanged
    return FamilyEvidence(improved=improved, degraded=degraded, unchanged=unchanged, judged=judged,
                          undecided=undecided, mode=mode, mode_outcomes=n if mode_outcomes is None else mode_outcomes,
                          cost_teach=teach * cost_calls, cost_check=check * cost_calls, cost_calls=cost_calls)


def test_a_new_family_learns_under_strict_and_assumes_the_worst_judge() -> None:
    choice = choose(None, None, RULE)
    assert (choice.mode, choice.why) == ("strict", "learning")
    f = choice.figures
    assert f.own == 0 and f.borrowed == 0 and f.judge_miss == MAX_MISS  # no judged comparison yet
    assert f.degradation == pytest.approx(0.95, abs=1e-6)  # Beta(1, 1)'s 95% quantile
    # 19 clean outcomes of its own are still too few, whatever the bound says.
    assert choose(ev(unchanged=19), None, RULE).why == "learning"


def test_the_judge_misses_come_from_the_upper_bound_of_its_disagreements() -> None:
    e = ev(judged=200, undecided=20)
    upper = beta_quantile(0.95, 1 + 20, 1 + 180)
    pair, one = judge_misses(e, FamilyEvidence(), RULE)
    assert pair == pytest.approx(2 * upper) and one == pytest.approx(1.5 * upper)  # factor 2: w <= x
    assert judge_misses(ev(judged=5000), FamilyEvidence(), RULE) == (0.1, 0.1)  # never below the floor
    assert judge_misses(ev(judged=10, undecided=8), FamilyEvidence(), RULE) == (MAX_MISS, MAX_MISS)
    factor3 = AdaptiveRule(judge_miss_factor=3.0, prior_weight=0.0)
    assert judge_misses(e, FamilyEvidence(), factor3)[0] == pytest.approx(3 * upper)


def test_observed_degradations_are_inflated_by_the_miss_rate_before_the_bound() -> None:
    e = ev(improved=100, degraded=3, unchanged=297, judged=100, undecided=10)
    f = figures(e, None, RULE)
    bad = 3 / (1 - f.judge_miss)
    assert f.degradation == pytest.approx(beta_quantile(0.95, 1 + bad, 1 + 400 - bad))
    # The same counts read by a judge that never disagrees: a smaller miss, a lower bound.
    assert figures(ev(improved=100, degraded=3, unchanged=297, judged=100), None, RULE).degradation < f.degradation
    assert f.gain == pytest.approx((100 - 3) / 403)


def test_graded_degradations_are_counted_as_they_are_and_judged_ones_inflated() -> None:
    judged = ev(improved=300, degraded=4, unchanged=696, judged=600, undecided=60)
    f = figures(judged, None, RULE)
    assert f.bad == pytest.approx(4 / (1 - f.judge_miss)) and f.judge_miss > 0.1
    graded = FamilyEvidence(improved=300, degraded=4, unchanged=696, judged=600, undecided=60, graded=1000,
                            graded_degraded=4)
    g = figures(graded, None, RULE)
    assert g.bad == pytest.approx(4) and g.own_bad == pytest.approx(4) and g.degradation < f.degradation
    half = FamilyEvidence(improved=300, degraded=4, unchanged=696, judged=600, undecided=60, graded=500,
                          graded_degraded=1)
    assert figures(half, None, RULE).bad == pytest.approx(3 / (1 - f.judge_miss) + 1)
    # Gold answers can certify audit where the same counts read from a judge cannot.
    judged_only = ev(improved=300, degraded=4, unchanged=696, judged=800, undecided=80, mode="verify")
    assert candidate(figures(judged_only, None, RULE), RULE) != "audit"
    gold = replace(judged_only, graded=1000, graded_degraded=4)
    assert candidate(figures(gold, None, RULE), RULE) == "audit"


def test_graded_outcomes_are_kept_apart_and_fade_like_the_others() -> None:
    e = FamilyEvidence().observed("degraded", None, 0.5, graded=True).observed("degraded", None, 0.5)
    assert (e.degraded, e.graded, e.graded_degraded) == (1.5, 0.5, 0.5)
    e = e.observed("improved", None, 0.5, graded=True).observed(None, 10.0, 0.5)  # no outcome: nothing fades
    assert (e.graded, e.graded_degraded, e.improved) == (1.25, 0.25, 1.0)


def test_the_candidate_is_the_cheapest_mode_whose_bound_meets_the_target() -> None:
    clean = figures(ev(unchanged=600, judged=400), None, RULE)  # bound ~0.5%
    assert clean.degradation <= 0.01 and candidate(clean, RULE) == "audit"
    some = figures(ev(improved=100, degraded=6, unchanged=300, judged=400), None, RULE)
    assert some.degradation > 0.01 and some.degradation * some.grade_miss <= 0.01 and candidate(some, RULE) == "verify"
    bad = figures(ev(improved=100, degraded=30, unchanged=300, judged=400), None, RULE)
    assert candidate(bad, RULE) == "strict"
    # A stricter target moves the same evidence up the ladder.
    assert candidate(clean, AdaptiveRule(ndr_target=0.999, prior_weight=0.0)) == "verify"
    assert candidate(clean, AdaptiveRule(ndr_target=0.9999, prior_weight=0.0)) == "strict"


def test_a_cheaper_mode_waits_for_min_evidence_in_the_current_one() -> None:
    settling = choose(ev(unchanged=600, judged=400, mode="strict", mode_outcomes=19), None, RULE)
    assert (settling.mode, settling.why) == ("strict", "settling")
    moved = choose(ev(unchanged=600, judged=400, mode="strict", mode_outcomes=20), None, RULE)
    assert (moved.mode, moved.why) == ("audit", "bound")
    # From verify, settling keeps verify (not all the way back to strict).
    assert choose(ev(unchanged=600, judged=400, mode="verify", mode_outcomes=3), None, RULE).mode == "verify"


def test_a_move_to_more_checking_is_immediate() -> None:
    worse = ev(improved=100, degraded=6, unchanged=300, judged=400, mode="audit", mode_outcomes=0)
    assert choose(worse, None, RULE).mode == "verify"
    worst = ev(improved=100, degraded=30, unchanged=300, judged=400, mode="audit", mode_outcomes=0)
    assert (choose(worst, None, RULE).mode, choose(worst, None, RULE).why) == ("strict", "checked")


def test_teaching_that_does_not_pay_is_skipped_with_hysteresis() -> None:
    rule = AdaptiveRule(min_evidence=20, prior_weight=0.0, gain_per_cost=0.1)
    harmful = ev(improved=5, degraded=30, unchanged=65, judged=40)
    assert (choose(harmful, None, rule).mode, choose(harmful, None, rule).why) == ("skip", "no_gain")
    # Costly teaching (guided answers longer than the student's own): a gain of 5% does not
    # pay for verify at 1.85x the student alone, and audit (1.31x) would save nothing ...
    costly = ev(improved=5, degraded=0, unchanged=95, judged=20, teach=1.2, check=0.1, cost_calls=50)
    f = figures(costly, None, rule)
    assert f.cost("strict") == pytest.approx(2.3) and f.cost("verify") == pytest.approx(1.85)
    assert value(f, candidate(f, rule), rule) < value(f, "skip", rule) - MARGIN
    assert not prospect(f, rule) and not prospect(f, rule, "verify")
    assert choose(costly, None, rule).mode == "skip"
    # ... but shorter guided answers make teaching save money: then any gain pays.
    cheap = ev(improved=5, degraded=0, unchanged=95, judged=20, teach=0.5, check=0.1, cost_calls=50)
    assert choose(cheap, None, rule).mode in ("strict", "verify")
    # Hysteresis: between -MARGIN and +MARGIN a family keeps its state.
    edge = ev(improved=2, degraded=2, unchanged=96, judged=4, teach=0.1, check=0.0, cost_calls=50)
    g = figures(edge, None, rule)
    diff = value(g, candidate(g, rule), rule) - value(g, "skip", rule)
    assert abs(diff) < MARGIN
    assert choose(edge, None, rule).mode != "skip"
    assert choose(FamilyEvidence(**{**edge.__dict__, "mode": "skip"}), None, rule).mode == "skip"


def test_a_family_whose_audit_would_cost_less_than_skipping_is_learned_under_strict() -> None:
    rule = AdaptiveRule(min_evidence=20, prior_weight=0.0, gain_per_cost=0.1)
    # Guided answers as right as the student's own and 40% shorter: strict costs 1.6x for no
    # gain, so the value rule alone would skip; audit would cost 0.7x once the bound admits it.
    short = ev(unchanged=40, teach=0.6, cost_calls=40, mode="strict")
    f = figures(short, None, rule)
    assert candidate(f, rule) == "strict" and value(f, "strict", rule) < value(f, "skip", rule) - MARGIN
    assert f.cost("audit") < f.cost("skip") and prospect(f, rule)
    assert (choose(short, None, rule).mode, choose(short, None, rule).why) == ("strict", "prospect")
    # From skip too: the family is taught again, under strict, to learn.
    assert choose(ev(unchanged=40, teach=0.6, cost_calls=40, mode="skip"), None, rule).mode == "strict"
    # Audit would save a twentieth of a student call: less than the margin (0.01 of value at
    # gain_per_cost 0.1), not worth the learning. Nor are guided answers as long as the
    # student's own, where audit would save nothing. Skipped.
    slightly = ev(unchanged=40, teach=0.85, cost_calls=40, mode="strict")
    assert not prospect(figures(slightly, None, rule), rule) and choose(slightly, None, rule).mode == "skip"
    long = ev(unchanged=40, teach=1.0, cost_calls=40, mode="strict")
    assert not prospect(figures(long, None, rule), rule)
    assert (choose(long, None, rule).mode, choose(long, None, rule).why) == ("skip", "no_gain")
    # Degradations at a rate the bound could not get under the target within a horizon: skipped.
    risky = ev(improved=2, degraded=2, unchanged=36, judged=10, teach=0.6, cost_calls=40, mode="strict")
    assert not prospect(figures(risky, None, rule), rule) and choose(risky, None, rule).mode == "skip"
    # No gain_per_cost: money saved is worth nothing, so no learning is bought for it.
    free = AdaptiveRule(min_evidence=20, prior_weight=0.0, gain_per_cost=0.0)
    assert not prospect(figures(short, None, free), free)


def test_a_prospect_never_buys_a_cheaper_mode_and_skips_the_verify_detour() -> None:
    rule = AdaptiveRule(min_evidence=20, prior_weight=0.0, gain_per_cost=0.1)
    # verify is admissible (a judge that never disagrees: misses at the floor), at 1.1x; audit
    # would cost 0.7x, and strict measures every call where verify measures a tenth of them.
    e = ev(unchanged=150, judged=150, teach=0.6, cost_calls=150, mode="strict")
    f = figures(e, None, rule)
    assert candidate(f, rule) == "verify" and value(f, "verify", rule) - value(f, "skip", rule) > -MARGIN
    assert prospect(f, rule, "verify")
    assert (choose(e, None, rule).mode, choose(e, None, rule).why) == ("strict", "prospect")
    # Even where verify pays against skipping (teaching nearly free), the way to audit is strict.
    cheap = ev(unchanged=150, judged=150, teach=0.1, cost_calls=150, mode="strict")
    g = figures(cheap, None, rule)
    assert candidate(g, rule) == "verify" and value(g, "verify", rule) > value(g, "skip", rule)
    assert choose(cheap, None, rule).mode == "strict"
    # A family whose own degradations keep audit out of reach stays in verify.
    helps = ev(improved=60, degraded=5, unchanged=400, judged=400, teach=0.6, cost_calls=400, mode="strict")
    assert candidate(figures(helps, None, rule), rule) == "verify" and not prospect(figures(helps, None, rule), rule,
                                                                                       "verify")
    assert choose(helps, None, rule).mode == "verify"
    # Once the bound admits audit, the family moves there the usual way ...
    done = ev(unchanged=400, judged=400, teach=0.6, cost_calls=400, mode="strict")
    assert (choose(done, None, rule).mode, choose(done, None, rule).why) == ("audit", "bound")
    # ... and never before: a prospect's mode is strict, whatever the projection says.
    early = ev(unchanged=25, teach=0.6, cost_calls=25, mode="strict")
    assert figures(early, None, rule).degradation > rule.tolerance and choose(early, None, rule).mode == "strict"


def test_the_prior_is_borrowed_only_towards_the_safe_side() -> None:
    rule = AdaptiveRule(min_evidence=20, prior_weight=10.0, gain_per_cost=0.1)
    glowing = ev(improved=3000, unchanged=7000, judged=3000, teach=0.3, cost_calls=5000)  # other families
    few = ev(improved=5, unchanged=10, judged=5)
    choice = choose(few, glowing, rule)
    assert (choice.mode, choice.why) == ("strict", "learning")  # never a cheaper mode on borrowed evidence
    assert choice.figures.borrowed == pytest.approx(10.0)  # prior_weight pseudo-calls, not 10,000
    # Teaching does not pay for this student's families: a new family starts skipped, and is
    # explored more than a family skipped on its own evidence.
    futile = ev(improved=100, degraded=150, unchanged=9750, judged=300, teach=1.0, check=0.1, cost_calls=5000)
    skipped = choose(None, futile, rule)
    assert (skipped.mode, skipped.why) == ("skip", "prior")
    assert explore_rate(skipped, rule) == max(rule.explore, PRIOR_EXPLORE) > rule.explore
    # A prior with too little behind it says nothing.
    assert choose(None, ev(degraded=5, unchanged=5), rule).mode == "strict"


def test_a_rare_family_borrows_verify_from_its_models_rare_families_as_a_class() -> None:
    rule = AdaptiveRule(min_evidence=20, prior_weight=0.0, gain_per_cost=0.1)
    rare = ev(improved=300, degraded=2, unchanged=700, judged=600, undecided=12, teach=0.8, check=0.05,
              cost_calls=1000)
    few = ev(improved=2, unchanged=3, judged=2)
    choice = choose(few, None, rule, rare=rare)
    assert (choice.mode, choice.why) == ("verify", "rare")
    assert choice.figures.own == 5 and choice.figures.borrowed == pytest.approx(rare.outcomes)
    assert choice.figures.degradation == figures(rare, None, rule).degradation  # the class's bound
    # Never audit on the class's evidence, however clean it is.
    spotless = ev(improved=3000, unchanged=7000, judged=6000, teach=0.5, cost_calls=5000)
    assert candidate(figures(spotless, None, rule), rule) == "audit"
    assert choose(few, None, rule, rare=spotless).mode == "verify"
    # A family whose own outcomes hold a degradation learns under strict.
    assert choose(ev(improved=2, degraded=1, unchanged=2), None, rule, rare=rare).why == "learning"
    # A class that degrades too often, or has too little behind it, lends nothing.
    harmful = ev(improved=300, degraded=120, unchanged=580, judged=600, undecided=12, teach=0.8, cost_calls=1000)
    assert choose(few, None, rule, rare=harmful).why == "learning"
    assert choose(few, None, rule, rare=ev(improved=5, unchanged=14, judged=5)).why == "learning"
    # A class whose teaching does not pay for verify's checking: the prior decides, as before.
    dear = ev(improved=10, degraded=0, unchanged=990, judged=600, teach=1.5, check=0.1, cost_calls=1000)
    assert choose(few, None, rule, rare=dear).why == "learning"
    # Once a family has min_evidence outcomes of its own, its own evidence decides.
    assert choose(ev(improved=10, unchanged=15, judged=10), None, rule, rare=rare).why != "rare"


def test_a_down_state_serves_strict_whatever_the_evidence() -> None:
    best = ev(unchanged=600, judged=400, mode="audit", mode_outcomes=100)
    assert choose(best, None, RULE).mode == "audit"
    down = choose(best, None, RULE, state_available=False)
    assert (down.mode, down.why) == ("strict", "state_unavailable")


def test_cost_shares_are_dollars_when_every_call_is_priced_else_tokens() -> None:
    usage = UsageByRole()
    usage.add("probe", Usage(prompt_tokens=100, completion_tokens=10, calls=1, cost_usd=0.0002))
    usage.add("teacher", Usage(prompt_tokens=300, completion_tokens=300, calls=1, cost_usd=0.00006))
    usage.add("guided", Usage(prompt_tokens=200, completion_tokens=400, calls=1, cost_usd=0.0045))
    usage.add("baseline", Usage(prompt_tokens=100, completion_tokens=900, calls=1, cost_usd=0.00925))
    usage.add("judge", Usage(prompt_tokens=1500, completion_tokens=300, calls=2, cost_usd=0.00018))
    teach, check = cost_shares(usage)  # type: ignore[misc]
    assert teach == pytest.approx((0.0002 + 0.00006 + 0.0045) / 0.00925)
    assert check == pytest.approx(0.00018 / 0.00925)
    usage.teacher = Usage(prompt_tokens=300, completion_tokens=300, calls=1, cost_usd=None)  # unpriced
    teach, check = cost_shares(usage)  # type: ignore[misc]
    assert teach == pytest.approx((110 + 600 + 600) / 1000) and check == pytest.approx(1.8)
    assert cost_shares(UsageByRole()) is None  # no baseline: nothing to divide by


def test_evidence_observed_with_a_judge_and_costs_fades_like_the_outcomes() -> None:
    e = FamilyEvidence()
    for k in range(100):
        e = e.observed("unchanged" if k % 2 else None, None, 0.99, judge="undecided" if k % 4 == 0 else "decided",
                       cost=(0.5, 0.1))
    assert e.judged == pytest.approx(sum(0.99 ** k for k in range(100)))
    assert e.cost_teach / e.cost_calls == pytest.approx(0.5) and e.cost_check / e.cost_calls == pytest.approx(0.1)
    assert e.mode_outcomes == 50 and 0.2 < e.undecided / e.judged < 0.3


# -- configuration ----------------------------------------------------------------------------

def test_adaptive_is_the_default_and_its_settings_are_one_nested_object() -> None:
    config = AtlasConfig.load(env={})
    assert config.policy == "adaptive" and config.loop_settings().policy == "strict"
    assert config.adaptive.rule() == AdaptiveRule()
    env = {"ATLAS_ADAPTIVE_NDR_TARGET": "0.995", "ATLAS_ADAPTIVE": '{"credibility": 0.9, "explore": 0.0}'}
    loaded = AtlasConfig.load(env=env)
    assert (loaded.adaptive.ndr_target, loaded.adaptive.credibility, loaded.adaptive.explore) == (0.995, 0.9, 0.0)
    assert AtlasConfig.load(env={}, adaptive={"min_evidence": 5}).adaptive.min_evidence == 5


@pytest.mark.parametrize("target", [0.4, 1.0, 0.99999, "high"])
def test_an_ndr_target_outside_its_range_is_refused_naming_the_field(target: object) -> None:
    with pytest.raises(ConfigError, match=r"adaptive\.ndr_target"):
        AtlasConfig.load(env={}, adaptive={"ndr_target": target})
    with pytest.raises(ConfigError, match=r"adaptive\.ndr_target"):
        AtlasConfig.load(env={"ATLAS_ADAPTIVE_NDR_TARGET": str(target)})


def test_the_other_adaptive_settings_are_checked_at_start() -> None:
    for bad in ({"credibility": 1.0}, {"audit_rate": 0}, {"horizon": 10, "min_evidence": 20}, {"unknown": 1},
                {"judge_miss_factor": 0.5}):
        with pytest.raises(ConfigError, match="adaptive"):
            AtlasConfig.load(env={}, adaptive=bad)


def test_the_learned_gate_keeps_its_meaning_and_is_refused_with_adaptive() -> None:
    assert AtlasConfig.load(env={}, gate="learned").policy == "strict"  # as before adaptive was the default
    assert AtlasConfig.load(env={"ATLAS_GATE": "learned"}).policy == "strict"
    with pytest.raises(ConfigError, match="gate: learned is for an explicit policy"):
        AtlasConfig.load(env={}, gate="learned", policy="adaptive")
