"""The answer-leak table: what counts as giving the student the answer, and what does not.

Each row was checked by hand; the patterns in ``teaching/leaks.py`` answer to this table.
"""

from __future__ import annotations

import pytest

from atlas_middleware.teaching.leaks import find_leaks, leaks, strip_leaks

# Sentences that name the answer's form, a conversion, a formula or a count of steps.
NON_LEAKS = [
    'Make sure the answer is in cm.',
    'Your answer should be a fraction in lowest terms.',
    'Express the answer in dollars.',
    'Check whether your answer is reasonable.',
    'The answer should be a whole number of eggs.',
    'Remember that 1 hour = 60 minutes.',
    '1 km = 1000 m, so convert the distance first.',
    'Use area = length × width.',
    'Put your final answer in \\boxed{}.',
    'Write the final answer as \\boxed{N}.',
    'Set up the equation 2x + 3 = 11 from the statement.',
    'You should get 2 equations in two unknowns.',
    'The answer is not just the sum; subtract the discount.',
    'The answer is whatever is left after the 3 deductions.',
    'Answer format: a single number.',
    'There are 3 steps: find the rate, the time, then the distance.',
    'The solution is to work backwards from the end.',
    'Start by computing 16 - 3 - 4, the eggs that are left.',
    'Divide the total by 4 to find each share.',
    'Convert 2 hours to minutes before multiplying by 3.',
    'The answer is in the units the question asks for.',
    'Be careful: 50% of a number is half of it.',
    "Don't forget that a dozen = 12.",
    'Your answer is likely off by a factor of 10.',
    'Round your answer to 2 decimal places.',
    'Let n = 5 for the first term and look for the pattern.',
    'A common mistake is to add the 20% instead of subtracting it.',
    'If you got a negative number, re-check the sign of the discount.',
    'You need to find 3 things before you can add them.',
]
# Sentences that state an answer or a computed result.
LEAKS = [
    'The answer is 42.',
    'The final answer is 40.8.',
    'So you get \\boxed{42}.',
    '**Answer:** 42',
    'Answer: 42',
    '#### 42',
    'You should land on 40.8.',
    'You should get 18.',
    "You'll end up with $18.",
    'That leaves 9 eggs, and 9 × 2 = 18.',
    '16 - 3 - 4 = 9',
    '$3 \\times 4 = 12$',
    '\\frac{3}{4} + \\frac{1}{4} = 1',
    'The answer should be 7.',
    'The correct answer is (B).',
    'The answer is B.',
    'Choose (C).',
    'The total is $240.',
    'So x = 4.',
    'This gives 42 as the final result.',
    'Which comes to 18 dollars.',
    'The result should be 3/4.',
    'Final answer: 2 1/2',
    'The answer is approximately 3.14.',
    'Verify that your answer is 42.',
    "If your answer isn't 42, check the carry.",
    'The value of x is 4.',
    'Option B is correct.',
    'The sum is 1,250.',
    'You will find that it equals 12.',
    'The answer is $18 per day.',
    'The answer is 5 cm.',
]


def test_the_table_is_big_enough() -> None:
    assert len(NON_LEAKS) + len(LEAKS) >= 40 and len(set(NON_LEAKS) | set(LEAKS)) == len(NON_LEAKS) + len(LEAKS)


@pytest.mark.parametrize("sentence", NON_LEAKS)
def test_harmless_guidance_is_not_a_leak(sentence: str) -> None:
    assert not leaks(sentence)


@pytest.mark.parametrize("sentence", LEAKS)
def test_stated_answers_are_leaks(sentence: str) -> None:
    assert leaks(sentence)


def test_find_and_strip_work_per_sentence() -> None:
    guidance = "Carry the one. The answer is 42.\n16 - 3 - 4 = 9\nCheck the units, then add."
    assert find_leaks(guidance) == ["The answer is 42.", "16 - 3 - 4 = 9"]
    assert strip_leaks(guidance) == "Carry the one.\nCheck the units, then add."
    assert strip_leaks("The answer is 42.") == ""
    assert find_leaks("Make sure the answer is in cm.") == []
