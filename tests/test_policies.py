"""Every policy, shortcut and fallback, through both drivers (threads and asyncio)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from conftest import QUESTION

from atlas_middleware import ChatRequest, Reason
from atlas_middleware.testing import PairwiseJudge, Reply, judged_answers, teacher_reply
from atlas_middleware.testing.scripted import words


class StudentDown(Exception):
    """Stands in for a provider's own exception type (e.g. litellm.RateLimitError)."""

    status_code = 400  # not transient: never retried


def content(resp: Any) -> str:
    return resp.choices[0].message.content


# -- strict ---------------------------------------------------------------------------------


def test_strict_agreement_delivers_cheaper_without_judge(make_atlas, call) -> None:
    atlas, student, teacher = make_atlas(student={"guided": "The answer is 41"}, policy="strict", judge="teacher")
    resp = call(atlas)
    r = resp.atlas
    assert r.decision == "guided" and r.reason == Reason.AGREEMENT
    assert content(resp) == "The answer is 41"
    assert "judge_pair" not in teacher.roles()
    assert sorted(student.roles()) == ["baseline", "guided", "probe"]


def test_strict_agreement_prefers_baseline_when_not_cheaper(make_atlas, call) -> None:
    atlas, *_ = make_atlas(student={"guided": "Let me think carefully here. 20 + 22 = 41. The answer is 41"})
    r = call(atlas).atlas
    assert (r.decision, r.reason) == ("baseline", Reason.AGREEMENT)
    assert r.tokens_saved == 0


def test_strict_answer_judge_keeps_baseline_when_answers_differ_and_says_no_evidence(make_atlas, call) -> None:
    atlas, *_ = make_atlas(judge="answer")
    resp = call(atlas)
    # no judgment was made: not "judge_preferred_baseline"
    assert (resp.atlas.decision, resp.atlas.reason) == ("baseline", Reason.NO_EVIDENCE)
    assert resp.atlas.judge is not None and resp.atlas.judge.winner == "undecided"
    assert content(resp).endswith("41")


@pytest.mark.parametrize("judge", ["answer", "auto"])
def test_strict_prefers_complete_guided_over_truncated_baseline(make_atlas, call, judge) -> None:
    atlas, _, teacher = make_atlas(student={"baseline": Reply("20 plus 22 is", finish_reason="length")}, judge=judge)
    resp = call(atlas)
    assert (resp.atlas.decision, resp.atlas.reason) == ("guided", Reason.JUDGE_GUIDED)
    assert "judge_pair" not in teacher.roles()  # no model call needed to see a cut-off answer


def test_default_judge_is_the_teacher_and_lets_a_better_guided_answer_through(make_atlas, call) -> None:
    right = PairwiseJudge(is_right=lambda answer: answer.rstrip().endswith("42"))
    atlas, _, teacher = make_atlas(teacher={"judge_pair": right})
    resp = call(atlas)
    assert (resp.atlas.decision, resp.atlas.reason) == ("guided", Reason.JUDGE_GUIDED)
    assert content(resp).endswith("42") and teacher.roles().count("judge_pair") == 2
    assert resp.atlas.judge is not None and resp.atlas.judge.name == "teacher"


def test_default_judge_keeps_the_baseline_when_guidance_made_it_worse(make_atlas, call) -> None:
    right = PairwiseJudge(is_right=lambda answer: answer.rstrip().endswith("41"))  # here 41 is right
    atlas, *_ = make_atlas(teacher={"judge_pair": right})
    resp = call(atlas)
    assert (resp.atlas.decision, resp.atlas.reason) == ("baseline", Reason.JUDGE_BASELINE)
    assert content(resp).endswith("41")


@pytest.mark.parametrize(
    ("prefers", "decision", "reason"),
    [
        ("guided", "guided", Reason.JUDGE_GUIDED),  # guided wins in both orders
        ("baseline", "baseline", Reason.JUDGE_BASELINE),
        ("TIE", "guided", Reason.JUDGE_TIE),  # a tie in both orders: the cheaper (guided is shorter)
        ("A", "baseline", Reason.NO_EVIDENCE),  # position bias: no evidence, the baseline
    ],
)
def test_strict_teacher_judge_is_position_debiased(make_atlas, call, prefers, decision, reason) -> None:
    # The two orders are judged at once, so the scripted judge reads which answer sits in
    # position A (its call order is the thread pool's) and names the one it prefers.
    def judge(req: ChatRequest) -> str:
        a_is_guided = judged_answers(req)["A"].startswith("The answer is 42")
        if prefers in ("A", "TIE"):
            return f"<verdict>{prefers}</verdict>"
        return "<verdict>A</verdict>" if a_is_guided == (prefers == "guided") else "<verdict>B</verdict>"

    atlas, student, teacher = make_atlas(
        student={"guided": "The answer is 42"}, teacher={"judge_pair": judge}, judge="teacher"
    )
    r = call(atlas).atlas
    assert (r.decision, r.reason) == (decision, reason)
    assert teacher.roles().count("judge_pair") == 2
    assert r.usage.judge.calls == 2


def test_strict_garbage_judge_means_baseline(make_atlas, call) -> None:
    atlas, *_ = make_atlas(teacher={"judge_pair": "I like both!"}, judge="teacher")
    r = call(atlas).atlas
    assert (r.decision, r.reason) == ("baseline", Reason.JUDGE_ERROR)
    assert any(e.role == "judge" for e in r.errors)


def _score_42(messages: list[dict[str, Any]], answer: str) -> float:
    return 1.0 if "42" in answer else 0.0


def _broken(messages: list[dict[str, Any]], answer: str) -> float:
    raise RuntimeError("judge crashed")


@pytest.mark.parametrize(
    ("judge", "decision", "reason"),
    [
        (_score_42, "guided", Reason.JUDGE_GUIDED),
        (_broken, "baseline", Reason.JUDGE_ERROR),
        (lambda m, a: math.nan, "baseline", Reason.JUDGE_ERROR),
        (lambda m, a: "high", "baseline", Reason.JUDGE_ERROR),
        (lambda m, a: 0.5, "baseline", Reason.JUDGE_TIE),  # tie, equal length: the baseline
    ],
)
def test_strict_callable_judges(make_atlas, call, judge, decision, reason) -> None:
    atlas, *_ = make_atlas(judge=judge)
    r = call(atlas).atlas
    assert (r.decision, r.reason) == (decision, reason)


def test_judge_by_import_path(make_atlas, call) -> None:
    atlas, *_ = make_atlas(judge="tests_support_judges:prefers_42")
    r = call(atlas).atlas
    assert (r.decision, r.reason) == ("guided", Reason.JUDGE_GUIDED)
    assert r.judge is not None and r.judge.scores == {"guided": 1.0, "baseline": 0.0}


# -- verify, audit, off ---------------------------------------------------------------------


def test_verify_passing_answer_needs_no_baseline(make_atlas, call) -> None:
    atlas, student, _ = make_atlas(policy="verify", judge=_score_42)
    r = call(atlas).atlas
    assert (r.decision, r.reason) == ("guided", Reason.VERIFIED)
    assert "baseline" not in student.roles()
    assert r.tokens_saved is None and r.net_tokens is None  # no counterfactual measured


def test_verify_failing_answer_runs_baseline_and_picks_better(make_atlas, call) -> None:
    atlas, student, _ = make_atlas(policy="verify", judge=lambda m, a: 1.0 if "41" in a else 0.0)
    r = call(atlas).atlas
    assert (r.decision, r.reason) == ("baseline", Reason.JUDGE_BASELINE)
    assert student.roles().count("baseline") == 1


@pytest.mark.parametrize(
    ("judge", "winner", "degraded"),
    [("teacher", "baseline", True), ("answer", None, None)],  # the answer judge cannot tell: unknown
)
def test_audit_samples_in_background(make_atlas, call, judge, winner, degraded) -> None:
    baseline_right = PairwiseJudge(is_right=lambda answer: answer.rstrip().endswith("41"))
    atlas, student, _ = make_atlas(policy="audit", audit_rate=1.0, judge=judge, ledger="sqlite:///:memory:",
                                   teacher={"judge_pair": baseline_right})
    resp = call(atlas)
    assert (resp.atlas.decision, resp.atlas.reason) == ("guided", Reason.AUDIT_SAMPLED)
    assert content(resp).endswith("42")
    assert student.roles().count("baseline") == 1  # run after delivery
    (row,) = atlas.ledger.records()
    audit = row.report().audit
    assert audit is not None and audit.sampled and (audit.winner, audit.degraded) == (winner, degraded)


def test_audit_unsampled_makes_no_baseline(make_atlas, call) -> None:
    atlas, student, _ = make_atlas(policy="audit", audit_rate=0.0)
    r = call(atlas).atlas
    assert r.reason == Reason.AUDIT_UNCHECKED and "baseline" not in student.roles()


def test_off_delivers_guided(make_atlas, call) -> None:
    atlas, student, _ = make_atlas(policy="off")
    resp = call(atlas)
    assert (resp.atlas.decision, resp.atlas.reason) == ("guided", Reason.POLICY_OFF)
    assert "baseline" not in student.roles()


def test_per_call_policy_override_and_opt_out(make_atlas, call) -> None:
    atlas, student, teacher = make_atlas(policy="strict")
    r = call(atlas, atlas={"policy": "off"}).atlas
    assert r.policy == "strict" or r.reason == Reason.POLICY_OFF
    assert r.reason == Reason.POLICY_OFF
    student.calls.clear()
    teacher.calls.clear()
    r = call(atlas, metadata={"atlas": {"teach": False}}).atlas
    assert (r.decision, r.reason) == ("student_only", Reason.OPTED_OUT)
    assert student.roles() == ["baseline"] and teacher.roles() == []


# -- fail-open ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["strict", "verify", "audit", "off"])
def test_teacher_timeout_delivers_student_answer(make_atlas, call, policy) -> None:
    atlas, student, _ = make_atlas(policy=policy, teacher_delays={"teacher": 5.0}, teacher_timeout=0.3)
    resp = call(atlas)
    r = resp.atlas
    assert (r.decision, r.reason) == ("student_only", Reason.TEACHER_TIMEOUT)
    assert content(resp).endswith("41")
    assert r.latency_ms["total"] < 2000
    assert "guided" not in student.roles()


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        (ConnectionError("teacher down"), Reason.TEACHER_ERROR),
        # A provider's own timeout (openai's APITimeoutError, LiteLLM's Timeout) is not a
        # TimeoutError, and may fire just before the driver's deadline: still a timeout.
        (type("APITimeoutError", (Exception,), {})("read timed out"), Reason.TEACHER_TIMEOUT),
        ("I refuse to use your format.", Reason.TEACHER_UNPARSEABLE),
        ("", Reason.TEACHER_UNPARSEABLE),
        (teacher_reply("The answer is 42."), Reason.GUIDANCE_LEAKS_ANSWER),  # nothing left once stripped
        ("<think>still thinking when the cap", Reason.TEACHER_UNPARSEABLE),
        (Reply("<think>still thinking when the cap", finish_reason="length"), Reason.TEACHER_TRUNCATED),
        (teacher_reply("Looks right.", level=5), Reason.STRONG_STUDENT),
        (teacher_reply("", level=3), Reason.NO_GUIDANCE),
    ],
)
def test_teacher_failures_fall_back(make_atlas, call, script, reason) -> None:
    atlas, student, _ = make_atlas(teacher={"teacher": script}, teacher_timeout=2.0)
    resp = call(atlas)
    assert (resp.atlas.decision, resp.atlas.reason) == ("student_only", reason)
    assert content(resp).endswith("41")
    assert "guided" not in student.roles()


def test_transient_teacher_errors_are_retried(make_atlas, call) -> None:
    flaky = iter([ConnectionError("reset"), ConnectionError("reset")])

    def teacher(req: Any) -> Any:
        return next(flaky, teacher_reply("Carry the one."))

    atlas, _, t = make_atlas(teacher={"teacher": teacher}, teacher_retries=3)
    r = call(atlas).atlas
    assert r.guidance == "Carry the one."
    assert t.roles().count("teacher") == 3


def test_probe_failure_falls_back(make_atlas, call) -> None:
    atlas, *_ = make_atlas(student={"probe": StudentDown("probe broke")})
    r = call(atlas).atlas
    assert (r.decision, r.reason) == ("student_only", Reason.PROBE_ERROR)


def test_student_error_on_every_path_is_raised_unchanged(make_atlas, call) -> None:
    boom = StudentDown("student is down")
    atlas, *_ = make_atlas(student={"guided": boom, "baseline": boom}, ledger="sqlite:///:memory:")
    with pytest.raises(StudentDown) as info:
        call(atlas)
    assert info.value is boom
    (row,) = atlas.ledger.records()
    assert row.failed and row.reason == "student_error"


def test_guided_failure_delivers_baseline(make_atlas, call) -> None:
    atlas, *_ = make_atlas(student={"guided": StudentDown("x")})
    r = call(atlas).atlas
    assert (r.decision, r.reason) == ("baseline", Reason.GUIDED_ERROR)


def test_baseline_failure_delivers_guided(make_atlas, call) -> None:
    atlas, *_ = make_atlas(student={"baseline": StudentDown("x")})
    r = call(atlas).atlas
    assert (r.decision, r.reason) == ("guided", Reason.BASELINE_ERROR)


def test_circuit_breaker_stops_calling_a_dead_teacher(make_atlas, call) -> None:
    atlas, _, teacher = make_atlas(teacher={"teacher": ConnectionError("down")}, teacher_retries=1,
                                   circuit_failures=2, circuit_cooldown=60)
    reasons = [call(atlas).atlas.reason for _ in range(4)]
    assert reasons == [Reason.TEACHER_ERROR, Reason.TEACHER_ERROR, Reason.CIRCUIT_OPEN, Reason.CIRCUIT_OPEN]
    assert teacher.roles().count("teacher") == 2


# -- accounting -----------------------------------------------------------------------------


def test_usage_sums_and_savings_are_exact(make_atlas, call) -> None:
    atlas, student, teacher = make_atlas(judge="answer")
    r = call(atlas).atlas
    by_role = {role: req for role, req in student.calls + teacher.calls}
    from atlas_middleware.testing.scripted import prompt_words

    base_completion = words("20 plus 22 is 41. The answer is 41")
    guided_completion = words("20 + 22 = 42. The answer is 42")
    assert r.usage.baseline.completion_tokens == base_completion
    assert r.usage.guided.completion_tokens == guided_completion
    assert r.usage.probe.prompt_tokens == prompt_words(by_role["probe"])
    assert r.usage.teacher.prompt_tokens == prompt_words(by_role["teacher"])
    total = sum(getattr(r.usage, role).total_tokens for role in ("probe", "teacher", "guided", "baseline", "judge"))
    assert r.usage.total().total_tokens == total
    baseline_total = prompt_words(by_role["baseline"]) + base_completion
    assert r.net_tokens == total - baseline_total
    assert r.tokens_saved == 0  # the baseline was delivered
    assert r.usage.total().exact and r.cost_usd is None  # scripted prices are unknown, not 0


def test_tokens_saved_when_guided_is_delivered(make_atlas, call) -> None:
    atlas, *_ = make_atlas(student={"guided": "The answer is 41"})
    r = call(atlas).atlas
    assert r.decision == "guided"
    assert r.tokens_saved == words("20 plus 22 is 41. The answer is 41") - words("The answer is 41")


def test_report_fields_are_complete(make_atlas, call) -> None:
    atlas, *_ = make_atlas()
    r = call(atlas).atlas
    assert r.student_model == "student-model" and r.teacher_model == "scripted-teacher"
    assert r.diagnosis is not None and r.diagnosis.level == 2 and "carry" in r.diagnosis.text
    assert r.guidance == "Carry the one."
    assert {"probe", "teacher", "guided", "baseline", "total"} <= set(r.latency_ms)
    assert len(r.call_id) == 32


# -- sessions -------------------------------------------------------------------------------


def test_session_reuses_one_diagnosis(make_atlas, call) -> None:
    atlas, student, teacher = make_atlas(student={"guided": "The answer is 41"})
    first = call(atlas, atlas={"session_id": "task-1"}).atlas
    second = call(atlas, atlas={"session_id": "task-1"}).atlas
    assert not first.guidance_reused and second.guidance_reused
    assert second.guidance == first.guidance
    assert teacher.roles().count("teacher") == 1 and student.roles().count("probe") == 1


def test_guidance_that_lost_is_never_reused(make_atlas, call) -> None:
    atlas, _, teacher = make_atlas(judge="answer")  # guided 42 vs baseline 41: baseline wins
    reports = [call(atlas, atlas={"session_id": "task-2"}).atlas for _ in range(3)]
    assert [r.guidance_reused for r in reports] == [False, False, False]
    assert teacher.roles().count("teacher") == 3


def test_reused_guidance_that_loses_is_dropped(make_atlas, call) -> None:
    # per call, the two orders: guided wins, then baseline wins, then guided wins
    verdicts = iter(f"<verdict>{v}</verdict>" for v in "ABBAAB")
    atlas, _, teacher = make_atlas(judge="teacher", teacher={"judge_pair": lambda req: next(verdicts)})
    reports = [call(atlas, atlas={"session_id": "task-3"}).atlas for _ in range(3)]
    # won and stored; reused and lost (dropped); taught afresh
    assert [r.guidance_reused for r in reports] == [False, True, False]
    assert [r.reason for r in reports][:2] == [Reason.JUDGE_GUIDED, Reason.JUDGE_BASELINE]
    assert teacher.roles().count("teacher") == 2


# -- requests pass through ------------------------------------------------------------------


TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


def test_tools_and_params_pass_through_and_guidance_is_a_system_message(make_atlas, call) -> None:
    atlas, student, _ = make_atlas()
    messages = [{"role": "system", "content": "Be terse."}, *QUESTION]
    call(atlas, messages=messages, tools=TOOLS, temperature=0.3, response_format={"type": "text"})
    reqs = dict(student.calls)
    for role in ("guided", "baseline"):
        assert reqs[role].params["tools"] == TOOLS and reqs[role].params["temperature"] == 0.3
    assert reqs["baseline"].messages == messages
    guided = reqs["guided"].messages
    assert guided[0] == messages[0] and guided[1]["role"] == "system" and "Carry the one." in guided[1]["content"]
    assert guided[2:] == messages[1:]
    assert "tools" not in reqs["probe"].params and reqs["probe"].params["max_tokens"] == 50


def _tool(name: str, args: str) -> Reply:
    from atlas_middleware import ToolCall

    return Reply(content=None, tool_calls=[ToolCall(id="c1", name=name, arguments=args)])


def test_invalid_guided_tool_call_loses(make_atlas, call) -> None:
    atlas, *_ = make_atlas(student={"guided": _tool("subtract", '{"a": 1}'), "baseline": _tool("add", '{"a": 1}')})
    r = call(atlas, tools=TOOLS).atlas
    assert (r.decision, r.reason) == ("baseline", Reason.INVALID_TOOL_CALL)


def test_same_tool_calls_agree(make_atlas, call) -> None:
    atlas, *_ = make_atlas(student={"guided": _tool("add", '{"a": 1, "b": 2}'), "baseline": _tool("add", '{"b":2,"a":1}')})
    resp = call(atlas, tools=TOOLS)
    assert resp.atlas.reason == Reason.AGREEMENT
    assert resp.choices[0].message.tool_calls[0]["function"]["name"] == "add"


def test_stream_replays_the_delivered_answer(make_atlas, call) -> None:
    atlas, *_ = make_atlas(student={"guided": "The answer is 41"})
    stream = call(atlas, stream=True, stream_options={"include_usage": True})
    items = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in items if c.choices)
    assert text == "The answer is 41"
    assert items[-1].usage["completion_tokens"] == 4
    assert stream.atlas.decision == "guided"


def test_bad_input_is_rejected_before_any_call(make_atlas) -> None:
    from atlas_middleware import InvalidRequestError

    atlas, student, _ = make_atlas()
    for bad in ([], [{"content": "no role"}], "hello", [{"role": "user", "content": 3}]):
        with pytest.raises(InvalidRequestError):
            atlas.completion(model="m", messages=bad)
    with pytest.raises(InvalidRequestError):
        atlas.completion(model="m", messages=QUESTION, atlas={"policy": "sometimes"})
    assert student.calls == []


def test_different_explanations_ending_on_one_number_are_not_agreement(make_atlas, call) -> None:
    atlas, _, teacher = make_atlas(
        student={"guided": "No. You must not restart the server; see step 3.",
                 "baseline": "Yes, restart the server as explained in step 3."},
        judge="teacher", teacher={"judge_pair": "<verdict>B</verdict>"},
    )
    r = call(atlas).atlas
    assert r.reason != Reason.AGREEMENT and teacher.roles().count("judge_pair") == 2


def test_truncated_answers_never_agree(make_atlas, call) -> None:
    atlas, *_ = make_atlas(student={"guided": Reply("The answer is 41", finish_reason="length")})
    r = call(atlas).atlas
    assert r.reason != Reason.AGREEMENT


class _RaisingJudge:
    name = "raising"
    threshold = 0.5

    def compare(self, task: Any, guided: Any, baseline: Any) -> Any:
        raise ValueError("user judge bug")
        yield  # pragma: no cover

    def score(self, task: Any, answer: Any) -> Any:
        return None  # not a number
        yield  # pragma: no cover


@pytest.mark.parametrize("policy", ["strict", "verify"])
def test_any_judge_failure_means_baseline(make_atlas, call, policy) -> None:
    atlas, *_ = make_atlas(judge=_RaisingJudge(), policy=policy)
    r = call(atlas).atlas
    assert (r.decision, r.reason) == ("baseline", Reason.JUDGE_ERROR)
    assert r.errors and r.errors[-1].role == "judge"


def test_guided_failure_under_verify_delivers_the_baseline(make_atlas, call) -> None:
    atlas, *_ = make_atlas(policy="verify", student={"guided": StudentDown("x")})
    r = call(atlas).atlas
    assert (r.decision, r.reason) == ("baseline", Reason.GUIDED_ERROR)


def test_breaker_trial_that_never_reaches_the_teacher_frees_the_slot(make_atlas, call) -> None:
    probe_fails = {"on": False}

    def probe(req: Any) -> Any:
        if probe_fails["on"]:
            raise StudentDown("probe broke")
        return "plan"

    atlas, _, teacher = make_atlas(student={"probe": probe}, teacher={"teacher": ConnectionError("down")},
                                   teacher_retries=1, circuit_failures=1, circuit_cooldown=0.05)
    assert call(atlas).atlas.reason == Reason.TEACHER_ERROR  # opens the circuit
    import time as _time

    _time.sleep(0.1)
    probe_fails["on"] = True
    assert call(atlas).atlas.reason == Reason.PROBE_ERROR  # the half-open trial, no verdict
    probe_fails["on"] = False
    teacher.script["teacher"] = teacher_reply("Carry the one.")
    assert call(atlas).atlas.reason != Reason.CIRCUIT_OPEN  # not stuck open


def test_kept_answers_never_reach_the_ledger(make_atlas, call) -> None:
    atlas, *_ = make_atlas(ledger="sqlite:///:memory:")
    r = call(atlas, atlas={"keep_answers": True}).atlas
    assert r.answers is not None
    (row,) = atlas.ledger.records()
    assert row.report().answers is None and "The answer is 42" not in row.report_json


def test_stored_texts_keep_probe_and_both_answers(make_atlas, call) -> None:
    """A ledger that stores texts holds what a teacher-training export reads: the probe's
    plan and both student answers; without store_texts none of them."""
    atlas, *_ = make_atlas(ledger="sqlite:///:memory:", store_texts=True)
    r = call(atlas).atlas
    assert r.probe and r.answers is not None and set(r.answers) == {"guided", "baseline"}
    (row,) = atlas.ledger.records()
    kept = row.report()
    assert kept.probe == r.probe and kept.answers == r.answers
    private, *_ = make_atlas(ledger="sqlite:///:memory:")
    call(private)
    (row,) = private.ledger.records()
    assert row.report().probe is None and row.report().answers is None
