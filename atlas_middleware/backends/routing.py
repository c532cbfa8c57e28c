"""Pick the backend for each request from its model string (``local/...``, ``vllm/...``, ...).

The student is named per call (``atlas.completion(model=...)``), so the student side is a
router: one backend per distinct local model, LiteLLM for everything else.
"""

from __future__ import annotations

import threading
from typing import Any

from ..messages import ChatRequest, ChatResponse
from .base import ChatBackend
from .litellm import LiteLLMBackend

IN_PROCESS_PREFIXES = ("local/", "vllm/")


class ModelRouter:
    def __init__(self, fallback: ChatBackend | None = None, **local_options: Any) -> None:
        self.fallback = fallback or LiteLLMBackend()
        self.local_options = local_options
        self._backends: dict[str, ChatBackend] = {}
        self._lock = threading.Lock()

    def backend(self, model: str) -> ChatBackend:
        if not model.startswith(IN_PROCESS_PREFIXES):
            return self.fallback
        with self._lock:
            backend = self._backends.get(model)
            if backend is None:
                from . import backend_for

                backend = self._backends[model] = backend_for(model, **self.local_options)
            return backend

    def complete(self, request: ChatRequest) -> ChatResponse:
        return self.backend(request.model).complete(request)

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        return await self.backend(request.model).acomplete(request)
