"""Final-answer extraction and equivalence.

Most degradations the ATLAS authors measured came from answer normalisation, not from
teaching, so equivalence here is semantic: numbers compare as numbers (thousand separators,
currency, units, percentages, fractions vs decimals), LaTeX goes through math-verify when
it is installed, and multiple-choice letters compare as letters.

Extraction order: the last ``\\boxed{}``, else the last ``<solution>`` block, else a
GSM8K ``#### x`` line, else "answer is ..." / "answer: ...", else the last number.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

_SOLUTION = re.compile(r"<solution>(.*?)</solution>", re.IGNORECASE | re.DOTALL)
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*[:\-]?\s*(.+)", re.IGNORECASE
)
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?%?|-?\.\d+")
_CHOICE = re.compile(r"^\(?([A-Ja-j])\)?(?:[.):]|\s|$)")
_LATEX_WRAPPERS = re.compile(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}")
_UNIT_TAIL = re.compile(r"^(-?[\d.,/]+%?)\s*[a-zA-Z$€£ ]*\.?$")


def _boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced."""
    start = text.rfind("\\boxed")
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


def extract_answer(text: str | None) -> str | None:
    """The final answer stated in ``text``, or None when it states none."""
    if not text:
        return None
    boxed = _boxed(text)
    if boxed:
        return boxed
    solutions = _SOLUTION.findall(text)
    if solutions:
        return solutions[-1].strip()
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip()
    stated = _ANSWER_IS.findall(text)
    if stated:
        candidate = stated[-1].strip().splitlines()[0].strip()
        # "The answer is 18 dollars." -> keep the number when the sentence has one.
        nums = _NUMBER.findall(candidate)
        if nums and not _CHOICE.match(candidate):
            return nums[0]
        return candidate.rstrip(".")
    nums = _NUMBER.findall(text)
    if nums:
        return nums[-1]
    return None


def _to_number(s: str) -> Fraction | None:
    s = s.strip().rstrip(".").strip()
    s = _LATEX_WRAPPERS.sub(r"\1", s)
    s = s.replace("\\$", "").replace("$", "").replace("€", "").replace("£", "")
    s = s.replace("\\!", "").replace("{,}", "").replace("\\,", "")
    s = s.strip()
    m = _UNIT_TAIL.match(s)
    if m:
        s = m.group(1)
    percent = s.endswith("%") or s.endswith("\\%")
    s = s.rstrip("%").rstrip("\\").strip()
    frac = re.fullmatch(r"\\[dt]?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s)
    if frac:
        s = f"{frac.group(1)}/{frac.group(2)}"
    # Thousand separators: only a comma followed by exactly three digits.
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = Fraction(num.strip()) / Fraction(den.strip())
        else:
            value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def _normalise(s: str) -> str:
    s = _LATEX_WRAPPERS.sub(r"\1", s)
    s = re.sub(r"\s+", " ", s.strip().strip("$").strip()).rstrip(".").lower()
    return s


def _choice(s: str) -> str | None:
    m = _CHOICE.match(s.strip())
    return m.group(1).upper() if m else None


@lru_cache(maxsize=4096)
def _math_verify(a: str, b: str) -> bool | None:
    try:
        from math_verify import parse, verify  # heavy (sympy): imported only when needed
    except ImportError:
        return None
    try:
        pa = parse(a if "$" in a or "\\" in a else f"${a}$")
        pb = parse(b if "$" in b or "\\" in b else f"${b}$")
        if not pa or not pb:
            return None
        return bool(verify(pa, pb)) or bool(verify(pb, pa))
    except Exception:  # math-verify raises on odd input; undecided, not equal
        return None


def answers_equivalent(a: str | None, b: str | None) -> bool:
    """True when two extracted answers mean the same thing."""
    if a is None or b is None:
        return False
    na, nb = _to_number(a), _to_number(b)
    if na is not None and nb is not None:
        return na == nb
    if _normalise(a) == _normalise(b):
        return True
    ca, cb = _choice(a), _choice(b)
    if ca and cb and len(a.strip()) <= 3 and len(b.strip()) <= 3:
        return ca == cb
    if na is not None or nb is not None or any(c in a + b for c in "\\^{}/"):
        return bool(_math_verify(a, b))
    return False


def same_final_answer(text_a: str | None, text_b: str | None) -> bool:
    """Do two responses state the same final answer? Identical texts always agree."""
    if text_a is not None and text_a.strip() and text_a.strip() == (text_b or "").strip():
        return True
    return answers_equivalent(extract_answer(text_a), extract_answer(text_b))
