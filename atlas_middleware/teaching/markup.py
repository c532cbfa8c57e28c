"""Our markup in text that others wrote, found the way a model reads it.

A model does not see zero-width, bidi and other format characters (Unicode category Cf),
reads a fullwidth ``＜`` as ``<``, and a mathematical bold ``𝐯`` or a Cyrillic ``е`` as the
letter it looks like. So the tags our parsers and prompts rely on (``<teaching>``,
``<verdict>``, a judge prompt's ``<answer_A_...>``) are looked for through a *fold*: format
characters dropped, each other character replaced by its NFKC form, then a short table of
Latin look-alikes that NFKC leaves alone. Three uses:

* ``rewrite(text, names, opener)``: every tag of ``names`` that the fold sees becomes
  ``opener`` + ``/``? + name + ``>``?, format characters are dropped, and everything else
  stays as written. ``prompts.defuse`` rewrites with ``‹`` (inert) what the user or the
  student wrote; ``canonical`` rewrites with ``<`` what a teacher or judge wrote, so the
  parsers read its own tags in whatever form it wrote them. The text itself is not
  NFKC-normalised: ``x²`` must not reach a judge as ``x2``, nor ``½`` as ``1⁄2``.
* ``fold(text)``: the folded text, for patterns that only look (answer leaks, a verdict).
* ``aimed_at_judge(text)``: whether an answer carries verdict-like markup, a judge prompt's
  delimiter or an instruction to the judge (``judges.py`` takes no verdict about it).

``‹`` is never folded to ``<``: a defused tag that a model echoes back stays inert to our
parsers. Every function walks its text once, with patterns that cannot backtrack beyond a
constant, and ASCII text (the common case) skips the fold.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterable
from functools import lru_cache

# Latin look-alikes NFKC keeps apart (Cyrillic and Greek letters in our tag names' alphabet).
_LOOKALIKES = str.maketrans({
    "\u0430": "a", "\u0441": "c", "\u0501": "d", "\u0435": "e", "\u04bb": "h", "\u0456": "i", "\u0458": "j",
    "\u043e": "o", "\u0440": "p", "\u0455": "s", "\u0443": "y", "\u0445": "x", "\u0261": "g", "\u03bf": "o",
    "\u03b1": "a", "\u03b9": "i", "\u03ba": "k", "\u03bd": "v", "\u03c4": "t", "\u03c1": "p", "\u03c5": "u",
    "\u0410": "A", "\u0412": "B", "\u0415": "E", "\u041a": "K", "\u041c": "M", "\u041d": "H", "\u041e": "O",
    "\u0420": "P", "\u0421": "C", "\u0422": "T", "\u0425": "X", "\u0406": "I", "\u0405": "S", "\u0391": "A",
    "\u0392": "B", "\u0395": "E", "\u0396": "Z", "\u0397": "H", "\u0399": "I", "\u039a": "K", "\u039c": "M",
    "\u039d": "N", "\u039f": "O", "\u03a1": "P", "\u03a4": "T", "\u03a5": "Y", "\u03a7": "X",
})
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_TABLE_MAX = 1 << 16


def _fold_char(ch: str, loose: bool = False) -> str:
    category = unicodedata.category(ch)
    if category == "Cf" or (loose and category == "Mn"):
        return ""
    return unicodedata.normalize("NFKC", ch).translate(_LOOKALIKES)


class _Table(dict[int, str]):
    """A ``str.translate`` table filled the first time each character is seen, so a pass
    over a text runs at C speed after its first few characters (at most ``_TABLE_MAX``
    entries are kept: a text of many distinct characters cannot grow it without bound)."""

    def __init__(self, fn: Callable[[str], str]) -> None:
        super().__init__()
        self.fn = fn

    def __missing__(self, key: int) -> str:
        value = self.fn(chr(key))
        if len(self) < _TABLE_MAX:
            self[key] = value
        return value


_FOLD = _Table(_fold_char)
_FOLD_LOOSE = _Table(lambda ch: _fold_char(ch, loose=True))
_STRIP = _Table(lambda ch: "" if unicodedata.category(ch) == "Cf" else ch)
_ONE_TO_ONE = _Table(lambda ch: "1" if len(_fold_char(ch)) == 1 else "0")


def fold(text: str, *, loose: bool = False) -> str:
    """``text`` as a model reads it (module docstring); ``loose`` also drops combining marks."""
    return text if text.isascii() else text.translate(_FOLD_LOOSE if loose else _FOLD)


def strip_format(text: str) -> str:
    """``text`` without format characters (zero-width, bidi controls, tag characters, BOM)."""
    return text if text.isascii() else text.translate(_STRIP)


class _Folded:
    """The fold of a text, with the way back: folded offsets to the original ones.

    Segments are stretches that fold one character to one (ASCII, fullwidth forms, most
    look-alikes; merged while their offsets keep step) and single characters whose fold
    is empty or longer, in order, so one bisection maps an offset.
    """

    def __init__(self, text: str) -> None:
        self.fstarts: list[int] = []
        self.ostarts: list[int] = []
        self.runs: list[bool] = []
        if "0" not in text.translate(_ONE_TO_ONE):  # no character vanishes or grows
            self._add(0, 0, run=True)
            self.text = text.translate(_FOLD)
            return
        parts: list[str] = []
        at = pos = 0
        for m in _NON_ASCII.finditer(text):
            for start, end in ((pos, m.start()), (m.start(), m.end())):
                piece = text[start:end]
                if "0" not in piece.translate(_ONE_TO_ONE):
                    parts.append(piece.translate(_FOLD))
                    self._add(at, start, run=True)
                    at += end - start
                    continue
                for i in range(start, end):
                    folded = _FOLD[ord(text[i])]
                    parts.append(folded)
                    self._add(at, i, run=False)
                    at += len(folded)
            pos = m.end()
        parts.append(text[pos:])
        self._add(at, pos, run=True)
        self.text = "".join(parts)

    def _add(self, at: int, origin: int, run: bool) -> None:
        if run and self.runs and self.runs[-1] and self.ostarts[-1] - self.fstarts[-1] == origin - at:
            return  # continues the stretch before it
        self.fstarts.append(at)
        self.ostarts.append(origin)
        self.runs.append(run)

    def origin(self, p: int) -> int:
        """The original offset of the character the folded offset ``p`` came from."""
        k = bisect_right(self.fstarts, p) - 1
        return self.ostarts[k] + (p - self.fstarts[k] if self.runs[k] else 0)


@lru_cache(maxsize=16)
def _tag_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    # Whitespace runs are read possessively: "<" and thousands of spaces is one step, never
    # a split of the run between two repeats, so a search is linear in the text.
    return re.compile(r"<\s*+(/\s*+)?(" + "|".join(names) + r")(\s*+>)?", re.IGNORECASE)


def rewrite(text: str, names: Iterable[str], opener: str) -> str:
    """Every tag of ``names`` the fold sees, rewritten ``opener[/]name[>]``; format
    characters dropped; the rest as written. ``names`` are regex alternatives that end
    at a word boundary (``verdict\\b``, ``answer\\w*``)."""
    pattern = _tag_pattern(tuple(names))

    def tag(m: re.Match[str]) -> str:
        return opener + ("/" if m.group(1) else "") + m.group(2) + (">" if m.group(3) else "")

    if text.isascii():
        return pattern.sub(tag, text)
    if not pattern.search(fold(text)):  # the common case: no tag, no offsets to map
        return strip_format(text)
    folded = _Folded(text)
    out: list[str] = []
    pos = 0
    for m in pattern.finditer(folded.text):
        start, end = folded.origin(m.start()), folded.origin(m.end() - 1) + 1
        out += (strip_format(text[pos:start]), tag(m))
        pos = end
    out.append(strip_format(text[pos:]))
    return "".join(out)


PARSED_TAGS = (r"thinking\b", r"think\b", r"teaching\b", r"level\b", r"verdict\b")
"""The tags the teacher-reply parser and the verdict reader look for."""


def canonical(text: str) -> str:
    """A teacher's or judge's reply with its tags in plain ASCII, however it wrote them."""
    return rewrite(text, PARSED_TAGS, "<")


# What an answer carries when it talks to the judge rather than to the user: a verdict
# tag or one of a judge prompt's delimiters behind anything that reads as a bracket, or an
# instruction about instructions. "<answer>" alone is not here: students write it.
_BRACKET = r"[<\u2039\u00ab\u3008\u27e8\u02c2\u1438\[]"
# The phrase search looks at most 60 characters past each "ignore": bounded, not backtracking.
_AIMED = (
    ("verdict-like markup", re.compile(_BRACKET + r"\s*+(?:/\s*+)?verdict\b", re.IGNORECASE)),
    ("a judge prompt's delimiter",
     re.compile(_BRACKET + r"\s*+(?:/\s*+)?(?:answer_\w|task_data|student_plan)", re.IGNORECASE)),
    ("an instruction to the judge", re.compile(
        r"\b(?:ignore|disregard|forget|override)\b[^.!?\n]{0,60}?"
        r"\b(?:instructions?|prompts?|rules|guidelines|directions)\b"
        r"|\b(?:note|message|instructions?|reminder)\s++(?:to|for)\s++(?:the\s++|any\s++)?(?:ai\s++)?"
        r"(?:judge|grader|evaluator|reviewer)s?\b"
        r"|\b(?:dear|attention)(?:\s*+,)?\s++(?:ai\s++)?(?:judge|grader|evaluator)\b"
        r"|^[ \t]*+(?:judge|grader|evaluator)[ \t]*+:",
        re.IGNORECASE | re.MULTILINE,
    )),
)


def aimed_at_judge(text: str) -> str | None:
    """What in ``text`` addresses a judge (module docstring), or None."""
    seen = fold(text, loose=True)
    for what, pattern in _AIMED:
        if pattern.search(seen):
            return what
    return None
