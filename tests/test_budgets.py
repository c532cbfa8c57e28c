"""Teaching budgets (``budget.daily_usd``, ``budget.family_daily_usd``): past a cap, calls run
untaught with reason ``budget_exhausted``, on both drivers (``call``) and both state backends
(process memory, and Redis when ``TEST_REDIS_URL`` is set: counters under a prefix of the
test's own); the UTC day's rollover (an injected clock); a state that is down (untaught, a
warning, a metric); the report, ledger, headers and savings report; bad settings refused.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from atlas_middleware import Atlas, Reason
from atlas_middleware.budgets import Budget, teaching_spend
from atlas_middleware.config import AtlasConfig
from atlas_middleware.errors import ConfigError
from atlas_middleware.offline.reporting.render import render_csv, render_table
from atlas_middleware.offline.reporting.summary import summarize
from atlas_middleware.proxy.headers import report_headers
from atlas_middleware.state.budgets import MemoryBudgets
from atlas_middleware.usage import Usage, UsageByRole

REDIS_URL = os.environ.get("TEST_REDIS_URL", "")
PRICES = {"input_cost_per_token": 2e-6, "output_cost_per_token": 8e-6}
TEACHER_PRICES = {"input_cost_per_token": 1e-7, "output_cost_per_token": 1e-7}
CAP = 1e-4  # less than one taught call spends here (about 3e-4): the second call finds it spent


def budgeted(make_atlas: Any, tmp_path: Path, budget: dict[str, Any], **settings: Any) -> Any:
    settings.setdefault("policy", "strict")
    return make_atlas(budget=budget, teacher_params=TEACHER_PRICES, ledger=f"sqlite:///{tmp_path / 'l.db'}",
                      **settings)


def ask(call: Any, atlas: Atlas, family: str = "sums", **kwargs: Any) -> Any:
    return call(atlas, messages=[{"role": "user", "content": f"{family}: what is 20 + 22?"}],
                atlas={"task": family}, **PRICES, **kwargs).atlas


def usage(cost: float | None, calls: int = 1) -> Usage:
    return Usage(prompt_tokens=10, completion_tokens=5, calls=calls, cost_usd=cost)


# -- what a call spends on teaching --------------------------------------------------------------


def test_teaching_spend_is_everything_beyond_the_student_alone() -> None:
    strict = UsageByRole(probe=usage(0.1), teacher=usage(0.2), guided=usage(0.3), baseline=usage(0.4),
                         judge=usage(0.05, 2))
    assert teaching_spend(strict) == pytest.approx(0.65)  # the baseline is the student alone's call
    unchecked = UsageByRole(probe=usage(0.1), teacher=usage(0.2), guided=usage(0.3))
    assert teaching_spend(unchecked) == pytest.approx(0.3)  # the guided answer stands in for the student's
    assert teaching_spend(UsageByRole(baseline=usage(0.4))) == 0.0  # untaught
    assert teaching_spend(UsageByRole(probe=usage(0.1), teacher=usage(None), baseline=usage(0.4))) == 0.1
    assert teaching_spend(UsageByRole(probe=usage(None), teacher=usage(None), baseline=usage(0.4))) is None


# -- the caps, through Atlas ---------------------------------------------------------------------


def test_a_total_budget_stops_teaching_once_spent(make_atlas, call, state, tmp_path: Path) -> None:
    atlas, student, teacher = budgeted(make_atlas, tmp_path, {"daily_usd": CAP}, **state)
    first = ask(call, atlas)
    assert first.usage.teacher.calls == 1 and first.reason != Reason.BUDGET_EXHAUSTED
    student.calls.clear()
    teacher.calls.clear()
    second, third = ask(call, atlas), ask(call, atlas, family="other")
    for r in (second, third):
        assert (r.decision, r.reason) == ("student_only", Reason.BUDGET_EXHAUSTED)
        assert r.budget is not None and r.budget.why == "total" and r.budget.limit_usd == CAP
        assert r.budget.spent_usd == pytest.approx(teaching_spend(first.usage))
    assert student.roles() == ["baseline", "baseline"] and teacher.roles() == []
    headers = report_headers(second)
    assert headers["x-atlas-reason"] == "budget_exhausted" and headers["x-atlas-budget"] == "total"
    records = atlas.ledger.records()
    assert sorted(r.reason for r in records).count("budget_exhausted") == 2
    summary = summarize(records, ledger="test")
    by = {g.key: g.budget_exhausted for g in summary.families}
    assert by == {"t:sums": 1, "t:other": 1} and summary.overall.budget_exhausted == 2
    assert "budget out" in render_table(summary) and "budget_exhausted" in render_csv(summary).splitlines()[0]


def test_a_family_budget_stops_only_that_family(make_atlas, call, state, tmp_path: Path) -> None:
    atlas, *_ = budgeted(make_atlas, tmp_path, {"family_daily_usd": CAP}, **state)
    ask(call, atlas, "sums")
    spent = ask(call, atlas, "sums")
    other = ask(call, atlas, "other")
    assert spent.reason == Reason.BUDGET_EXHAUSTED and spent.budget is not None and spent.budget.why == "family"
    assert other.reason != Reason.BUDGET_EXHAUSTED and other.usage.teacher.calls == 1
    # Another tenant's family of the same name has a budget of its own.
    theirs = call(atlas, messages=[{"role": "user", "content": "sums: what is 20 + 22?"}],
                  atlas={"task": "sums", "tenant": "them"}, **PRICES).atlas
    assert theirs.reason != Reason.BUDGET_EXHAUSTED


def test_the_budget_starts_again_each_utc_day(make_atlas, call, state, tmp_path: Path) -> None:
    atlas, *_ = budgeted(make_atlas, tmp_path, {"daily_usd": CAP}, **state)
    now = [datetime(2026, 3, 1, 23, 59, 58, tzinfo=UTC)]
    assert atlas.budget is not None
    atlas.budget.clock = lambda: now[0]
    assert ask(call, atlas).usage.teacher.calls == 1
    assert ask(call, atlas).reason == Reason.BUDGET_EXHAUSTED
    now[0] += timedelta(seconds=3)  # 00:00:01 UTC, the next day
    assert ask(call, atlas).usage.teacher.calls == 1
    assert ask(call, atlas).reason == Reason.BUDGET_EXHAUSTED
    # A clock in another zone counts by its UTC day: 20:00 at UTC-5 on 2 March is 01:00 UTC on the 3rd.
    now[0] = datetime(2026, 3, 2, 20, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert ask(call, atlas).usage.teacher.calls == 1


def test_shadow_spend_counts_against_the_budget(make_atlas, call, state, tmp_path: Path) -> None:
    atlas, *_ = budgeted(make_atlas, tmp_path, {"daily_usd": CAP}, policy="shadow", shadow={"rate": 1.0}, **state)
    ask(call, atlas)  # taught in the background, after delivery: charged when it ends
    r = ask(call, atlas)
    assert r.reason == Reason.BUDGET_EXHAUSTED and r.shadow is None
    (later,) = [x for x in atlas.ledger.records() if x.call_id == r.call_id]
    assert later.report().usage.total().calls == 1


def test_a_down_state_fails_safe_untaught_with_a_warning_and_a_metric(
        make_atlas, call, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("redis")
    with socket.socket() as s:  # a port nobody listens on: Redis is down from the start
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    atlas, _, teacher = budgeted(make_atlas, tmp_path, {"daily_usd": 100.0},
                                 state=f"redis://127.0.0.1:{port}/0", state_timeout=0.2)
    atlas.state.backoff = 0.0  # every operation tries Redis: the outage is seen by each check
    with caplog.at_level(logging.WARNING, "atlas_middleware.budgets"):
        reports = [ask(call, atlas) for _ in range(3)]
    assert all(r.reason == Reason.BUDGET_EXHAUSTED and r.budget is not None
               and r.budget.why == "state_unavailable" and r.budget.spent_usd is None for r in reports)
    assert teacher.roles() == []
    warnings = [rec.getMessage() for rec in caplog.records if rec.name == "atlas_middleware.budgets"]
    assert len(warnings) == 1 and "unreachable" in warnings[0] and "untaught" in warnings[0]
    from atlas_middleware.proxy.metrics import AtlasMetrics

    metrics = AtlasMetrics(replica="test")
    for r in reports:
        metrics.observe(r)
    assert 'atlas_budget_calls_total{replica="test",why="state_unavailable"} 3.0' in metrics.render().decode()


def test_a_budget_warns_when_it_comes_back(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(MemoryBudgets):
        down = True

        def spent(self, day: str, keys: Any) -> Any:
            return None if self.down else super().spent(day, keys)

    store = Flaky()
    budget = Budget(store, daily_usd=1.0)
    with caplog.at_level(logging.WARNING, "atlas_middleware.budgets"):
        assert budget.check("f") is not None and budget.check("f") is not None
        store.down = False
        assert budget.check("f") is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "unreachable" in messages[0] and "back" in messages[1]


def test_redis_counters_are_per_utc_day_and_expire(state, tmp_path: Path) -> None:
    if not state:
        pytest.skip("the Redis layout")
    import redis

    from atlas_middleware.state import open_state

    shared = open_state(state["state"], prefix=state["state_prefix"], timeout=1.0)
    budget = Budget(shared.budgets, daily_usd=1.0, family_daily_usd=1.0,
                    clock=lambda: datetime(2026, 5, 4, 12, tzinfo=UTC))
    budget.charge("fam", UsageByRole(probe=usage(0.25), teacher=usage(0.5), baseline=usage(1.0)))
    budget.charge("fam", UsageByRole(probe=usage(0.25), teacher=usage(None), baseline=usage(1.0)))
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        total = f"{state['state_prefix']}budget:2026-05-04:total"
        assert float(client.get(total)) == pytest.approx(1.0)
        assert float(client.get(f"{state['state_prefix']}budget:2026-05-04:family:fam")) == pytest.approx(1.0)
        assert 0 < client.ttl(total) <= 2 * 86400
        assert budget.check("fam") is not None and budget.check("fam").why == "total"  # type: ignore[union-attr]
    finally:
        client.close()
        shared.close()


# -- bad settings ----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["daily_usd", "family_daily_usd"])
@pytest.mark.parametrize("value", [0, -1, "ten", True, float("inf"), float("nan"), [1]])
def test_a_budget_that_is_not_a_positive_amount_is_refused_at_start(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"budget\.{field}: .*positive amount of US dollars"):
        Atlas(teacher="t", ledger="none", budget={field: value})


def test_budgets_from_yaml_and_environment(tmp_path: Path) -> None:
    config = AtlasConfig.load(env={"ATLAS_BUDGET": '{"daily_usd": 5}', "ATLAS_BUDGET_FAMILY_DAILY_USD": "0.5"})
    assert (config.budget.daily_usd, config.budget.family_daily_usd) == (5.0, 0.5)
    with pytest.raises(ConfigError, match=r"budget\.daily_usd"):
        AtlasConfig.load(env={"ATLAS_BUDGET_DAILY_USD": "0"})
    path = tmp_path / "atlas.yaml"
    path.write_text("atlas:\n  budget:\n    daily_usd: 3e-1\n", "utf-8")
    assert AtlasConfig.load(path, env={}).budget.daily_usd == 0.3
    assert not AtlasConfig.load(env={}).budget.active  # no cap unless one is set
