"""Final-answer extraction and equivalence.

Most degradations the ATLAS authors measured came from answer normalisation, not from
teaching, so equivalence here is semantic:

* numbers compare as exact fractions after removing what does not change the value:
  thousand separators (``1,000``, ``1{,}000``, ``1\\,000``), currency (``$``, ``€``, ``£``,
  ``¥``, ``\\$``), units and trailing words (``18 dollars``, ``5 m^2``), a leading
  ``x =``, LaTeX wrappers (``\\text{}``, ``\\boxed{}``), number words up to twenty, mixed
  numbers (``2 1/2``) and ``\\frac``;
* a percentage equals its own number *or* its hundredth (``50%`` = ``50`` = ``0.5``),
  because data sets disagree on whether "what percent" is answered as 50 or 0.5;
* expressions, intervals and the rest of LaTeX go through math-verify (the ``math`` or
  ``eval`` extra) when it is installed;
* multiple-choice letters compare as letters (``(B)``, ``B.``, ``\\text{B}``, ``B) 42``).

Extraction order: the last ``\\boxed{}``, else the last ``<solution>`` block, else a GSM8K
``#### x`` line, else the last "answer is ..." / "answer: ...", else the last number.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

from .._redact import secret_logger

# Answers can be long and written to order by a prompt, so every pattern below reads a text
# in one pass: ``<solution>`` blocks are paired by a scan of their tags (a lazy ``(.*?)``
# retries the rest of the text from every unclosed tag), and no quantifier over spaces or
# lines can be retried from each of their characters.
_SOLUTION_TAG = re.compile(r"<(/?)solution>", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*(?:[:–—-]\s+)?(.+)", re.IGNORECASE
)
# A number as people write it: optional sign and currency, thousand groups only when they
# are groups of three (so "5, and 3" is two numbers), decimals, a fraction, a percent.
_NUMBER = re.compile(
    r"-?[$€£¥]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?\s*%?|-?\.\d+%?"
)
_INLINE_MATH = re.compile(r"\$\$?(.+?)\$?\$")
_LATEX_WRAPPERS = re.compile(r"\\(?:text|mathrm|textbf|mbox|mathbf|textrm|operatorname)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"(-?)\\[dt]?frac\s*\{\s*(-?[\d.]+)\s*\}\s*\{\s*(-?[\d.]+)\s*\}")
_MIXED = re.compile(r"(-?\d+)\s+(\d+)\s*/\s*(\d+)")
_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")
_ASSIGNMENT = re.compile(r"^[a-zA-Z]\w*\s*=\s*(?=\S)")
# Units and trailing words that do not change a number: at least two letters ("cm",
# "dollars", "sq ft"), a single-letter SI unit after a space, or a symbol. "5x" is algebra.
_UNIT_TAIL = re.compile(
    r"^(?P<num>-?[\d.,/]++(?:\s*+%)?)"
    r"(?:\s*+(?P<word>[a-zA-Z°][a-zA-Z°./\s]++(?:\^\d+|²|³)?)|\s++(?P<si>[mgslh])(?:\^\d+|²|³)?|\s*+°)?\s*+\.?$"
)
_CHOICE_BARE = re.compile(r"\(?([A-Ja-j])\)?[.:)]?")
_CHOICE_LEAD = re.compile(r"\(?([A-J])\)?[.:)]\s+\S")
_CHOICE_PAREN = re.compile(r"\(([A-J])\)")
_CHOICE_LINE = re.compile(r"^[^\S\n]*+\**([A-J])[.:)]\**(?:\s|$)", re.MULTILINE)
_PERCENT_WORD = re.compile(r"(?<!\s)\s*+(?:\\%|percent\b|per\s+cent\b)", re.IGNORECASE)
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}

_MAX_SYMBOLIC_CHARS = 200

log = secret_logger("atlas_middleware")


def _boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def _solutions(text: str) -> list[str]:
    """The ``<solution>...</solution>`` blocks, as ``<solution>(.*?)</solution>`` finds them:
    each opening tag runs to the first closing tag after it; tags in between are content."""
    found: list[str] = []
    start: int | None = None
    for tag in _SOLUTION_TAG.finditer(text):
        if not tag.group(1):
            start = tag.end() if start is None else start
        elif start is not None:
            found.append(text[start : tag.start()])
            start = None
    return found


def _from_statement(candidate: str) -> str:
    """The answer inside "the answer is ..." (first line of what follows)."""
    candidate = candidate.strip().splitlines()[0].strip().strip("*").strip()
    boxed = _boxed(candidate)
    if boxed:
        return boxed
    math = _INLINE_MATH.search(candidate)
    if math:  # "The answer is $\frac{1}{2}$." keeps the whole expression
        return math.group(1).strip()
    if _CHOICE_BARE.fullmatch(candidate.rstrip(".")) or _CHOICE_LEAD.match(candidate):
        return candidate.rstrip(".")
    if "\\" in candidate:
        return candidate.rstrip(".").strip()
    if "=" in candidate:  # "3 + 4 = 7" states 7
        candidate = candidate.rsplit("=", 1)[1]
    nums = _NUMBER.findall(candidate)
    if nums:  # "The answer is 18 dollars." -> 18; a trailing sentence does not matter
        return str(nums[0]).strip()
    return candidate.rstrip(".").strip()


def stated_answer(text: str | None) -> str | None:
    """The final answer ``text`` marks explicitly (boxed, ``<solution>``, ``####``,
    "the answer is ..."), or None. Unlike ``extract_answer``, no last-number guess."""
    if not text:
        return None
    boxed = _boxed(text)
    if boxed:
        return boxed
    solutions = _solutions(text)
    if solutions and solutions[-1].strip():
        return str(solutions[-1]).strip()
    hashes = _HASHES.findall(text)
    if hashes:
        return str(hashes[-1]).strip()
    stated = [s for s in _ANSWER_IS.findall(text) if s.strip()]
    if stated:
        return _from_statement(str(stated[-1])) or None
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer stated in ``text``, else its last number, else None (for grading)."""
    if not text:
        return None
    stated = stated_answer(text)
    if stated is not None:
        return stated
    nums = _NUMBER.findall(text)
    if nums:
        return str(nums[-1]).strip()
    return None


def extract_choice(text: str | None, labels: Sequence[str] = "ABCDE") -> str | None:
    """The multiple-choice letter a response settles on, or None.

    The stated answer (boxed, "answer is (C)") first, then the letters small models write
    without stating an answer ("... so (C) photosynthesis").
    """
    if not text:
        return None
    allowed = {label.upper() for label in labels}
    stated = extract_answer(text)
    if stated is not None:
        letter = _choice(_LATEX_WRAPPERS.sub(r"\1", stated).strip())
        if letter in allowed:
            return letter
    # Then the last "(C)", then the last line that starts "C." / "C)"; a bare capital
    # letter inside prose is not trusted ("A" and "I" are English words).
    for pattern in (_CHOICE_PAREN, _CHOICE_LINE):
        found = [letter for letter in pattern.findall(text) if letter in allowed]
        if found:
            return str(found[-1])
    letter = _choice(text) if len(text.strip()) <= 4 else None
    return letter if letter in allowed else None


def _clean(s: str) -> str:
    """Remove what never changes an answer's meaning: wrappers, spacing, a final period."""
    s = s.strip()
    boxed = _boxed(s)
    if boxed is not None and s.startswith(("\\boxed", "\\fbox")):
        s = boxed
    for _ in range(3):  # nested wrappers: \text{\textbf{B}}
        s = _LATEX_WRAPPERS.sub(r"\1", s)
    s = s.replace("−", "-").replace("\\left", "").replace("\\right", "")
    s = s.replace("\\!", "").replace("\\,", "").replace("{,}", ",").replace("\\ ", " ")
    # A final period may stand outside the math delimiters ("$x+1$.") or inside them.
    s = s.strip().rstrip(".").strip().strip("$").strip()
    return s.rstrip(".").strip()


def _number(s: str) -> tuple[Fraction, bool] | None:
    """The value of a numeric answer and whether it was written as a percentage."""
    s = _clean(s)
    s = _ASSIGNMENT.sub("", s)
    s = s.replace("\\$", "").replace("$", "").replace("€", "").replace("£", "").replace("¥", "")
    s = _PERCENT_WORD.sub("%", s).strip()
    word = _NUMBER_WORDS.get(s.lower())
    if word is not None:
        return Fraction(word), False
    frac = _FRAC.match(s)
    if frac:  # \frac{3}{4} cup -> 3/4 cup
        s = f"{frac.group(1)}{frac.group(2)}/{frac.group(3)}{s[frac.end():]}"
    m = _UNIT_TAIL.match(s)
    if m:
        s = m.group("num")
    percent = s.endswith("%")
    s = s.rstrip("%").strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    mixed = _MIXED.fullmatch(s)
    try:
        if mixed:
            whole, num, den = (Fraction(g) for g in mixed.groups())
            value = abs(whole) + num / den
            value = -value if mixed.group(1).startswith("-") else value
        elif "/" in s:
            num_s, den_s = s.rsplit("/", 1)  # "3/4/5" is (3/4)/5
            value = Fraction(num_s.strip()) / Fraction(den_s.strip())
        else:
            value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return value, percent


def _numbers_equal(a: tuple[Fraction, bool], b: tuple[Fraction, bool]) -> bool:
    (va, pa), (vb, pb) = a, b
    if pa == pb:
        return va == vb
    # One side is a percentage: "50%" answers "50" and "0.5" alike.
    pct, other = (va, vb) if pa else (vb, va)
    return other in (pct, pct / 100)


def _normalise(s: str) -> str:
    return re.sub(r"\s+", " ", _clean(s)).lower()


def _choice(s: str) -> str | None:
    """The letter of a multiple-choice answer: ``B``, ``(b)``, ``B.``, ``B) 42``."""
    s = _clean(s)
    m = _CHOICE_BARE.fullmatch(s)
    if m:
        return m.group(1).upper()
    m = _CHOICE_LEAD.match(s)
    return m.group(1) if m else None


@lru_cache(maxsize=8192)
def _math_verify(a: str, b: str) -> bool | None:
    try:
        from math_verify import parse, verify  # heavy (sympy): imported only when needed
    except ImportError:
        return None
    if len(a) > _MAX_SYMBOLIC_CHARS or len(b) > _MAX_SYMBOLIC_CHARS:
        return None  # a final answer is short; long text is prose, not worth sympy's time
    # math-verify's timeouts use SIGALRM, which only the main thread may set; elsewhere the
    # length cap above is what keeps sympy from running away.
    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        pa = parse(a if "$" in a else f"${a}$", parsing_timeout=timeout)  # type: ignore[arg-type,unused-ignore]
        pb = parse(b if "$" in b else f"${b}$", parsing_timeout=timeout)  # type: ignore[arg-type,unused-ignore]
        if not pa or not pb:
            return None
        return bool(verify(pa, pb, timeout_seconds=timeout)) or bool(verify(pb, pa, timeout_seconds=timeout))
    except Exception as exc:  # math-verify raises on odd input: undecided, not equal
        log.debug("math-verify failed on %r vs %r: %s", a, b, exc)
        return None


def answers_equivalent(a: str | None, b: str | None) -> bool:
    """True when two extracted answers mean the same thing."""
    if a is None or b is None or not a.strip() or not b.strip():
        return False
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return _numbers_equal(na, nb)
    if _normalise(a) == _normalise(b):
        return True
    ca, cb = _choice(a), _choice(b)
    if ca is not None and cb is not None:
        return ca == cb
    if ca is not None or cb is not None:
        return False  # a letter never equals a number or an expression
    ca_, cb_ = _clean(a), _clean(b)
    if na is not None or nb is not None or any(c in ca_ + cb_ for c in "\\^{}/()[]+-*="):
        return bool(_math_verify(ca_, cb_))
    return False


def same_final_answer(text_a: str | None, text_b: str | None) -> bool:
    """Do two responses state the same final answer? Identical texts always agree.

    Only explicitly marked answers count: two different explanations that merely end on
    the same number ("see step 3") must go to a judge, not be waved through as agreement.
    """
    if text_a is not None and text_a.strip() and text_a.strip() == (text_b or "").strip():
        return True
    return answers_equivalent(stated_answer(text_a), stated_answer(text_b))
