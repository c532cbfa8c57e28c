"""Backends: the one protocol and its implementations, chosen by model string.

==========================  ===========================================  =======
model string                backend                                      extra
==========================  ===========================================  =======
``local/<name or folder>``  in-process transformers (batched)            local
``vllm/<model>``            in-process ``vllm.LLM``                      vllm
anything else               LiteLLM (``openai/...``, ``hosted_vllm/...``)  core
==========================  ===========================================  =======
"""

from __future__ import annotations

from typing import Any

from .base import ChatBackend, WrapperBackend
from .litellm import LiteLLMBackend
from .retry import RetryingBackend

__all__ = ["ChatBackend", "LiteLLMBackend", "RetryingBackend", "WrapperBackend", "backend_for"]


def backend_for(model: str, *, api_base: str | None = None, api_key: str | None = None,
                **options: Any) -> ChatBackend:
    """The backend that serves ``model``; raises ``ConfigError`` when it cannot."""
    if model.startswith("local/"):
        from .local import LocalBackend  # type: ignore[import-not-found,unused-ignore]

        return LocalBackend.for_model(model, **options)  # type: ignore[no-any-return,unused-ignore]
    if model.startswith("vllm/"):
        from .vllm_inprocess import VLLMBackend  # type: ignore[import-not-found,unused-ignore]

        return VLLMBackend.for_model(model, **options)  # type: ignore[no-any-return,unused-ignore]
    return LiteLLMBackend({"api_base": api_base, "api_key": api_key})
