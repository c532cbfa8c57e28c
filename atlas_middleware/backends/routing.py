"""Pick the backend for each request from its model string and parameters.

* ``local/...`` and ``vllm/...``: in-process backends, one per distinct model;
* ``hosted_vllm/...`` or ``openai/...`` with an ``api_base``, when the parameter contract
  (``param_contract.py``) knows the body LiteLLM would send for that model and those
  parameters: the lean HTTP path (``http/transport.py``), one shared connection pool, sending
  exactly that body;
* everything else, and whatever the contract is not sure of: LiteLLM, which translates for
  the provider.

The student is named per call (``atlas.completion(model=...)``), so the student side is a
router; the teacher's router carries the teacher's endpoint and key as defaults.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ..messages import ChatRequest, ChatResponse
from ..runtime.chunks import ChatChunk
from .base import ChatBackend, astream_of, stream_of, timeout_error_of
from .litellm import LiteLLMBackend

IN_PROCESS_PREFIXES = ("local/", "vllm/")


class ModelRouter:
    def __init__(self, defaults: dict[str, Any] | None = None, *, lean: bool = True,
                 fallback: ChatBackend | None = None, **local_options: Any) -> None:
        self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
        self.fallback = fallback or LiteLLMBackend(self.defaults)
        self.lean: Any = None
        if lean:
            from .http.transport import LeanHTTPBackend

            self.lean = LeanHTTPBackend(self.defaults)
        self.local_options = local_options
        self._in_process: dict[str, ChatBackend] = {}
        self._lock = threading.Lock()

    def backend(self, request: ChatRequest) -> ChatBackend:
        model = request.model
        if model.startswith(IN_PROCESS_PREFIXES):
            with self._lock:
                backend = self._in_process.get(model)
                if backend is None:
                    from . import in_process_backend

                    backend = self._in_process[model] = in_process_backend(model, **self.local_options)
                return backend
        if self.lean is not None and self.lean.accepts(request):
            return self.lean  # type: ignore[no-any-return]
        return self.fallback

    def complete(self, request: ChatRequest) -> ChatResponse:
        return self.backend(request).complete(request)

    def timeout_error(self, request: ChatRequest, message: str) -> Exception:
        return timeout_error_of(self.backend(request), request, message)

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        return await self.backend(request).acomplete(request)

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        return stream_of(self.backend(request), request)

    def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return astream_of(self.backend(request), request)

    def close(self) -> None:
        if self.lean is not None:
            self.lean.close()

    async def aclose(self) -> None:
        if self.lean is not None:
            await self.lean.aclose()
