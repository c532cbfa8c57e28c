"""The policy-frontier simulation (bench/policy_frontier.py): the figures docs/policies.md
quotes come from the real flow, so their limits must hold exactly where logic fixes them."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

_PATH = Path(__file__).parent.parent / "bench" / "policy_frontier.py"
_spec = importlib.util.spec_from_file_location("policy_frontier", _PATH)
assert _spec is not None and _spec.loader is not None
frontier: Any = importlib.util.module_from_spec(_spec)
sys.modules["policy_frontier"] = frontier  # dataclasses look their module up
_spec.loader.exec_module(frontier)

P = frontier.Params(items=300, seed=7)
ITEMS = frontier.draw(P)
N = len(ITEMS)
ALONE = sum(i.alone_right for i in ITEMS)
GUIDED = sum(i.guided_right for i in ITEMS)
EITHER = sum(i.alone_right or i.guided_right for i in ITEMS)
BROKEN = sum(i.alone_right and not i.guided_right for i in ITEMS)


def run(policy: str, judge: str, accuracy: float | None = None) -> Any:
    return asyncio.run(frontier.run(P, policy, judge, accuracy))


def test_draw_follows_the_parameters() -> None:
    assert abs(ALONE / N - P.alone) < 0.08 and abs(GUIDED / N - P.guided) < 0.08 and 0 < BROKEN < 0.1 * N


def test_off_delivers_every_guided_answer_with_its_degradations() -> None:
    r = run("off", "auto")
    assert (round(r.accuracy * N), r.degraded, r.calls) == (GUIDED, BROKEN, 3.0)


def test_strict_with_the_answer_judge_can_never_deliver_a_different_guided_answer() -> None:
    r = run("strict", "answer")
    assert (round(r.accuracy * N), r.improved, r.degraded) == (ALONE, 0, 0)


def test_strict_with_a_perfect_judge_delivers_the_better_answer_on_every_item() -> None:
    r = run("strict", "auto", 1.0)
    assert (round(r.accuracy * N), r.degraded) == (EITHER, 0)


@pytest.mark.parametrize("accuracy", [0.6, 0.85])
def test_the_default_keeps_ndr_above_99_percent_and_delivers_gain(accuracy: float) -> None:
    # 1,500 items: enough broken ones (about 45) that a judge error let through shows
    p = frontier.Params(items=1500, seed=11)
    r = asyncio.run(frontier.run(p, "strict", "auto", accuracy))
    assert r.ndr >= 0.99 and r.improved > 0
    if accuracy >= 0.85:
        assert r.gain_share >= 0.6  # most of the guided gain


def test_table_marks_no_explicit_policy_as_the_default() -> None:
    # The default is ``adaptive`` (bench/adaptive_default.py measures it), which this table of
    # fixed policies does not hold: marking ``strict`` would tell a reader the old default.
    from atlas_middleware.config import AtlasConfig

    assert AtlasConfig().policy == "adaptive"
    text = frontier.table([run("strict", "auto"), run("off", "auto")], P)
    assert "**(default)**" not in text and "| strict | teacher (auto) |" in text
