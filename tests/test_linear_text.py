"""Every pass the middleware makes over text a caller or a model wrote is linear in its
length (issue 23): a hostile prompt costs milliseconds per megabyte, never minutes.

Speeds are compared as ratios on one machine: ten times the input may cost at most
``MAX_RATIO`` times the time (a linear pass costs about 10x, a quadratic one 100x). Each
time is the best of a few runs, which keeps a busy machine's pauses out of the ratio.
Through the real proxy: tests/test_reliability_proxy.py (a huge prompt beside small calls).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_middleware import messages
from atlas_middleware._redact import redact
from atlas_middleware.offline.export import builtin_redact
from atlas_middleware.teaching import answers, families, flow, judges, leaks, parse, prompts
from atlas_middleware.testing import Reply

MAX_RATIO = 30.0

# The shapes that made a regex backtrack: one unit, repeated to the length wanted.
SHAPES = {
    "x": "x",
    "a@": "a@",
    "base64url": "QUJDRA-_zz09",
    "digits,": "1,",
    "digits.": "1.",
    "dotted": "a.",
    "hyphenated": "a1-",
    "nested quotes": "\"'",
    "backticks": "`",
    "curly quotes": "\u201c",
    "curly single quotes": "\u2018",
    "spaces": " ",
    "newlines": "\n",
}


def best_time(fn: Callable[[str], Any], text: str, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - t0)
    return best


def assert_linear(fn: Callable[[str], Any], make: Callable[[int], str], small: int) -> None:
    """``fn`` on ten times the text costs at most ``MAX_RATIO`` times the time."""
    fn(make(small))  # warm: lazily compiled patterns, imports
    t_small, t_large = best_time(fn, make(small), 5), best_time(fn, make(10 * small))
    ratio = t_large / max(t_small, 1e-6)
    assert ratio < MAX_RATIO, (f"{10 * small} chars took {t_large * 1000:.1f} ms, {ratio:.0f}x the "
                               f"{t_small * 1000:.2f} ms of {small}: not linear")


def repeated(unit: str, prefix: str = "", suffix: str = "") -> Callable[[int], str]:
    return lambda n: prefix + (unit * (n // len(unit) + 1))[:n] + suffix


@pytest.mark.parametrize("unit", list(SHAPES.values()), ids=list(SHAPES))
def test_normalising_10k_and_100k_characters_is_linear(unit: str) -> None:
    assert_linear(families.normalise, repeated(unit), 10_000)


def test_a_fingerprint_reads_a_bounded_window() -> None:
    # 100 times the text, the same time give or take: only the two ends are normalised.
    def key(text: str) -> str:
        return families.fingerprint([{"role": "system", "content": text}, {"role": "user", "content": text}])

    make = repeated("QUJDRA-_zz09 a.b@c 1,2 ")
    key(make(10_000))
    t_small, t_large = best_time(key, make(10_000), 5), best_time(key, make(1_000_000))
    assert t_large / max(t_small, 1e-6) < 10


def _judge_verdict(text: str) -> list[str]:
    return judges._VERDICT.findall(text)


def _reply(untagged: parse.Untagged) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        try:
            return parse.read_teacher_reply(text, untagged=untagged)
        except Exception:  # an unusable reply is an answer too; the time is what counts
            return None
    return read


# (name, the pass, the input's prefix, its repeated unit): each the shape that made it
# quadratic before (a run of spaces after an answer, a chain of sums with no "=", ...),
# ended by a "!" that no pattern expects there (a trailing run would be stripped first).
PASSES: list[tuple[str, Callable[[str], Any], str, str]] = [
    ("same_final_answer #### and spaces", lambda t: answers.same_final_answer(t, t + "!"), "#### 5 a", " "),
    ("answers_equivalent unit and spaces", lambda t: answers.answers_equivalent(t, t + "x"), "5 a", " "),
    ("answers_equivalent percent spaces", lambda t: answers.answers_equivalent(t, "5"), "answer is 5 ", "\t"),
    ("extract_choice blank lines", answers.extract_choice, "", "\n"),
    ("extract_answer <solution> tags", answers.extract_answer, "", "<solution>"),
    ("find_leaks sum chain", leaks.find_leaks, "", "1+"),
    ("find_leaks comma chain", leaks.find_leaks, "", "1,"),
    ("find_leaks minus chain", leaks.find_leaks, "", "-1"),
    ("strip_leaks ratio chain", leaks.strip_leaks, "", "1/"),
    ("read_teacher_reply label spaces", _reply("guidance"), "", " "),
    ("read_teacher_reply level spaces", _reply("private"), "level: ", " "),
    ("read_teacher_reply <teaching> tags", _reply("guidance"), "", "<teaching>"),
    ("judge verdict spaces", _judge_verdict, "<verdict>a", " "),
    ("defuse tags", prompts.defuse, "", "< teaching"),
    ("redact keys", redact, "", "sk-bearer "),
    ("builtin_redact addresses", builtin_redact, "", "a.b-c"),
    ("normalise urls", families.normalise, "", "a1-.+"),
]


@pytest.mark.parametrize(("fn", "prefix", "unit"), [p[1:] for p in PASSES], ids=[p[0] for p in PASSES])
def test_every_pass_over_user_and_model_text_is_linear(fn: Callable[[str], Any], prefix: str, unit: str) -> None:
    assert_linear(fn, repeated(unit, prefix, "!"), 5_000)


ALPHABET = "xaAe1.,-_:/@\"'`\u201c\u201d\u2018\u2019 \n\t<>=+*#$%\\{}()"


def _every_pass(text: str) -> None:
    families.normalise(text)
    answers.same_final_answer(text, text + "!")
    answers.extract_choice(text)
    leaks.find_leaks(text)
    _reply("guidance")(text)
    prompts.defuse(text)
    redact(text)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(unit=st.text(alphabet=ALPHABET, min_size=1, max_size=6))
def test_no_repeated_pattern_makes_a_pass_superlinear(unit: str) -> None:
    # A search, not a list: any short unit, repeated, must keep every pass linear.
    assert_linear(_every_pass, repeated(unit), 2_000)


# -- a large request's work runs off the event loop ----------------------------------------


def test_a_large_request_is_read_and_built_off_the_event_loop(make_atlas, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # Fingerprinting (in ``Atlas._prepare``) and the flow's own steps (reading the probe,
    # building the teacher's and the guided prompts) run where the work on the text runs.
    seen: dict[str, set[int]] = {"family": set(), "flow": set()}

    def watch(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            seen[name].add(threading.get_ident())
            return fn(*args, **kwargs)
        return wrapped

    import atlas_middleware.client as client

    monkeypatch.setattr(client, "family_of", watch("family", client.family_of))
    monkeypatch.setattr(flow, "split_reasoning", watch("flow", flow.split_reasoning))
    # A remote model reads the prompt elsewhere: a scripted one that counts no words.
    atlas, student, _ = make_atlas(student={role: Reply(text, prompt_tokens=7) for role, text in
                                            (("probe", "Add them."), ("guided", "The answer is 42"),
                                             ("baseline", "The answer is 42"))})

    async def one(text: str) -> tuple[int, str]:
        out = await atlas.acompletion(model="m", messages=[{"role": "user", "content": text}])
        await atlas.aflush()
        return threading.get_ident(), out.atlas.reason

    for size, off_loop in ((100, False), (messages.LARGE_REQUEST_CHARS + 1, True)):
        seen["family"].clear()
        seen["flow"].clear()
        loop_thread, reason = asyncio.run(one("x" * size))
        assert reason == "agreement"
        assert seen["family"] and seen["flow"]
        assert (loop_thread not in seen["family"] | seen["flow"]) is off_loop, size


def test_text_chars_counts_lengths_of_any_shape() -> None:
    assert messages.text_chars(None) == messages.text_chars("text") == 0
    shaped = [{"role": "user", "content": "abc"}, "not a message",
              {"role": "user", "content": [{"type": "text", "text": "de"},
                                           {"type": "image_url", "image_url": {"url": "data:xyz"}}, 7]},
              {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}, 3]},
              {"role": "assistant", "content": None, "tool_calls": 5}]
    # Every string of a part counts ("text", "image_url" too): a bound, not a token count.
    assert messages.text_chars(shaped) == 3 + (4 + 2) + (9 + 8) + (1 + 2)
    assert not messages.is_large(shaped)
    assert messages.is_large([{"role": "user", "content": "x" * (messages.LARGE_REQUEST_CHARS + 1)}])
