"""Find the sentences of a teacher's guidance that give the student an answer.

Guidance must teach the method, not hand over the result: a leaked answer turns the guided
call into copying, and an evaluation of teaching must not count it as a teaching gain. The
published ATLAS reward even pays a teacher for a leak (the student gets it right with few
teaching tokens), so a trained teacher can have learned to leak.

A sentence leaks when it states a specific value as the answer or as a computed result:

* an explicit statement: "the answer is 42", "**Answer:** 42", "final answer: 2 1/2",
  "the correct answer is (B)", "option B is correct", ``\\boxed{42}``, ``#### 42``;
* an arrival: "you should land on 40.8", "you'll end up with $18", "which gives 42";
* a result: "the total is $240", "the value of x is 4", "so x = 4.";
* a computed equation: "16 - 3 - 4 = 9", "$3 \\times 4 = 12$".

What does not leak, on purpose: words about the answer's form ("make sure the answer is in
cm", "your answer should be a fraction", "put it in \\boxed{}"), conversions and formulas
("1 hour = 60 minutes", "area = length x width"), restating the task's equation
("2x + 3 = 11"), and counts of structure ("you should get 2 equations"). The cases are
pinned by a table in ``tests/test_leaks.py``.

This is pattern matching, not understanding: it errs on the side of finding leaks in
sentences that pair the answer with a value, and misses answers stated in other words
("she keeps eighteen dollars"). The flow's ``leak_action`` decides what a find means.
"""

from __future__ import annotations

import re
from functools import cache

from .markup import fold

_NUM = r"[-−]?[$€£¥]?\s?\d[\d,]*(?:\.\d+)?(?:\s+\d+\s*/\s*\d+|\s*/\s*\d+)?\s*%?"
_SIMPLE = r"\(?[-−]?\d[\d,]*(?:\.\d+)?\)?"
_CHOICE = r"(?-i:\(?[A-E]\)?)(?=\s*(?:[.,;:!)]|$))"
# Nouns that count parts of the method, not the answer ("you should get 2 equations").
_STRUCTURE = (
    r"(?!\s*(?:equations?|terms?|cases?|steps?|parts?|values?|solutions?|variables?|factors?|"
    r"digits?|decimal\s+places?|significant\s+figures?|unknowns?|fractions?|numbers?|"
    r"possibilit(?:y|ies)|groups?|roots?|options?|choices?|conditions?|stages?|pieces?|pairs?)\b)"
)
_QUALIFIER = r"(?:(?:approximately|about|exactly|roughly|around|just|precisely|simply|equal\s+to)\s+)?"
_COPULA = (
    r"(?:is(?:\s+not|n't)?|=|:|-|–|—|should\s+be|will\s+be|would\s+be|must\s+be|equals|"
    r"comes?\s+(?:out\s+)?to|works\s+out\s+to)"
)

# Compiled on first use (``_patterns``): a few milliseconds a process need not pay at import.
_PATTERN_SOURCES = (
    # "the answer is 42", "Answer: 42", "the correct answer is (B)"
    rf"\banswer\b\s*{_COPULA}\s*{_QUALIFIER}[:\-]?\s*(?:{_NUM}{_STRUCTURE}|{_CHOICE})",
    r"####\s*[-−$]?\s*\d",
    # "you should land on 40.8", "you'll end up with $18", "we get 18"
    rf"\b(?:you|we|she|he|they)\s*(?:'ll|\s+will|\s+should|\s+would|\s+must|\s+ought\s+to)?"
    rf"\s+(?:get|obtain|find|arrive\s+at|land\s+on|end\s+up\s+(?:with|at)|reach|come\s+to|come\s+up\s+with)"
    rf"\s+(?:a\s+(?:total|result|value|answer)\s+of\s+)?{_QUALIFIER}{_NUM}{_STRUCTURE}",
    # "which gives 42", "that leaves 9 eggs", "it equals 12"
    rf"\b(?:which|this|that|it|so)\s+(?:gives|yields|results\s+in|comes\s+(?:out\s+)?to|works\s+out\s+to|"
    rf"equals|leaves|makes)\s+(?:you\s+|us\s+)?(?:a\s+total\s+of\s+)?{_QUALIFIER}{_NUM}{_STRUCTURE}",
    # "the total is $240", "the value of x is 4", "the result should be 3/4"
    rf"\b(?:result|total|solution|sum|product|difference|quotient|value\s+of\s+\w+|"
    rf"final\s+(?:value|amount|count|number|price|cost))\s+{_COPULA}\s*{_QUALIFIER}{_NUM}{_STRUCTURE}",
    # "so x = 4." closing a sentence
    rf"(?:^|\b(?:so|thus|therefore|hence|then|giving|gives|get|got|find|yielding)\s+)[a-z]\s*=\s*{_NUM}\s*[.!]?\s*$",
    # "choose (C)", "option B is correct", "B is the right choice"
    rf"\b(?:choose|pick|select|go\s+with|circle)\s+(?:option\s+|choice\s+)?{_CHOICE}",
    r"\b(?:option|choice)\s+(?-i:\(?[A-E]\)?)\s+is\s+(?:the\s+)?(?:correct|right)\b",
    r"(?<![\w(])(?-i:\(?[A-E]\)?)\s+is\s+the\s+(?:correct|right)\s+(?:answer|option|choice)\b",
)


# "16 - 3 - 4 = 9", "3 × 4 = 12": a computation and its result. A search for the whole
# would start again at every number of a long chain ("1+1+1+..." with no "="), reading the
# rest of the chain each time; instead each match reads one maximal chain, possessively,
# and says whether "= result" follows it (no shorter chain can be followed by "="); a
# number without an operator is read alone, so no result is taken from a chain after it.
_CHAIN_SOURCE = (
    rf"(?<![\w.]){_SIMPLE}\s*+(?:(?P<ops>(?:[+\-−×x*/÷·]\s*+{_SIMPLE}\s*+)++)(?P<result>=\s*{_NUM})?)?"
)


@cache
def _patterns() -> list[re.Pattern[str]]:
    return [re.compile(p, re.IGNORECASE) for p in _PATTERN_SOURCES]


@cache
def _chain() -> re.Pattern[str]:
    return re.compile(_CHAIN_SOURCE, re.IGNORECASE)


def _computes(sentence: str) -> bool:
    """Whether ``sentence`` holds a computation and its result (one pass over it)."""
    return any(m.group("result") for m in _chain().finditer(sentence))


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")
_LATEX = (
    (re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"(\1)/(\2)"),
    (re.compile(r"\\times\b"), "×"),
    (re.compile(r"\\cdot\b"), "·"),
    (re.compile(r"\\div\b"), "÷"),
    (re.compile(r"\\(?:left|right)\b|\\[()\[\]]|\\,|\\!|\\\$|\$|\*\*|__|`"), ""),
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def _sentences(text: str) -> list[str]:
    out: list[str] = []
    for line in text.splitlines():
        out.extend(s for s in _SENTENCE_END.split(line) if s.strip())
    return out


def _normalised(sentence: str) -> str:
    s = sentence
    for pattern, repl in _LATEX:
        s = pattern.sub(repl, s)
    return re.sub(r"[ \t]+", " ", s).strip()


def _boxed_leak(sentence: str) -> bool:
    # "\boxed{42}" and "\boxed{B}" leak; "\boxed{}" and "\boxed{N}" name the format.
    return any(re.search(r"\d", inner) or re.fullmatch(r"\s*\(?[A-E]\)?\s*", inner)
               for inner in _BOXED.findall(sentence))


def leaks(sentence: str) -> bool:
    """Whether one sentence states an answer or a computed result (read through invisible
    and look-alike characters: "the ａｎｓｗｅｒ is 42" leaks too)."""
    sentence = fold(sentence)
    if _boxed_leak(sentence):
        return True
    s = _normalised(sentence)
    return any(p.search(s) for p in _patterns()) or _computes(s)


def find_leaks(guidance: str) -> list[str]:
    """The sentences of ``guidance`` that leak, in order (empty when none does)."""
    return [s.strip() for s in _sentences(guidance) if leaks(s)]


def strip_leaks(guidance: str) -> str:
    """``guidance`` without its leaking sentences; lines and the rest kept as written."""
    kept_lines = []
    for line in guidance.splitlines():
        parts = [s for s in _SENTENCE_END.split(line) if s.strip()]
        kept = [s for s in parts if not leaks(s)]
        if parts and not kept:
            continue  # the whole line leaked
        kept_lines.append(" ".join(kept) if len(kept) != len(parts) else line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept_lines)).strip()
