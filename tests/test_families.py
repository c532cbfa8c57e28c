"""Task families: the key is stable under changed literals, distinct across templates, named
by a tag when one is given, refused when the tag is bad, and it reaches the report and the
ledger on both drivers; a version 1 SQLite ledger gains the column when it is opened."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import QUESTION
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_middleware.errors import InvalidRequestError
from atlas_middleware.ledger import LedgerQuery, SQLiteLedger
from atlas_middleware.ledger.sqlite import SCHEMA_VERSION
from atlas_middleware.teaching import families
from atlas_middleware.teaching.families import (
    HEAD_CHARS,
    MAX_TAG_CHARS,
    TAIL_CHARS,
    family_of,
    fingerprint,
    normalise,
)

SYSTEM = {"role": "system", "content": "You are a billing assistant. Answer in one sentence."}
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
         for n in ("lookup_invoice", "refund")]


def user(text: str) -> list[dict[str, Any]]:
    return [SYSTEM, {"role": "user", "content": text}]


def key(text: str, tools: list[dict[str, Any]] | None = TOOLS) -> str:
    return family_of(user(text), {"tools": tools} if tools is not None else {})


# Each pair: the same template with different literals.
SAME = [
    ("What is 17% of 240?", "What is 3.5% of 1,200,000?"),
    ("Add -3 and 4e-9", "Add 12 and 7"),
    ("Refund invoice 'INV-2201' for Bob", "Refund invoice 'X 9' for Bob"),
    ('Translate "good morning" to French', 'Translate "where is the station, please?" to French'),
    ("Run `ls -la /tmp` for me", "Run `git status` for me"),
    ("Quote “to be or not to be”", "Quote “all is well”"),
    ("Quote ‘hello there’ back", "Quote ‘no’ back"),
    ("Explain:\n```python\nx = 1\nprint(x)\n```", "Explain:\n```\nfor i in items: pass\n```"),
    ("Open https://example.com/a?b=1 now", "Open http://x.org/ now"),
    ("Mail ann@example.com today", "Mail bob.smith+tag@corp.co.uk today"),
    ("Look up 550e8400-e29b-41d4-a716-446655440000", "Look up f47ac10b-58cc-4372-a567-0e02b2c3d479"),
    ("Find commit 9fceb02d0ae5", "Find commit a1b2c3d4e5f6"),
    ("Book it for 2024-05-01", "Book it for 2025-12-31T08:30:00Z"),
    ("Book it for 01/05/2024 at 10:30", "Book it for 12/31/2025 at 9:05 pm"),
    ("Book it for 01/05/2024", "Book it for 2025-12-31"),
    ("Due May 1st, 2024", "Due December 31, 2025"),
    ("What is 20 + 22?", "What  is 7 +   9?\n"),
    ("WHAT IS 20 + 22?", "what is 1 + 2?"),
]


@pytest.mark.parametrize(("a", "b"), SAME, ids=[a for a, _ in SAME])
def test_the_key_ignores_literals(a: str, b: str) -> None:
    assert key(a) == key(b)


def test_distinct_templates_get_distinct_keys() -> None:
    base = key("What is 17% of 240?")
    other_system = family_of([{"role": "system", "content": "You are a math tutor."},
                              {"role": "user", "content": "What is 17% of 240?"}], {"tools": TOOLS})
    other_tools = key("What is 17% of 240?", tools=TOOLS[:1])
    no_tools = key("What is 17% of 240?", tools=None)
    other_shape = key("Is 17 a prime number?")
    keys = [base, other_system, other_tools, no_tools, other_shape]
    assert len(set(keys)) == len(keys)


def test_the_key_format_is_short_and_documented() -> None:
    k = key("What is 17% of 240?")
    assert k.startswith("f:") and len(k) == 14 and int(k[2:], 16) >= 0
    assert normalise("Order 'A-1' at 10:30 on 2024-05-01 costs $1,234.50") == "order <str> at <time> on <date> costs $<num>"


def test_a_long_text_is_read_at_its_two_ends() -> None:
    # The first HEAD_CHARS and the last TAIL_CHARS characters make the key; what lies
    # between (a pasted document) does not, so a huge prompt costs no more to fingerprint.
    head = "Summarise the report below in three bullets.\n" + "Context. " * (HEAD_CHARS // 9)
    tail = "Note. " * (TAIL_CHARS // 6) + "\nAnswer in English."
    one = head + "x" * 50_000 + tail
    assert key(one) == key(head + "lorem ipsum dolor " * 5_000 + tail)
    assert key(one) != key("Translate" + one[9:])
    assert key(one) != key(one[:-8] + "French.")
    within = "Summarise the report below.\n" + "x" * 1_000 + "\nAnswer in English."
    assert key(within) != key(within.replace("x" * 1_000, "lorem " * 160))  # all of it is read


def test_only_the_last_user_message_and_text_parts_count() -> None:
    plain = [SYSTEM, {"role": "user", "content": "Describe this picture of 3 cats"}]
    parts = [SYSTEM, {"role": "user", "content": [
        {"type": "text", "text": "Describe this picture of 5 cats"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]}]
    other_image = [SYSTEM, {"role": "user", "content": [
        {"type": "text", "text": "Describe this picture of 5 cats"},
        {"type": "image_url", "image_url": {"url": "https://example.com/another.png"}},
    ]}]
    assert fingerprint(plain) == fingerprint(parts) == fingerprint(other_image)
    # An agent's later step (assistant tool call, tool result) stays in the task's family.
    later = [*plain, {"role": "assistant", "content": None, "tool_calls": []},
             {"role": "tool", "tool_call_id": "1", "content": "42 cats"}]
    assert fingerprint(later) == fingerprint(plain)
    assert fingerprint([*plain, {"role": "user", "content": "And dogs?"}]) != fingerprint(plain)


def test_the_key_is_the_same_in_another_process() -> None:
    # Python's hash() is salted per process; the key must not be.
    code = ("from atlas_middleware.teaching.families import family_of;"
            "print(family_of([{'role': 'user', 'content': 'What is 20 + 22?'}], {}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345"}).stdout.strip()
    assert out == family_of(QUESTION, {})


def test_an_explicit_tag_wins() -> None:
    assert family_of(user("What is 17% of 240?"), {"tools": TOOLS}, tag="  billing-faq ") == "t:billing-faq"
    assert family_of(QUESTION, {}, tag="Ünïcode tag / v2") == "t:Ünïcode tag / v2"


BAD_TAGS = [("", "must not be empty"), ("   ", "must not be empty"), (7, "must be a string"),
            ("x" * (MAX_TAG_CHARS + 1), "at most 128"), ("a\nb", "control characters"),
            ("tab\there", "control characters"), ("nul\x00", "control characters")]


@pytest.mark.parametrize(("tag", "message"), BAD_TAGS, ids=[m + repr(t)[:12] for t, m in BAD_TAGS])
def test_a_bad_tag_is_refused(tag: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        family_of(QUESTION, {}, tag=tag)


def test_a_bad_tag_is_refused_before_any_call(make_atlas, call) -> None:  # type: ignore[no-untyped-def]
    atlas, student, teacher = make_atlas()
    with pytest.raises(InvalidRequestError, match="atlas task must not contain control characters"):
        call(atlas, atlas={"task": "bad\ntag"})
    with pytest.raises(InvalidRequestError, match="atlas task must not be empty"):
        call(atlas, metadata={"atlas": {"task": ""}})
    assert student.calls == [] and teacher.calls == []


@pytest.mark.parametrize("teach", [True, False], ids=["taught", "opted-out"])
def test_the_key_reaches_the_report_and_the_sqlite_ledger(make_atlas, call, tmp_path: Path, teach: bool) -> None:  # type: ignore[no-untyped-def]
    atlas, *_ = make_atlas(ledger=f"sqlite:///{tmp_path / 'l.db'}")
    derived = call(atlas, atlas={"teach": teach}).atlas
    assert derived.task_family == family_of(QUESTION, {})
    tagged = call(atlas, atlas={"teach": teach, "task": "arithmetic"}).atlas
    assert tagged.task_family == "t:arithmetic"
    via_metadata = call(atlas, metadata={"atlas": {"task": "from-metadata", "teach": teach}}).atlas
    assert via_metadata.task_family == "t:from-metadata"
    rows = {r.call_id: r for r in atlas.ledger.records()}
    for report in (derived, tagged, via_metadata):
        assert rows[report.call_id].task_family == report.task_family
        assert rows[report.call_id].report().task_family == report.task_family
    only = atlas.ledger.records(LedgerQuery(task_family="t:arithmetic"))
    assert [r.call_id for r in only] == [tagged.call_id]


# The schema of a version 1 ledger, as atlas-middleware 1 created it.
V1_SCHEMA = """
CREATE TABLE atlas_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE atlas_calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT UNIQUE NOT NULL, created_at, student_model, teacher_model, policy, session_id,
    decision, reason, failed, tokens, tokens_saved, net_tokens, cost_usd,
    latency_ms, teacher_latency_ms, errors, prompt_sha256, prompt_chars,
    answer_sha256, answer_chars, prompt_text, answer_text, report_json
);
CREATE INDEX atlas_calls_created ON atlas_calls (created_at);
CREATE INDEX atlas_calls_session ON atlas_calls (session_id);
INSERT INTO atlas_meta VALUES ('schema_version', '1');
INSERT INTO atlas_calls (call_id, created_at, student_model, teacher_model, policy, session_id, decision,
    reason, failed, tokens, tokens_saved, net_tokens, cost_usd, latency_ms, teacher_latency_ms, errors,
    prompt_sha256, prompt_chars, answer_sha256, answer_chars, prompt_text, answer_text, report_json)
VALUES ('old-call', '2026-01-01T00:00:00+00:00', 'm', NULL, 'strict', NULL, 'student_only', 'opted_out', 0,
    '{}', NULL, NULL, NULL, 5.0, NULL, 0, 'ab', 2, NULL, NULL, NULL, NULL,
    '{"student_model": "m", "policy": "strict", "call_id": "old-call"}');
"""


def test_a_version_1_sqlite_ledger_is_migrated(make_atlas, tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
    conn.close()
    ledger = SQLiteLedger(path)
    assert ledger.schema_version() == SCHEMA_VERSION
    (old,) = ledger.records()
    assert old.call_id == "old-call" and old.task_family is None and old.report().task_family is None
    ledger.close()
    with sqlite3.connect(path) as conn:
        indexes = {row[1]: row[2] for row in conn.execute("PRAGMA index_list(atlas_calls)")}
        assert "atlas_calls_family" in indexes
        assert [r[2] for r in conn.execute("PRAGMA index_info(atlas_calls_family)")] == ["task_family"]
    conn.close()
    SQLiteLedger(path).close()  # reopening a migrated ledger is a no-op

    atlas, *_ = make_atlas(ledger=f"sqlite:///{path}")
    new = atlas.completion(model="m", messages=QUESTION, atlas={"task": "after-migration"}).atlas
    rows = atlas.ledger.records()
    assert [r.call_id for r in rows] == ["old-call", new.call_id]
    assert [r.task_family for r in rows] == [None, "t:after-migration"]


def test_a_newer_sqlite_ledger_is_refused(tmp_path: Path) -> None:
    from atlas_middleware.errors import LedgerError

    path = tmp_path / "future.db"
    SQLiteLedger(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE atlas_meta SET value = '999' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(LedgerError, match="newer"):
        SQLiteLedger(path)


# -- a mask is skipped only where it cannot match ---------------------------------------------

# Every character a mask starts or hinges on, and a few of each kind it must not confuse.
_TRIGGERS = "`\"“”‘’':/.@-0123456789٣ xXabcdefwWlLoO\n\t"


def _every_mask(text: str) -> str:
    """``normalise`` as its rules read: every mask's pass, none skipped."""
    for pattern, placeholder in families._MASKS:
        text = pattern.sub(placeholder, text)
    return families._SPACE.sub(" ", text).strip().casefold()


@settings(max_examples=400, deadline=None, derandomize=True)
@given(text=st.text(alphabet=_TRIGGERS, max_size=40))
def test_skipping_the_masks_a_text_cannot_match_never_changes_a_key(text: str) -> None:
    # ``normalise`` skips a mask whose required characters (a quote, "://" or ".", "@", "-",
    # a digit) are absent: a speed-up only, the key must stay what every pass gives.
    assert normalise(text) == _every_mask(text)


@pytest.mark.parametrize("text", [
    "", "see www.example.com now", "WWW.Example.COM", "mail ann@example.org", "id deadbeef-dead-beef-dead-beefdeadbeef",
    "at ٣:٤٥ on May ٣", "pay 0x1f or 12,000.50%", "say 'hi' and “yo” and ‘ok’ and `x` and \"q\"",
    "```\ncode 42\n```", "https://a.b/c?d=1", "plain words only",
])
def test_skipping_the_masks_keeps_every_rule_on_examples(text: str) -> None:
    assert normalise(text) == _every_mask(text)
