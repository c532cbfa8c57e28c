"""A judge importable by path, as users configure one (``--judge module:function``)."""

from __future__ import annotations

from typing import Any


def prefers_42(messages: list[dict[str, Any]], answer: str) -> float:
    return 1.0 if "42" in answer else 0.0
