"""Task families: which recurring task a call is an instance of. Pure, no I/O.

A family key groups the calls one application makes from one template (the same system
prompt, the same tools, the same question with different values), so that figures (and,
later, decisions) can be kept per task rather than per call. It is stored in the ledger
(``task_family``) and on the report (``CallReport.task_family``).

Two kinds of key, told apart by their prefix:

* ``t:<tag>``: the caller named the task (``atlas={"task": "billing-faq"}``, the proxy's
  ``x-atlas-task`` header, LangChain run metadata ``{"atlas_task": ...}``). The tag is kept
  as written, without surrounding whitespace; it must be a string of 1 to ``MAX_TAG_CHARS``
  characters with no control characters, else the call is refused (``InvalidRequestError``).
  A tag always wins over the fingerprint.
* ``f:<12 hex>``: derived when no tag is given: the first 12 hex digits of the SHA-256 of
  a JSON document ``{"v": FINGERPRINT_VERSION, "system": ..., "tools": [...], "user": ...}``
  (keys sorted, UTF-8). Deterministic across processes and machines (no ``hash()``).

What the fingerprint reads, and nothing else (not the model, the parameters, earlier turns
or the assistant's and tools' messages):

* ``system``: the text of every ``system`` and ``developer`` message, in order, joined by a
  newline, then *windowed* and *normalised* (below);
* ``tools``: the sorted, de-duplicated names of the OpenAI-format tools in
  ``params["tools"]`` (``{"type": "function", "function": {"name": ...}}``; a tool with a
  top-level ``name`` counts by that name);
* ``user``: the text of the *last* ``user`` message, windowed and normalised.

Only text counts: a message whose content is a list of parts contributes its ``text``
parts joined by a newline; images, audio and files are ignored.

Windowing bounds what is read: a text of more than ``HEAD_CHARS + TAIL_CHARS`` (4096 +
2048) characters is read as its first ``HEAD_CHARS`` and its last ``TAIL_CHARS`` characters,
each normalised on its own, joined by `` <cut> ``. A template's instructions sit at the
ends of its text; a document pasted in the middle changes the key only through its ends,
and a fingerprint of a 10 MB prompt costs what one of 6 KB does.

Normalising a text masks its literals, in this order, each with a placeholder:

1. quoted strings -> ``<str>``: fenced code (triple backticks), ```...```, ``"..."``,
   ``“...”`` and ``‘...’`` (with no other opening or closing quote of their kind inside),
   and ``'...'`` (single quotes only where the opening quote does not follow a letter or
   digit and the closing one is not followed by one, so apostrophes such as "don't" stay
   text); none spans a line, except fenced code;
2. URLs (``scheme://...`` where the scheme starts a word and does not follow ``+``, ``.``
   or ``-``; ``www....``) -> ``<url>``; e-mail addresses -> ``<email>`` (the part before
   the ``@`` is a whole run of letters, digits, ``_``, ``.``, ``+`` and ``-``);
3. UUIDs -> ``<id>``; hex ids (``0x`` followed by hex digits, or 8 or more hex digits with
   at least one decimal digit and one letter among them) -> ``<id>``;
4. dates and times -> ``<date>``/``<time>``: ISO dates and date-times (``2024-05-01``,
   ``2024-05-01T10:00:00Z``), ``01/05/2024``, ``1.5.2024``, a month name with a day and
   an optional year (``May 1st, 2024``, ``1 May 2024``), and clock times (``10:30``,
   ``10:30:15``, ``9:05 pm``);
5. numbers -> ``<num>``: an optional sign (where it does not follow a letter or digit),
   digits with optional ``,`` or ``_`` thousands separators, an optional decimal part, an
   optional exponent (``1e-9``) and an optional ``%`` (``.5`` counts too); digits inside a
   word are masked as well (``x2`` -> ``x<num>``);

then runs of whitespace become one space, the ends are trimmed, and the text is case
folded (``str.casefold``). A change to these rules changes ``FINGERPRINT_VERSION``, and
with it every derived key. Version 2 added the window and the e-mail, URL and curly-quote
rules as written above; version 1 read whole texts.

Every rule is one linear pass over the text: no pattern retries an unbounded run from each
of its characters (a hostile prompt of ``a.a.a...`` or ``x...x`` once cost seconds per
80 KB on the event loop). Where a pattern could, it is made possessive (``*+``) and its
start may not fall inside a run a start before it has already read.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from ..errors import InvalidRequestError

FINGERPRINT_VERSION = 2
HEAD_CHARS = 4096
TAIL_CHARS = 2048
_CUT = " <cut> "
MAX_TAG_CHARS = 128
TAG_PREFIX = "t:"
FINGERPRINT_PREFIX = "f:"
_HEX_CHARS = 12

_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
# (pattern, placeholder), applied in this order.
_MASKS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), placeholder)
    for pattern, placeholder in (
        (r"```[\s\S]*?```", "<str>"),
        (r"`[^`\n]*`", "<str>"),
        (r'"[^"\n]*"', "<str>"),
        # Quotes of a kind cannot hold their opening quote: "“““..." is one pass, not n.
        (r"“[^“”\n]*+”", "<str>"),
        (r"(?<![^\W_])‘[^‘’\n]*+’(?![^\W_])", "<str>"),
        (r"(?<![^\W_])'[^'\n]*'(?![^\W_])", "<str>"),
        # Neither a scheme nor an address starts inside a run a start before it has read.
        (r"\b(?<![+.\-])[a-z][a-z0-9+.\-]*+://[^\s<>]+|\bwww\.[^\s<>]+", "<url>"),
        (r"(?<![\w.+\-])[\w.+\-]++@[\w\-]++(?:\.[\w\-]++)++", "<email>"),
        (r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "<id>"),
        (r"\b0x[0-9a-f]+\b|\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", "<id>"),
        (r"\b\d{4}-\d{2}-\d{2}(?:[t ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:z|[+\-]\d{2}:?\d{2})?)?\b", "<date>"),
        (r"\b\d{1,2}[/.]\d{1,2}[/.]\d{2,4}\b", "<date>"),
        (rf"\b{_MONTH}\s+{_DAY}(?:,?\s+\d{{4}})?\b|\b{_DAY}\s+(?:of\s+)?{_MONTH}(?:,?\s+\d{{4}})?\b", "<date>"),
        (r"\b\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:\s*[ap]\.?m\.?\b)?", "<time>"),
        (r"(?:(?<![^\W_])[-+−])?(?:\d+(?:[,_]\d{3})*(?:\.\d+)?|\.\d+)(?:e[-+]?\d+)?%?", "<num>"),
    )
)
# What each mask cannot match without (its index in _MASKS): a text without any of them
# skips the mask's pass. None: a decimal digit (``\d``). The placeholders hold none of these
# characters, so looking at the text before any mask is exact. Most prompts hold no quotes,
# URLs or addresses: this halves the fingerprint's cost (bench/overhead.py).
_NEEDS: tuple[tuple[str, ...] | None, ...] = (
    ("`",), ("`",), ('"',), ("“",), ("‘",), ("'",), ("://", "."), ("@",), ("-",),
    None, None, None, None, None, None,
)
_DIGIT = re.compile(r"\d")
_SPACE = re.compile(r"\s+")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def normalise(text: str) -> str:
    """``text`` with its literals masked, whitespace collapsed and case folded (see above)."""
    if not text:
        return text
    digits = _DIGIT.search(text) is not None
    for (pattern, placeholder), needs in zip(_MASKS, _NEEDS, strict=True):
        if digits if needs is None else any(n in text for n in needs):
            text = pattern.sub(placeholder, text)
    return _SPACE.sub(" ", text).strip().casefold()


def windowed(text: str) -> str:
    """``text`` normalised, reading only its two ends when it is long (module docstring)."""
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return normalise(text)
    return normalise(text[:HEAD_CHARS]) + _CUT + normalise(text[-TAIL_CHARS:])


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the ``text`` parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def tool_names(tools: Any) -> list[str]:
    """Sorted, unique names of OpenAI-format tools (anything else is skipped)."""
    names: set[str] = set()
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else tool.get("name")
        if isinstance(name, str):
            names.add(name)
    return sorted(names)


def check_label(value: Any, what: str, max_chars: int, empty_hint: str) -> str:
    """A caller-chosen label (a task tag, a tenant, a session id), trimmed; ``InvalidRequestError``
    when it is not a string of 1 to ``max_chars`` characters without control characters.

    Such labels become state keys, ledger columns and headers, so a client must not store
    10 KB, or a newline, there. ``what`` names it in the message (``task``, ``tenant``).
    """
    if not isinstance(value, str):
        raise InvalidRequestError(f"atlas {what} must be a string, not {type(value).__name__}")
    text = str(value).strip()  # a plain str, also for a str subclass
    if not text:
        raise InvalidRequestError(f"atlas {what} must not be empty ({empty_hint})")
    if len(text) > max_chars:
        raise InvalidRequestError(f"atlas {what} is {len(text)} characters long; at most {max_chars} are allowed")
    if CONTROL_CHARS.search(text):
        raise InvalidRequestError(f"atlas {what} must not contain control characters (newlines, tabs, ...)")
    return text


def check_tag(tag: Any) -> str:
    """The tag, trimmed; ``InvalidRequestError`` when it cannot name a task."""
    return check_label(tag, "task", MAX_TAG_CHARS, "leave it out to derive the family")


def fingerprint(messages: Iterable[Any], params: dict[str, Any] | None = None) -> str:
    """The derived key ``f:<12 hex>`` of a request (module docstring)."""
    system: list[str] = []
    user = ""
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
        elif role == "user":
            user = text_of(message.get("content"))
    material = {
        "v": FINGERPRINT_VERSION,
        "system": windowed("\n".join(system)),
        "tools": tool_names((params or {}).get("tools")),
        "user": windowed(user),
    }
    data = json.dumps(material, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return FINGERPRINT_PREFIX + hashlib.sha256(data).hexdigest()[:_HEX_CHARS]


def family_of(messages: Iterable[Any], params: dict[str, Any] | None = None, tag: Any = None) -> str:
    """The call's family key: ``t:<tag>`` when a tag is given (validated), else the fingerprint."""
    if tag is not None:
        return TAG_PREFIX + check_tag(tag)
    return fingerprint(messages, params)
