"""The learned teaching gate and family guidance reuse (``learning/gate.py``).

Families are scripted: in ``help`` the guided answer is right and the student's own wrong,
in ``harm`` the reverse, in ``same`` both are right. The judge scores an answer 1 when it
states the right total, so each call's outcome is known in advance. Both drivers run every
``Atlas`` test (the ``call`` fixture); the state is process memory, or Redis when
``TEST_REDIS_URL`` is set (``scripts/ci-services.sh``; CI sets it).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from atlas_middleware._tenants import DEFAULT_TENANT
from atlas_middleware.learning.gate import (
    GateRule,
    TeachingGate,
    assess,
    gate_key,
    probabilities,
    should_close,
)
from atlas_middleware.learning.outcomes import outcome_of
from atlas_middleware.learning.posterior import beta_cdf
from atlas_middleware.learning.rebuild import replay
from atlas_middleware.report import AuditInfo, CallReport, Reason
from atlas_middleware.state.base import FamilyEvidence
from atlas_middleware.state.families import MemoryFamilies
from atlas_middleware.testing import teacher_reply
from atlas_middleware.usage import Usage

REDIS_URL = os.environ.get("TEST_REDIS_URL", "")
RIGHT, WRONG = "20 + 22 = 42. The answer is 42", "20 + 22 = 41. The answer is 41"
# The answer each family's student gives alone and with guidance.
FAMILIES = {"help": (WRONG, RIGHT), "harm": (RIGHT, WRONG), "same": (RIGHT, RIGHT)}


def is_right(messages: list[dict[str, Any]], answer: str) -> float:
    return 1.0 if "The answer is 42" in answer else 0.0


def _family(request: Any) -> str:
    text = str(request.messages[-1]["content"])
    return next(name for name in FAMILIES if text.startswith(name))


def _answer(guided: bool) -> Any:
    return lambda request: FAMILIES[_family(request)][guided]


STUDENT = {"baseline": _answer(False), "guided": _answer(True)}
TEACHER = {"teacher": teacher_reply("Carry the one.")}


def key(family: str, model: str = "student-model") -> str:
    return gate_key(model, family, DEFAULT_TENANT)


def ask(call: Any, atlas: Any, family: str, n: int = 1) -> list[CallReport]:
    return [call(atlas, messages=[{"role": "user", "content": f"{family}: what is 20 + 22?"}],
                 atlas={"task": family}).atlas for _ in range(n)]


GATED = {"gate": "learned", "judge": is_right, "gate_min_evidence": 10, "gate_min_gain": 0.2,
         "gate_explore": 0.0}


# -- the rule, on evidence -------------------------------------------------------------------

def _evidence(improved: float = 0, degraded: float = 0, unchanged: float = 0, closed: bool = False) -> FamilyEvidence:
    return FamilyEvidence(improved=improved, degraded=degraded, unchanged=unchanged, closed=closed)


def test_the_two_probabilities_are_the_posteriors_beta_marginals() -> None:
    scipy_special = pytest.importorskip("scipy.special")
    rule = GateRule(min_gain=0.1)
    for i, d, u in ((0, 0, 0), (3, 1, 10), (0.5, 7.25, 2), (40, 3, 150)):
        p_gain, p_effect = probabilities(_evidence(i, d, u), rule)
        assert p_gain == pytest.approx(1 - scipy_special.betainc(1 + i, 1 + d, 0.5), abs=1e-9)
        assert p_effect == pytest.approx(1 - scipy_special.betainc(1 + i, 2 + d + u, 0.1), abs=1e-9)
    # The Dirichlet's own P(pi > pd), by Monte Carlo, for one case: the marginal is right.
    import random

    rng, hits = random.Random(7), 0
    for _ in range(20000):
        gi, gd, gu = (rng.gammavariate(a, 1) for a in (1 + 3, 1 + 1, 1 + 10))
        hits += gi > gd
    assert hits / 20000 == pytest.approx(probabilities(_evidence(3, 1, 10), rule)[0], abs=0.01)


def test_min_evidence_then_harm_or_no_effect_closes_and_help_stays_open() -> None:
    rule = GateRule(min_evidence=10, min_gain=0.2)
    assert not should_close(_evidence(degraded=9), rule)  # too little evidence yet
    assert should_close(_evidence(degraded=10), rule)  # P(gain>0) = 0.5**11
    assert should_close(_evidence(unchanged=20), rule)  # P(improved > 0.2) = 0.8**22 < 0.05
    assert not should_close(_evidence(unchanged=8, improved=2), rule)  # 0.05 < P = 0.2 < 0.5
    assert not should_close(_evidence(improved=6, unchanged=6), rule)
    assert assess(_evidence(improved=3), rule).state == "learning"


def test_a_closed_family_reopens_only_past_the_reopen_threshold() -> None:
    rule = GateRule(min_evidence=5, threshold=0.05, reopen=0.3, min_gain=0.05)
    # p_gain between threshold and reopen: an open family stays open, a closed one stays closed.
    e = _evidence(improved=4, degraded=8)
    p_gain = 1 - beta_cdf(0.5, 5, 9)
    assert rule.threshold < p_gain < rule.reopen
    assert not should_close(e, rule) and should_close(FamilyEvidence(improved=4, degraded=8, closed=True), rule)
    assert not should_close(_evidence(improved=8, degraded=8, closed=True), rule)


def test_the_net_token_budget_closes_a_costly_family_without_measured_gain() -> None:
    rule = GateRule(min_evidence=5, min_gain=0.0, max_net_tokens=100)
    cheap = FamilyEvidence(improved=2, degraded=2, unchanged=6, net_tokens=500, net_calls=10)
    costly = FamilyEvidence(improved=2, degraded=2, unchanged=6, net_tokens=5000, net_calls=10)
    assert not should_close(cheap, rule) and should_close(costly, rule)
    paying = FamilyEvidence(improved=6, degraded=0, unchanged=4, net_tokens=5000, net_calls=10)
    assert not should_close(paying, rule)  # it costs, but it measurably helps


def test_evidence_fades_with_the_horizon() -> None:
    e = FamilyEvidence()
    for _ in range(1000):
        e = e.observed("unchanged", 10.0, 0.99)
    assert e.unchanged == pytest.approx(100, rel=1e-3)  # bounded by the horizon, 1 / (1 - 0.99)
    assert e.net_tokens / e.net_calls == pytest.approx(10.0)
    e = e.observed("improved", None, 0.99)
    assert e.improved == 1.0 and e.unchanged == pytest.approx(99, rel=1e-3) and e.net_calls == pytest.approx(100, rel=1e-3)


def _report(family: str, reason: Reason, policy: str = "strict", **kw: Any) -> CallReport:
    """A finished call that asked the teacher (``teacher_calls=0``: one served from a session)."""
    report = CallReport(student_model="s", policy=policy, task_family=family, reason=reason, **kw)
    report.usage.add("teacher", Usage(prompt_tokens=1, completion_tokens=1, calls=1))
    return report


F, G = gate_key("s", "f", DEFAULT_TENANT), gate_key("s", "g", DEFAULT_TENANT)


def test_scripted_outcomes_drive_the_gate_both_ways() -> None:
    """Closing on harm, then re-opening when the exploration calls show help."""
    gate = TeachingGate(MemoryFamilies(), GateRule(min_evidence=10, reopen=0.3, explore=0.0), learned=True, reuse=False,
                        audit_rate=0.1)
    for _ in range(10):  # discounted, ten outcomes weigh 9.78: still learning
        gate.observe(_report("f", Reason.JUDGE_BASELINE))
    assert gate.admit("s", "f", "c", "strict").info.state == "learning"  # type: ignore[union-attr]
    gate.observe(_report("f", Reason.JUDGE_BASELINE))
    blocked = gate.admit("s", "f", uuid.uuid4().hex, "strict")
    assert not blocked.teach and blocked.info is not None and blocked.info.state == "closed"
    held = False  # a step where P(gain>0) passed the threshold but not the reopen level
    for _ in range(30):
        gate.observe(_report("f", Reason.JUDGE_GUIDED))
        e = gate.store.get(F)
        assert e is not None
        a = assess(e, gate.rule)
        if not e.closed:
            break
        held = held or gate.rule.threshold < a.p_gain < gate.rule.reopen
    assert held and a.p_gain >= gate.rule.reopen and a.p_effect >= gate.rule.reopen
    assert gate.admit("s", "f", "c", "strict").info.state == "open"  # type: ignore[union-attr]


def test_only_unbiased_comparisons_are_counted() -> None:
    gate = TeachingGate(MemoryFamilies(), GateRule(), learned=True, reuse=False, audit_rate=0.1)
    gate.observe(_report("f", Reason.JUDGE_BASELINE, policy="verify"))  # after a failed grade: biased
    gate.observe(_report("f", Reason.AUDIT_UNCHECKED, policy="audit", audit=AuditInfo(sampled=False)))
    gate.observe(_report("f", Reason.NO_EVIDENCE))  # compared, nothing learnt
    gate.observe(_report("f", Reason.TEACHER_TIMEOUT))  # the breaker's business
    assert gate.store.get(F) is None
    gate.observe(_report("f", Reason.AUDIT_SAMPLED, policy="audit",
                         audit=AuditInfo(sampled=True, winner="baseline", degraded=True)))
    gate.observe(_report("f", Reason.STRONG_STUDENT))
    e = gate.store.get(F)
    assert e is not None and (e.improved, e.degraded, e.unchanged) == (0, pytest.approx(0.995), 1)
    # A strong-student audit call counts only when the audit's own coin would have chosen it.
    from atlas_middleware.teaching.flow import sampled

    ids = [uuid.uuid4().hex for _ in range(400)]
    for cid in ids:
        gate.observe(_report("g", Reason.STRONG_STUDENT, policy="audit", call_id=cid))
    counted = gate.store.get(G)
    assert counted is not None
    chosen = sum(sampled(c, 0.1) for c in ids)
    assert 10 < chosen < 80 and counted.unchanged == pytest.approx(sum(0.995 ** k for k in range(chosen)))


def test_outcome_table() -> None:
    cases = {Reason.AGREEMENT: "unchanged", Reason.JUDGE_TIE: "unchanged", Reason.JUDGE_GUIDED: "improved",
             Reason.JUDGE_BASELINE: "degraded", Reason.INVALID_TOOL_CALL: "degraded",
             Reason.NO_EVIDENCE: None, Reason.JUDGE_ERROR: None, Reason.VERIFIED: None,
             Reason.GUIDED_ERROR: None, Reason.STRONG_STUDENT: "unchanged"}
    for reason, want in cases.items():
        assert outcome_of(_report("f", reason)) == want, reason


# -- through Atlas: both drivers, memory and Redis ---------------------------------------------

def test_the_gate_closes_harm_and_no_effect_and_keeps_help(make_atlas, call, state) -> None:
    atlas, _, teacher = make_atlas(STUDENT, TEACHER, **GATED, **state)
    for family, want in (("harm", "closed"), ("same", "closed"), ("help", "open")):
        reports = ask(call, atlas, family, 24)
        states = [r.gate.state for r in reports if r.gate]
        assert states[0] == "learning"
        if want == "closed":
            first = next(i for i, r in enumerate(reports) if r.reason == Reason.GATE_SKIPPED)
            assert first <= 14, family  # harm: at 10 outcomes; same: P(improved > 0.2) < 0.05 at 12
            skipped = reports[first:]
            assert all(r.reason == Reason.GATE_SKIPPED and r.decision == "student_only" for r in skipped)
            assert all(r.usage.probe.calls == r.usage.teacher.calls == 0 for r in skipped)
        else:
            assert not any(r.reason == Reason.GATE_SKIPPED for r in reports)
            assert states[-1] == "open" and reports[-1].decision == "guided"


def test_exploration_keeps_measuring_a_closed_family_under_strict(make_atlas, call, state) -> None:
    # Under audit only the audit sample counts (every call here); harm closes the family ...
    atlas, *_ = make_atlas(STUDENT, TEACHER, **{**GATED, "gate_explore": 0.5, "policy": "audit", "audit_rate": 1.0},
                           **state)
    reports = ask(call, atlas, "harm", 40)
    closed = [r for r in reports if r.gate and r.gate.state == "closed"]
    explored = [r for r in closed if r.gate.explored]  # type: ignore[union-attr]
    skipped = [r for r in closed if r.reason == Reason.GATE_SKIPPED]
    assert closed and explored and skipped and len(explored) + len(skipped) == len(closed)
    # ... and an explored call ran as strict: compared before delivery, the baseline delivered.
    assert all(r.policy == "strict" and r.reason == Reason.JUDGE_BASELINE and r.decision == "baseline"
               for r in explored)


def test_verify_calls_are_measured_as_strict_at_the_audit_rate(make_atlas, call, state) -> None:
    atlas, *_ = make_atlas(STUDENT, TEACHER, **{**GATED, "policy": "verify", "audit_rate": 0.5}, **state)
    reports = ask(call, atlas, "help", 30)
    measured = [r for r in reports if r.gate and r.gate.measured]
    assert 5 <= len(measured) <= 25 and all(r.policy == "strict" for r in measured)
    assert all(r.policy == "verify" for r in reports if r not in measured)
    e = atlas.gate.store.get(key("t:help"))
    assert e is not None and e.improved == pytest.approx(sum(0.995 ** k for k in range(len(measured))))


def test_the_gate_is_rebuilt_from_the_ledger(make_atlas, call, tmp_path, state) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    atlas, *_ = make_atlas(STUDENT, TEACHER, ledger=ledger, **GATED)
    ask(call, atlas, "harm", 12)
    ask(call, atlas, "help", 12)
    live = atlas.gate.store.get(key("t:harm"))
    assert live is not None and live.closed
    atlas.close()
    again, _, teacher = make_atlas(STUDENT, TEACHER, ledger=ledger, **GATED, **state)
    rebuilt = again.gate.store.get(key("t:harm"))
    assert rebuilt is not None and rebuilt.closed and rebuilt.degraded == pytest.approx(live.degraded)
    (r,) = ask(call, again, "harm")
    assert r.reason == Reason.GATE_SKIPPED and not teacher.calls
    assert ask(call, again, "help")[0].decision == "guided"
    # The replay is the live rule: the same reports give the same evidence.
    records = [x.report() for x in again.ledger.records()]
    assert replay(records[:24], again.gate)[key("t:harm")] == live


def test_one_replica_rebuilds_a_shared_store(make_atlas, tmp_path) -> None:
    if not REDIS_URL:
        pytest.skip("TEST_REDIS_URL is not set")
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    prefix = f"atlas-test:{uuid.uuid4().hex}:"
    first, *_ = make_atlas(STUDENT, TEACHER, ledger=ledger, **GATED)
    for _ in range(12):
        first.completion(model="m", messages=[{"role": "user", "content": "harm: 20 + 22?"}], atlas={"task": "harm"})
    first.close()
    shared = {"state": REDIS_URL, "state_prefix": prefix}
    a, *_ = make_atlas(STUDENT, TEACHER, ledger=ledger, **GATED, **shared)
    b, *_ = make_atlas(STUDENT, TEACHER, ledger=ledger, **GATED, **shared)
    e = b.gate.store.get(key("t:harm", "m"))
    # eleven outcomes closed the family (the twelfth call was skipped), replayed once, not twice
    assert e is not None and e.closed and e.degraded == pytest.approx(sum(0.995 ** k for k in range(11)))
    assert a.gate.store.claim_rebuild() is False


# -- reuse ----------------------------------------------------------------------------------

def test_winning_guidance_is_reused_for_the_family_and_dropped_when_it_loses(make_atlas, call, state) -> None:
    atlas, student, teacher = make_atlas(STUDENT, TEACHER, judge=is_right, reuse="family", **state)
    first, second, third = ask(call, atlas, "help", 3)
    assert first.reused_from is None and first.reason == Reason.JUDGE_GUIDED
    assert second.reused_from == first.call_id and third.reused_from == first.call_id
    assert second.guidance_reused and second.guidance == "Carry the one."
    assert second.usage.teacher.calls == second.usage.probe.calls == 0
    assert [role for role, _ in teacher.calls].count("teacher") == 1  # two teacher calls avoided
    # The family's student changes: the reused guidance now loses once and is dropped.
    FAMILIES["help"] = (RIGHT, WRONG)
    try:
        lost, fresh = ask(call, atlas, "help", 2)
    finally:
        FAMILIES["help"] = (WRONG, RIGHT)
    assert lost.reused_from == first.call_id and lost.reason == Reason.JUDGE_BASELINE
    assert fresh.reused_from is None and fresh.usage.teacher.calls == 1
    # Unchanged or degraded fresh guidance is never kept.
    assert (atlas.gate.store.get(key("t:help")) or FamilyEvidence()).guidance is None
    ask(call, atlas, "same", 2)
    assert (atlas.gate.store.get(key("t:same")) or FamilyEvidence()).guidance is None


def test_a_drop_spares_a_newer_winner(state) -> None:
    from atlas_middleware.state import open_state

    shared = open_state(state.get("state", "memory"), prefix=state.get("state_prefix", "atlas:"), timeout=1.0)
    store = shared.families
    store.keep_guidance("f", "old", "call-1")
    store.keep_guidance("f", "new", "call-2")  # another replica's winner, meanwhile
    store.drop_guidance("f", "call-1")
    assert store.get("f").guidance == "new"  # type: ignore[union-attr]
    store.drop_guidance("f", "call-2")
    assert (store.get("f") or FamilyEvidence()).guidance is None
    assert shared.status().fallbacks == {}  # Redis served every operation itself
    shared.close()


def test_the_ledger_says_which_guidance_was_reused(make_atlas, call, tmp_path) -> None:
    atlas, *_ = make_atlas(STUDENT, TEACHER, judge=is_right, reuse="family",
                           ledger=f"sqlite:///{tmp_path / 'l.db'}", store_texts=True)
    first, second = ask(call, atlas, "help", 2)
    rows = {r.call_id: r.report() for r in atlas.ledger.records()}
    assert rows[second.call_id].reused_from == first.call_id
    assert rows[second.call_id].guidance == rows[first.call_id].guidance == "Carry the one."


def test_a_gate_failure_never_fails_the_call(make_atlas, call) -> None:
    atlas, *_ = make_atlas(STUDENT, TEACHER, **GATED)

    class Broken(MemoryFamilies):
        def observe(self, *a: Any, **k: Any) -> FamilyEvidence:
            raise RuntimeError("disk on fire")

    atlas.gate.store = Broken()
    (r,) = ask(call, atlas, "help")
    assert r.decision == "guided"


def test_settings_are_checked() -> None:
    from atlas_middleware.config import AtlasConfig
    from atlas_middleware.errors import ConfigError

    with pytest.raises(ConfigError, match="policy off makes none"):
        AtlasConfig.build({"gate": "learned", "policy": "off"})
    with pytest.raises(ConfigError, match=r"gate\.reopen"):
        AtlasConfig.build({"gate_threshold": 0.3, "gate_reopen": 0.1})
    with pytest.raises(ConfigError, match="gate"):
        AtlasConfig.build({"gate": "sometimes"})
    c = AtlasConfig.load(env={"ATLAS_GATE": "LEARNED", "ATLAS_REUSE": "family", "ATLAS_GATE_EXPLORE": "0.25"})
    assert (c.gate.mode, c.gate.reuse, c.gate.rule().explore) == ("learned", "family", 0.25)


def test_an_evaluation_teaches_the_gate_with_its_grades(tmp_path) -> None:
    """The judge here is wrong (it prefers the baseline's wrong answer); the gold answer says
    the guidance helped, and that is what the gate learns."""
    from atlas_middleware import Atlas
    from atlas_middleware.offline.eval import EvalSettings, Problem, evaluate
    from atlas_middleware.testing import ScriptedBackend

    problems = [Problem(id=f"q{i}", question=f"What is {i} + {i}?", answer=str(2 * i)) for i in range(1, 5)]
    student = ScriptedBackend({"probe": "I add.", "baseline": lambda r: "The answer is 999.",
                               "guided": lambda r: f"The answer is {2 * int(str(r.messages).split('What is ')[1][0])}."})
    atlas = Atlas(student_backend=student, teacher_backend=ScriptedBackend(TEACHER), ledger="none",
                  teacher="scripted-teacher", gate="learned", judge=lambda m, a: 1.0 if "999" in a else 0.0)
    try:
        evaluate(atlas, EvalSettings(dataset="gate", student="s", samples=2, concurrency=1), tmp_path,
                 problems=problems, progress=False, plots=False)
        from atlas_middleware.offline.eval.records import ResultsFile

        records = list(ResultsFile(tmp_path / "results.jsonl").records.values())
        assert len(records) == 8 and all(r.guided.correct and not r.alone.correct for r in records)
        (family,) = set(atlas.gate.store.snapshot())  # type: ignore[attr-defined]
        e = atlas.gate.store.get(family)
        assert e is not None and e.degraded == 0 and e.improved == pytest.approx(sum(0.995 ** k for k in range(8)))
        assert all(r.reason == "judge_preferred_baseline" for r in records)
    finally:
        atlas.close()


def test_a_call_that_does_not_learn_leaves_it_to_the_caller(make_atlas, call) -> None:
    atlas, *_ = make_atlas(STUDENT, TEACHER, **GATED)
    (r,) = [call(atlas, messages=[{"role": "user", "content": "harm: 20 + 22?"}],
                 atlas={"task": "harm", "learn": "false"}).atlas]
    assert r.reason == Reason.JUDGE_BASELINE and atlas.gate.store.get(key("t:harm")) is None
    atlas.learn(r, "improved")  # the caller knows better: a gold answer said the guidance helped
    e = atlas.gate.store.get(key("t:harm"))
    assert e is not None and (e.improved, e.degraded) == (1, 0)


def test_replicas_share_the_evidence_and_the_gate(make_atlas, call, state) -> None:
    """Two ``Atlas`` on one state: the outcomes of either close the family for both (with
    memory state, each replica is on its own)."""
    a, *_ = make_atlas(STUDENT, TEACHER, **GATED, **state)
    b, _, teacher_b = make_atlas(STUDENT, TEACHER, **GATED, **state)
    for _ in range(6):
        ask(call, a, "harm")
        ask(call, b, "harm")
    (r,) = ask(call, b, "harm")
    shared = bool(state)
    assert (r.reason == Reason.GATE_SKIPPED) is shared
    # shared: the 11th outcome of the two together closed it (and b's 6th call was skipped)
    counted = 11 if shared else 6
    assert r.gate is not None and r.gate.evidence == pytest.approx(sum(0.995 ** k for k in range(counted)), abs=0.01)


# -- what the review found -----------------------------------------------------------------

def test_evidence_is_per_student_model(make_atlas, call) -> None:
    """One template, two students: the one teaching harms is closed, the other still taught."""
    atlas, *_ = make_atlas(STUDENT, TEACHER, **GATED)
    for _ in range(14):
        call(atlas, model="strong", messages=[{"role": "user", "content": "harm: 20 + 22?"}], atlas={"task": "sum"})
    weak = call(atlas, model="weak", messages=[{"role": "user", "content": "help: 20 + 22?"}], atlas={"task": "sum"})
    assert weak.atlas.reason == Reason.JUDGE_GUIDED and weak.atlas.gate.state == "learning"
    strong = call(atlas, model="strong", messages=[{"role": "user", "content": "harm: 20 + 22?"}],
                  atlas={"task": "sum"})
    assert strong.atlas.reason == Reason.GATE_SKIPPED


def test_a_teacher_whose_work_is_never_usable_is_not_paid_for_ever(make_atlas, call) -> None:
    atlas, *_ = make_atlas(STUDENT, {"teacher": "I would rather not say."}, teacher_protocol="structured",
                           **GATED)
    reports = ask(call, atlas, "help", 20)
    assert reports[0].reason == Reason.TEACHER_UNPARSEABLE
    assert reports[-1].reason == Reason.GATE_SKIPPED  # nothing usable, at the price of probe and teacher


def test_session_steps_served_from_the_cache_are_one_sample(make_atlas, call) -> None:
    atlas, *_ = make_atlas(STUDENT, {"teacher": teacher_reply("", level=5)}, **GATED)
    for _ in range(15):
        call(atlas, messages=[{"role": "user", "content": "same: 20 + 22?"}],
             atlas={"task": "same", "session_id": "agent-1"})
    e = atlas.gate.store.get(key("t:same"))
    assert e is not None and e.unchanged == 1.0  # one diagnosis ("strong student"), fifteen steps


def test_learning_twice_from_one_call_counts_once(make_atlas, call) -> None:
    atlas, *_ = make_atlas(STUDENT, TEACHER, **GATED)
    (r,) = ask(call, atlas, "help")
    atlas.learn(r)
    atlas.learn(r, "improved")
    e = atlas.gate.store.get(key("t:help"))
    assert e is not None and e.improved == 1.0


def test_a_failing_gate_store_teaches_the_call(make_atlas, call, caplog) -> None:
    atlas, *_ = make_atlas(STUDENT, TEACHER, **GATED)

    class Broken(MemoryFamilies):
        def get(self, family: str) -> FamilyEvidence | None:
            raise RuntimeError("store on fire")

    atlas.gate.store = Broken()
    (r,) = ask(call, atlas, "help")
    assert r.decision == "guided" and r.gate is None
    assert "could not decide" in caplog.text


def test_the_rebuild_skips_calls_kept_from_learning(make_atlas, call, tmp_path) -> None:
    ledger = f"sqlite:///{tmp_path / 'l.db'}"
    atlas, *_ = make_atlas(STUDENT, TEACHER, ledger=ledger, **GATED)
    for _ in range(3):
        call(atlas, messages=[{"role": "user", "content": "harm: 20 + 22?"}], atlas={"task": "harm", "learn": False})
    ask(call, atlas, "harm", 2)
    atlas.close()
    again, *_ = make_atlas(STUDENT, TEACHER, ledger=ledger, **GATED)
    e = again.gate.store.get(key("t:harm"))
    assert e is not None and e.degraded == pytest.approx(1.995)


@pytest.mark.skipif(not REDIS_URL, reason="TEST_REDIS_URL is not set")
def test_a_failed_rebuild_gives_the_claim_back(make_atlas, tmp_path) -> None:
    from atlas_middleware.learning.rebuild import rebuild
    from atlas_middleware.ledger import open_ledger

    ledger = f"sqlite:///{tmp_path / 'l.db'}"
    first, *_ = make_atlas(STUDENT, TEACHER, ledger=ledger, **GATED)
    for _ in range(12):
        first.completion(model="m", messages=[{"role": "user", "content": "harm: 20 + 22?"}], atlas={"task": "harm"})
    first.close()
    shared = {"state": REDIS_URL, "state_prefix": f"atlas-test:{uuid.uuid4().hex}:", "gate_rebuild": 0}
    a, *_ = make_atlas(STUDENT, TEACHER, ledger=ledger, **GATED, **shared)

    class Unreadable:
        def records(self, query: Any = None) -> list[Any]:
            raise OSError("disk gone")

    with pytest.raises(OSError):
        rebuild(a.gate, Unreadable(), 5000)  # type: ignore[arg-type]
    assert rebuild(a.gate, open_ledger(ledger), 5000) == 12  # the claim was given back
    assert a.gate.store.get(key("t:harm", "m")).closed  # type: ignore[union-attr]
    assert rebuild(a.gate, open_ledger(ledger), 5000) == 0  # done: for good


@pytest.mark.skipif(not REDIS_URL, reason="TEST_REDIS_URL is not set")
def test_a_closed_family_stays_closed_while_redis_is_away(make_atlas, call) -> None:
    """Replica ``atlas`` only ever read the evidence another replica wrote; it keeps it."""
    prefix = f"atlas-test:{uuid.uuid4().hex}:"
    other, *_ = make_atlas(STUDENT, TEACHER, state=REDIS_URL, state_prefix=prefix, **GATED)
    ask(call, other, "harm", 12)
    atlas, *_ = make_atlas(STUDENT, TEACHER, state=REDIS_URL, state_prefix=prefix, **GATED)
    assert ask(call, atlas, "harm")[0].reason == Reason.GATE_SKIPPED

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Redis is away")

    families = atlas.state.primary.families
    for name in ("get", "observe", "set_closed", "keep_guidance", "drop_guidance"):
        setattr(families, name, down)
    later = ask(call, atlas, "harm", 3)
    assert all(r.reason == Reason.GATE_SKIPPED for r in later)
    assert atlas.state.status().degraded


def test_settings_that_would_never_learn_are_refused() -> None:
    from atlas_middleware.config import AtlasConfig
    from atlas_middleware.errors import ConfigError

    with pytest.raises(ConfigError, match=r"gate\.horizon"):
        AtlasConfig.build({"gate": "learned", "gate_horizon": 10, "gate_min_evidence": 10})
    with pytest.raises(ConfigError, match="audit_rate is 0"):
        AtlasConfig.build({"gate": "learned", "policy": "audit", "audit_rate": 0})
    AtlasConfig.build({"gate": "learned", "policy": "strict", "audit_rate": 0})  # strict counts every call
