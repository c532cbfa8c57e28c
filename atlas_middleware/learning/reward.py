"""The adaptive-teaching reward, computed the way the published training code computes it. Pure.

Source, read (not copied): ``Arc-Computer/RCL``, ``trainers/teacher_rewards.py``, class
``AdaptiveTeachingReward`` (``__call__``), with its settings in
``configs/trainer/reward/adaptive_teaching.yaml`` (``efficiency_weight: 1.0``,
``degradation_penalty_multiplier: 2.0``). As coded there, for one teacher completion:

=========================================  ===============================================
the student's answers (1 right, 0 wrong)   reward
=========================================  ===============================================
no ground truth                            0.0
with teaching worse than without           0.0 (the documented 2x degradation penalty is
(delta < 0)                                read from the config but never applied)
equal, both right                          0.5 * (1 + w * eff)
equal, both wrong                          0.0
with teaching better (delta > 0)           delta * (1 + w * eff)
=========================================  ===============================================

where ``delta`` = correct with teaching minus correct without, ``w`` the efficiency weight
and ``eff = 100 / (100 + n)``, ``n`` the number of tokens of the teaching: the text inside
the teacher's ``<teaching>...</teaching>`` (the whole reply when the tag is missing), as
the training tokenizer's ``encode`` counts it. The teaching on a ``CallReport``
(``guidance``) is already that text (``teaching/parse.py`` reads the tag the same way).

Another stored version of that file (RCL commit ``a0aa9e2``) scores a degradation
``-2 * |delta|`` and has no 0.5 branch; ``docs/learning.md`` says which one this follows
and why (the version that reads ``<teaching>``, as ``ATLAS-PROTOCOL.md`` records it).
"""

from __future__ import annotations

EFFICIENCY_WEIGHT = 1.0
"""``efficiency_weight`` of ``configs/trainer/reward/adaptive_teaching.yaml``."""


def efficiency_bonus(teaching_tokens: int) -> float:
    """``100 / (100 + n)``: 1 for no teaching, 0.5 at 100 tokens, towards 0 for long ones."""
    if teaching_tokens < 0:
        raise ValueError(f"a token count is not negative, got {teaching_tokens}")
    return 100.0 / (100.0 + teaching_tokens)


def adaptive_teaching_reward(
    with_teaching: bool | None,
    without_teaching: bool | None,
    teaching_tokens: int,
    efficiency_weight: float = EFFICIENCY_WEIGHT,
) -> float:
    """The published reward of one piece of teaching (module docstring).

    ``with_teaching`` / ``without_teaching``: whether the student's answer with the teaching
    and its answer alone were right. Both None: there was no ground truth to grade them
    against, which the published code scores 0.0. One None and not the other is a mistake.
    """
    if with_teaching is None or without_teaching is None:
        if with_teaching is not None or without_teaching is not None:
            raise ValueError("both answers are graded against the ground truth, or neither")
        return 0.0
    delta = int(with_teaching) - int(without_teaching)
    if delta < 0:
        return 0.0
    bonus = 1.0 + efficiency_weight * efficiency_bonus(teaching_tokens)
    if delta == 0:
        return 0.5 * bonus if with_teaching else 0.0
    return delta * bonus
