"""``vllm/<model id or folder>``: a model served in this process by vLLM's async engine.

For one GPU box that runs the application and the teacher together. The production path
is a vLLM *server* reached through LiteLLM (``hosted_vllm/<model>``, see
``atlas-middleware teacher serve`` and ``integrations/vllm/``): it scales out and keeps the
GPU out of the application's process.

Construction fails at once, never at the first call, when vLLM is not installed
(``MissingExtraError`` naming the ``vllm`` extra) or when no CUDA GPU is visible
(``ConfigError``).

The engine is vLLM's own async engine (``vllm.v1.engine.async_llm.AsyncLLM`` where it
exists, else ``vllm.AsyncLLMEngine``; ``VLLM_USE_V1=0`` picks the latter), built from
``AsyncEngineArgs``. It lives on an event loop that the backend runs on a thread of its
own, so sync callers (``complete``, ``stream``, from any thread) and async callers
(``acomplete``, ``astream``, from any event loop) all submit into the one engine. Every
request is its own ``engine.generate(prompt, params, request_id)``: vLLM's scheduler adds a
request that arrives while others decode to the running batch at its next step (continuous
batching, paged KV cache, prefix caching), and nothing waits to form a batch.

* Streams yield the text each engine step adds (vLLM's outputs are cumulative), then the
  finish reason and the usage.
* A caller that stops waiting aborts its request in the engine (``engine.abort``): a
  cancelled task, the driver's ``CancelToken``, a stream closed early, or the request's own
  ``timeout`` (seconds; ``TimeoutError``). The engine stops decoding it at once.
* A request the engine refuses or fails (a prompt over ``max_model_len``: vLLM's
  ``ValueError``; a failure inside the engine) fails alone, with vLLM's exception; the
  requests running beside it are not touched.
* Back-pressure: at most ``max_queue`` requests in the engine (running or waiting in its
  scheduler); one more raises ``QueueFullError`` at once.

Token counts are vLLM's own (``prompt_token_ids``, the answer's ``token_ids``), from the
model's tokenizer: exact (``counted_by="provider"``), price 0.0. Tests pass a stand-in
engine (``atlas_middleware.testing.vllm_engine``) as ``engine=``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import itertools
import os
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ..._redact import secret_logger
from ...errors import ConfigError, InvalidRequestError, MissingExtraError, QueueFullError
from ...messages import ChatRequest, ChatResponse
from ...runtime.chunks import ChatChunk
from ...usage import Usage
from ..base import current_cancel_token
from .backend import _template_message, _timeout
from .batcher import BatcherClosedError, RequestAbandonedError

PREFIX = "vllm/"
_FEATURE = "in-process vLLM models (vllm/...)"
T = TypeVar("T")
logger = secret_logger(__name__)


class VLLMOptions(BaseModel):
    """Engine settings; the defaults match ``atlas-middleware teacher serve``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int | None = Field(default=8192, ge=256)
    gpu_memory_utilization: float = Field(default=0.90, gt=0, le=1)
    enable_prefix_caching: bool = True  # the teacher's long system prompt is shared by every call
    dtype: str = "auto"
    max_batch_size: int = Field(default=256, ge=1, description="vLLM's max_num_seqs: requests decoded together")
    max_queue: int = Field(default=1024, ge=1, description="requests in the engine; one more raises QueueFullError")
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


def build_engine(vllm: Any, model: str, options: VLLMOptions) -> Any:
    """vLLM's async engine for ``model``: the v1 ``AsyncLLM`` where this vLLM has it (unless
    ``VLLM_USE_V1=0``), else ``AsyncLLMEngine``. Call it on the loop that will run it."""
    args_type = getattr(vllm, "AsyncEngineArgs", None)
    if args_type is None:
        args_type = importlib.import_module("vllm.engine.arg_utils").AsyncEngineArgs
    args = args_type(
        model=model,
        tensor_parallel_size=options.tensor_parallel_size,
        max_model_len=options.max_model_len,
        gpu_memory_utilization=options.gpu_memory_utilization,
        enable_prefix_caching=options.enable_prefix_caching,
        dtype=options.dtype,
        max_num_seqs=options.max_batch_size,
    )
    engine_type = None
    if os.environ.get("VLLM_USE_V1", "1") != "0":
        try:
            engine_type = importlib.import_module("vllm.v1.engine.async_llm").AsyncLLM
        except ImportError:
            pass
    if engine_type is None:
        engine_type = vllm.AsyncLLMEngine
    return engine_type.from_engine_args(args)


class _EngineLoop:
    """An event loop on a daemon thread of its own: the engine's home. Every caller's
    requests run here, whatever thread or loop they come from, because an async engine
    belongs to the loop it first ran on."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float | None = None) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass(frozen=True)
class _Call:
    """One request as the engine takes it."""

    request_id: str
    prompt_ids: list[int]
    params: Any  # vllm.SamplingParams
    timeout: float | None


_END = object()
_instances: dict[tuple[str, VLLMOptions], VLLMBackend] = {}
_instances_lock = threading.Lock()


class VLLMBackend:
    def __init__(self, model: str, options: VLLMOptions | None = None, *, engine: Any = None,
                 sampling_params: Callable[..., Any] | None = None) -> None:
        """``model`` is a model id or folder as vLLM takes it (no ``vllm/`` prefix).

        ``engine``: an engine already built (tests pass ``testing.vllm_engine.FakeAsyncEngine``,
        with its ``FakeSamplingParams`` as ``sampling_params``); by default vLLM's async
        engine is built from ``options``, which needs vLLM and a CUDA GPU."""
        self.options = opts = options or VLLMOptions()
        self.name = PREFIX + model
        vllm: Any = None
        if engine is None or sampling_params is None:
            vllm = require_vllm()
        if engine is None:
            require_gpu()
        self._sampling_params: Callable[..., Any] = sampling_params or vllm.SamplingParams
        self._home = _EngineLoop(f"atlas-vllm-{model}")
        try:
            if engine is None:
                engine = self._home.submit(_call_on_loop(lambda: build_engine(vllm, model, opts))).result()
            self.engine = engine
            tokenizer = engine.get_tokenizer()  # async in some vLLM releases
            if inspect.isawaitable(tokenizer):
                tokenizer = self._home.submit(_awaited(tokenizer)).result()
        except BaseException:
            self._home.stop()
            raise
        self.tokenizer = tokenizer
        self._tok_lock = threading.Lock()  # the tokenizer is shared by every caller's thread
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()  # requests running; touched on the engine's loop only
        self._ids = itertools.count()
        self._id_prefix = f"atlas-{uuid.uuid4().hex[:8]}-"

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

    # -- requests -------------------------------------------------------------------------

    def job(self, request: ChatRequest) -> tuple[list[int], Any]:
        """The prompt's token ids (through the model's chat template) and the
        ``SamplingParams`` for ``request``; ``InvalidRequestError`` when it cannot run."""
        p = request.params
        if (p.get("n") or 1) != 1:
            raise InvalidRequestError("in-process vLLM returns one choice per request (n=1)")
        chat = [_template_message(m) for m in request.messages]
        continue_final = bool(p.get("continue_final_message")) and chat[-1]["role"] == "assistant"
        with self._tok_lock:
            text = self.tokenizer.apply_chat_template(
                chat, tools=p.get("tools") or None, tokenize=False,
                add_generation_prompt=not continue_final,
                **({"continue_final_message": True} if continue_final else {}),
            )
            ids = [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]
        temperature = p.get("temperature")
        stop = p.get("stop") or []
        params = self._sampling_params(
            max_tokens=p.get("max_completion_tokens") or p.get("max_tokens") or self.options.max_new_tokens,
            temperature=float(self.options.default_temperature if temperature is None else temperature),
            top_p=float(p["top_p"]) if p.get("top_p") is not None else 1.0,
            stop=[stop] if isinstance(stop, str) else list(stop),
            seed=p.get("seed"),
            ignore_eos=bool(p.get("ignore_eos", False)),
        )
        return ids, params

    def _start(self, request: ChatRequest, emit: Callable[[Any], None] | None = None,
               ) -> tuple[Future[Any], Callable[[], None]]:
        """Submit ``request`` to the engine; its future (the last ``RequestOutput``) and the
        function that unties it from the caller's cancel token. ``emit`` sees every output."""
        ids, params = self.job(request)  # in the caller's thread: a bad request fails before the engine
        call = _Call(f"{self._id_prefix}{next(self._ids)}", ids, params, _timeout(request))
        token = current_cancel_token()
        if token is not None and token.cancelled:  # e.g. a retry after the driver gave up
            raise RequestAbandonedError(f"{self.name}: the caller stopped waiting before the request started")
        with self._lock:
            if self._closed:
                raise BatcherClosedError(f"{self.name}: this vLLM backend was closed")
            if self._in_flight >= self.options.max_queue:
                raise QueueFullError(
                    f"{self.name} has {self.options.max_queue} requests in its engine; "
                    "retry later, raise max_queue, or add replicas"
                )
            self._in_flight += 1
            # Under the lock: a request submitted before ``close`` starts before its shutdown.
            future = self._home.submit(self._run(call, emit))
        future.add_done_callback(self._left)
        if token is None:
            return future, _nothing

        def abort() -> None:  # cancelling the future cancels the request's task: it is aborted
            future.cancel()

        return future, token.on_cancel(abort)

    def _left(self, _: Future[Any]) -> None:
        with self._lock:
            self._in_flight -= 1

    async def _run(self, call: _Call, emit: Callable[[Any], None] | None) -> Any:
        """On the engine's loop: one ``engine.generate`` to its last output. Cancelled (the
        caller left) or timed out, the request is aborted in the engine."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        last = None
        outputs = self.engine.generate({"prompt_token_ids": call.prompt_ids}, call.params, call.request_id)
        try:
            async with asyncio.timeout(call.timeout):
                async for output in outputs:
                    last = output
                    if emit is not None:
                        emit(output)
        except TimeoutError:
            await self._abort(call.request_id)
            raise TimeoutError(f"{self.name} gave no answer within {call.timeout:g} s (the request's timeout)") from None
        except asyncio.CancelledError:
            await self._abort(call.request_id)
            raise
        finally:
            await outputs.aclose()
            self._tasks.discard(task)
        if last is None or not last.finished or last.outputs[0].finish_reason == "abort":
            raise RequestAbandonedError(f"{self.name}: vLLM aborted request {call.request_id}")
        return last

    async def _abort(self, request_id: str) -> None:
        try:
            await self.engine.abort(request_id)
        except Exception:  # a dead engine has nothing left to stop
            logger.warning("vLLM could not abort request %s", request_id, exc_info=True)

    def _gone(self) -> Exception:
        """What a caller whose request was cancelled under it hears."""
        if self._closed:
            return BatcherClosedError(f"{self.name}: this vLLM backend was closed")
        return RequestAbandonedError(f"{self.name}: the caller stopped waiting")

    def _response(self, request: ChatRequest, output: Any) -> ChatResponse:
        choice = output.outputs[0]
        return ChatResponse(content=choice.text, finish_reason=_finish(choice), usage=_usage(output),
                            model=request.model)

    def complete(self, request: ChatRequest) -> ChatResponse:
        future, untie = self._start(request)
        try:
            output = future.result()
        except CancelledError:  # the cancel token, or close()
            raise self._gone() from None
        finally:
            untie()
        return self._response(request, output)

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        future, untie = self._start(request)
        try:
            # A cancelled caller cancels ``future``, which cancels the request's task.
            output = await asyncio.wrap_future(future)
        finally:
            untie()
        return self._response(request, output)

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        outputs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        future, untie = self._start(request, outputs.put)
        future.add_done_callback(lambda _: outputs.put(_END))
        deltas = _Deltas(request.model)
        try:
            while (output := outputs.get()) is not _END:
                yield from deltas.of(output)
            future.result()  # the request's failure, if it failed
        except CancelledError:
            raise self._gone() from None
        finally:
            future.cancel()  # closed early: abort (nothing when it is done)
            untie()

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(outputs.put_nowait, item)
            except RuntimeError:  # the caller's loop is gone
                pass

        future, untie = self._start(request, put)
        future.add_done_callback(lambda _: put(_END))
        deltas = _Deltas(request.model)
        try:
            while (output := await outputs.get()) is not _END:
                for chunk in deltas.of(output):
                    yield chunk
            future.result()
        except CancelledError:
            raise self._gone() from None
        finally:
            future.cancel()
            untie()

    def close(self, timeout: float | None = 60.0) -> None:
        """Abort the requests in flight, shut the engine down and stop its loop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with _instances_lock:  # for_model builds a new one from now on
            for key in [k for k, v in _instances.items() if v is self]:
                del _instances[key]
        try:
            self._home.submit(self._shutdown()).result(timeout)
        finally:
            self._home.stop(timeout)

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        shutdown = getattr(self.engine, "shutdown", None) or getattr(self.engine, "shutdown_background_loop", None)
        if shutdown is not None:
            shutdown()


class _Deltas:
    """Chunks from vLLM's cumulative outputs: the text each one adds; the last one also
    carries the finish reason and the usage."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.sent = 0

    def of(self, output: Any) -> list[ChatChunk]:
        choice = output.outputs[0]
        delta = choice.text[self.sent:]
        self.sent = max(self.sent, len(choice.text))
        if output.finished and choice.finish_reason != "abort":
            return [ChatChunk(content=delta, finish_reason=_finish(choice), usage=_usage(output), model=self.model)]
        return [ChatChunk(content=delta, model=self.model)] if delta else []


def _finish(choice: Any) -> str:
    return "length" if choice.finish_reason == "length" else "stop"


def _usage(output: Any) -> Usage:
    return Usage(prompt_tokens=len(output.prompt_token_ids), completion_tokens=len(output.outputs[0].token_ids),
                 calls=1, counted_by="provider", cost_usd=0.0)


async def _call_on_loop(make: Callable[[], T]) -> T:
    return make()


async def _awaited(value: Any) -> Any:
    return await value


def _nothing() -> None:
    pass
