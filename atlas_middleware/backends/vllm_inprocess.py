"""``vllm/<model id or folder>``: a model served in this process by ``vllm.LLM``.

For one GPU box that runs the application and the teacher together. The production path
is a vLLM *server* reached through LiteLLM (``hosted_vllm/<model>``, see
``atlas-middleware teacher serve`` and ``integrations/vllm/``): it scales out and keeps the
GPU out of the application's process.

Construction fails at once, never at the first call, when vLLM is not installed
(``MissingExtraError`` naming the ``vllm`` extra) or when no CUDA GPU is visible
(``ConfigError``). Concurrent calls are gathered by the same batcher as local models and
handed to one ``LLM.generate`` call, which schedules them together (continuous batching,
paged KV cache, prefix caching). Token counts are vLLM's own, from the model's tokenizer:
exact (``counted_by="provider"``), price 0.0.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError, InvalidRequestError, MissingExtraError
from ..messages import ChatRequest, ChatResponse
from ..usage import Usage
from .base import WholeAnswerStreams
from .local import _template_message
from .local_batcher import Batcher

PREFIX = "vllm/"
_FEATURE = "in-process vLLM models (vllm/...)"


class VLLMOptions(BaseModel):
    """Engine settings; the defaults match ``atlas-middleware teacher serve``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int | None = Field(default=8192, ge=256)
    gpu_memory_utilization: float = Field(default=0.90, gt=0, le=1)
    enable_prefix_caching: bool = True  # the teacher's long system prompt is shared by every call
    dtype: str = "auto"
    max_batch_size: int = Field(default=256, ge=1)
    batch_wait_ms: float = Field(default=5.0, ge=0)
    max_queue: int = Field(default=1024, ge=1)
    max_new_tokens: int = Field(default=512, ge=1)
    default_temperature: float = Field(default=0.0, ge=0)


def require_vllm() -> Any:
    try:
        return importlib.import_module("vllm")
    except ImportError:
        raise MissingExtraError(_FEATURE, "vllm", "vllm") from None


def require_gpu() -> None:
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        raise MissingExtraError(_FEATURE, "vllm", "torch") from None
    if not torch.cuda.is_available():
        raise ConfigError(
            "vllm/... models need a CUDA GPU and none is visible. On CPU use local/<model> "
            "(pip install 'atlas-middleware[local]'); or reach a vLLM server on a GPU machine "
            "with hosted_vllm/<model> and teacher_api_base=http://host:8000/v1"
        )


_instances: dict[tuple[str, VLLMOptions], VLLMBackend] = {}
_instances_lock = threading.Lock()


class VLLMBackend(WholeAnswerStreams):
    def __init__(self, model: str, options: VLLMOptions | None = None) -> None:
        """``model`` is a model id or folder as ``vllm.LLM`` takes it (no ``vllm/`` prefix)."""
        self._vllm = require_vllm()
        require_gpu()
        self.options = opts = options or VLLMOptions()
        self.name = PREFIX + model
        self.llm = self._vllm.LLM(
            model=model,
            tensor_parallel_size=opts.tensor_parallel_size,
            max_model_len=opts.max_model_len,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            enable_prefix_caching=opts.enable_prefix_caching,
            dtype=opts.dtype,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._tok_lock = threading.Lock()
        self.batcher: Batcher[tuple[list[int], Any], Any] = Batcher(
            self._generate,
            max_batch_size=opts.max_batch_size,
            max_wait_s=opts.batch_wait_ms / 1000,
            max_queue=opts.max_queue,
            name="atlas-vllm",
        )

    @classmethod
    def for_model(cls, model: str, **options: Any) -> VLLMBackend:
        if not model.startswith(PREFIX) or not model[len(PREFIX):]:
            raise ConfigError(f"an in-process vLLM model string looks like vllm/<model>, got {model!r}")
        try:
            opts = VLLMOptions(**options)
        except ValueError as exc:
            raise ConfigError(f"invalid vLLM options: {exc}") from None
        key = (model[len(PREFIX):], opts)
        with _instances_lock:
            backend = _instances.get(key)
            if backend is None:
                backend = _instances[key] = cls(key[0], opts)
            return backend

    def _generate(self, jobs: list[tuple[list[int], Any]]) -> list[Any]:
        prompts = [{"prompt_token_ids": ids} for ids, _ in jobs]
        return list(self.llm.generate(prompts, [sp for _, sp in jobs], use_tqdm=False))

    def job(self, request: ChatRequest) -> tuple[list[int], Any]:
        p = request.params
        if (p.get("n") or 1) != 1:
            raise InvalidRequestError("in-process vLLM returns one choice per request (n=1)")
        chat = [_template_message(m) for m in request.messages]
        with self._tok_lock:
            text = self.tokenizer.apply_chat_template(
                chat, tools=p.get("tools") or None, add_generation_prompt=True, tokenize=False
            )
            ids = [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]
        temperature = p.get("temperature")
        stop = p.get("stop") or []
        params = self._vllm.SamplingParams(
            max_tokens=p.get("max_completion_tokens") or p.get("max_tokens") or self.options.max_new_tokens,
            temperature=float(self.options.default_temperature if temperature is None else temperature),
            top_p=float(p["top_p"]) if p.get("top_p") is not None else 1.0,
            stop=[stop] if isinstance(stop, str) else list(stop),
            seed=p.get("seed"),
            ignore_eos=bool(p.get("ignore_eos", False)),
        )
        return ids, params

    def _response(self, request: ChatRequest, output: Any) -> ChatResponse:
        choice = output.outputs[0]
        usage = Usage(
            prompt_tokens=len(output.prompt_token_ids), completion_tokens=len(choice.token_ids),
            calls=1, counted_by="provider", cost_usd=0.0,
        )
        reason = "length" if choice.finish_reason == "length" else "stop"
        return ChatResponse(content=choice.text, finish_reason=reason, usage=usage, model=request.model)

    def complete(self, request: ChatRequest) -> ChatResponse:
        return self._response(request, self.batcher.submit(self.job(request)).result())

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        output = await asyncio.wrap_future(self.batcher.submit(self.job(request)))
        return self._response(request, output)

    def close(self) -> None:
        self.batcher.close()
