"""Backends: the one protocol and its implementations, chosen by model string.

==========================  ===========================================  =======
model string                backend                                      extra
==========================  ===========================================  =======
``local/<name or folder>``  in-process transformers (batched)            local
``vllm/<model>``            in-process vLLM async engine                 vllm
OpenAI-compatible + base    lean HTTP path (``http/transport.py``)          core
anything else               LiteLLM (``openai/...``, ``anthropic/...``)  core
a list of deployments       a teacher group over ``litellm.Router``      core
==========================  ===========================================  =======
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import ChatBackend, WrapperBackend
from .litellm import LiteLLMBackend
from .retry import RetryingBackend

if TYPE_CHECKING:
    from ..config import AtlasConfig

__all__ = [
    "ChatBackend", "LiteLLMBackend", "RetryingBackend", "WrapperBackend", "backend_for", "in_process_backend",
    "teacher_backend_for",
]


def in_process_backend(model: str, **options: Any) -> ChatBackend:
    """The in-process backend of a ``local/...`` or ``vllm/...`` model string."""
    if model.startswith("local/"):
        from .local import LocalBackend  # type: ignore[import-not-found,unused-ignore]

        return LocalBackend.for_model(model, **options)  # type: ignore[no-any-return,unused-ignore]
    from .local.vllm_inprocess import VLLMBackend  # type: ignore[import-not-found,unused-ignore]

    return VLLMBackend.for_model(model, **options)  # type: ignore[no-any-return,unused-ignore]


def backend_for(model: str, *, api_base: str | None = None, api_key: str | None = None,
                lean: bool = True, **options: Any) -> ChatBackend:
    """The backend that serves ``model``; raises ``ConfigError`` when it cannot."""
    if model.startswith(("local/", "vllm/")):
        return in_process_backend(model, **options)
    from .routing import ModelRouter

    return ModelRouter({"api_base": api_base, "api_key": api_key}, lean=lean)


def teacher_backend_for(config: AtlasConfig) -> ChatBackend:
    """The teacher's backend: ``backend_for`` its model string, or a ``TeacherGroupBackend``
    (``group.py``) for a list of deployments, ``teacher_api_base`` / ``teacher_api_key``
    filling in what a deployment leaves out."""
    teacher = config.teacher
    if isinstance(teacher.model, list):
        from .group import TeacherGroupBackend

        return TeacherGroupBackend(teacher.model, router_settings=teacher.router,
                                   attempts=teacher.retries, lean=config.lean_http,
                                   defaults={"api_base": teacher.api_base, "api_key": teacher.key})
    return backend_for(teacher.model or "", api_base=teacher.api_base, api_key=teacher.key, lean=config.lean_http)
