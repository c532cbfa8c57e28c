"""``local/<name or folder>``: a transformers model run in this process, with batching.

* ``local/smollm2`` is the embedded default (see :mod:`atlas_middleware.backends.local.embedded`);
  ``local/<folder>`` is any causal LM saved with ``save_pretrained``. Hub ids are not
  downloaded.
* Prompts go through the model's own chat template. Token counts come from the model's
  own tokenizer and are exact, so usage says ``counted_by="provider"``: the local model *is*
  the provider. ``cost_usd`` is 0.0: there is no per-token price on your own hardware.
* Honoured request parameters: ``max_tokens`` / ``max_completion_tokens``, ``temperature``
  (0 or absent: greedy, so results are reproducible; see ``LocalOptions``), ``top_p``,
  ``stop``, ``seed``, and vLLM's ``ignore_eos`` (benchmarks) and ``continue_final_message``. ``n`` > 1 is refused. Tools
  are shown to the chat template when it supports them, but tool calls are not parsed.
* Concurrent calls (from threads or tasks) are batched into one decode loop
  (:mod:`.local_batcher`, :mod:`.local_generation`); a full queue raises ``QueueFullError``.
* ``cache="static"`` (opt-in, ``LocalOptions``) preallocates the KV cache per batch bucket
  and ``static_max_len`` so that every decode step has one shape; ``compile=True`` (CUDA only)
  then captures that step with ``torch.compile(mode="reduce-overhead")``. See
  :mod:`.local_generation`.
* One request fails alone: a prompt longer than the model's context, or a parameter that
  could not run, is refused before it is queued (``InvalidRequestError``); a request that
  makes the model raise inside a batch is found by running the batch's halves again
  (:mod:`.local_batcher`), and only it fails, with the model's exception.
* A caller that stops waiting abandons its request: the request's own ``timeout`` (seconds,
  from the call's start; ``TimeoutError``), a cancelled task, or the driver's
  ``CancelToken`` (:func:`.base.current_cancel_token`; ``RequestAbandonedError``). A waiting
  request leaves the queue and never starts; a running one leaves the batch at the next
  decode step, so it stops costing the others.

One instance per (model folder, options) is shared process-wide (``for_model``), so a
model used as both student and teacher is loaded once and their calls batch together.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...errors import ConfigError, InvalidRequestError, MissingExtraError
from ...messages import ChatRequest, ChatResponse
from ...usage import Usage
from ..base import WholeAnswerStreams, current_cancel_token
from ..compat import raise_recompile_limit
from .batcher import Batcher, RequestAbandonedError

PREFIX = "local/"
_FEATURE = "local models (local/...)"


class LocalOptions(BaseModel):
    """How a local model is loaded and served. Pass as keywords to ``LocalBackend.for_model``
    (or to ``ModelRouter(**options)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str | None = Field(default=None, description="'cpu', 'cuda', 'cuda:1'; None: cuda if available")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on GPU, float32 on CPU (fast and exact there)"
    )
    max_batch_size: int = Field(default=16, ge=1)
    batch_wait_ms: float = Field(default=10.0, ge=0, description="how long a lone request waits for company")
    max_queue: int = Field(default=256, ge=1, description="requests allowed to wait; more raise QueueFullError")
    max_new_tokens: int = Field(default=512, ge=1, description="cap when a request sets no max_tokens")
    default_temperature: float = Field(default=0.0, ge=0, description="when a request sets none; 0 is greedy")
    torch_threads: int | None = Field(
        default=None, ge=1,
        description="torch.set_num_threads at load (process-wide!); 1 helps on busy shared CPUs",
    )
    cache: Literal["dynamic", "static"] = Field(
        default="dynamic",
        description="dynamic: the KV cache grows and finished rows leave it; static: preallocated per batch "
                    "bucket (powers of two up to max_batch_size) and static_max_len, every decode step one shape",
    )
    static_max_len: int = Field(
        default=2048, ge=2,
        description="cache='static': tokens per request (prompt + answer) the cache holds; it acts as the "
                    "context: longer prompts are refused and max_tokens is capped to fit",
    )
    compile: bool = Field(
        default=False,
        description="cache='static' on CUDA: torch.compile(mode='reduce-overhead') of the decode step (CUDA "
                    "graphs), compiled once per bucket at its first batch",
    )


def require_local_extra() -> tuple[Any, Any]:
    """``(torch, transformers)``, or ``MissingExtraError`` naming the ``local`` extra."""
    try:
        torch = importlib.import_module("torch")
        transformers = importlib.import_module("transformers")
    except ImportError as exc:
        raise MissingExtraError(_FEATURE, "local", exc.name or "torch") from None
    return torch, transformers


_instances: dict[tuple[str, LocalOptions], LocalBackend] = {}
_instances_lock = threading.Lock()


class LocalBackend(WholeAnswerStreams):
    def __init__(self, model: Any, tokenizer: Any, *, name: str = "local", options: LocalOptions | None = None) -> None:
        """Serve an already-loaded ``model`` and ``tokenizer`` (tests and benchmarks build
        random-weight models this way); ``for_model`` loads from a model string."""
        torch, _ = require_local_extra()
        from .generation import BatchGenerator, GenerationJob, GenerationResult

        self._job_type = GenerationJob
        self.options = options or LocalOptions()
        self.name = name
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.device = next(model.parameters()).device
        _check_static_options(self.options, self.device)
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        compiler = None
        if self.options.cache == "static":
            # The cache holds the smaller of static_max_len and the model's own context.
            self.max_context = min(self.max_context or self.options.static_max_len, self.options.static_max_len)
            if self.options.compile:
                def compiler(step: Callable[..., Any]) -> Callable[..., Any]:
                    # One compiled graph per bucket (static shapes), all on one code object:
                    # keep dynamo from falling back to eager after its default 8.
                    raise_recompile_limit(torch, 64)
                    return torch.compile(step, mode="reduce-overhead", dynamic=False)  # type: ignore[no-any-return]
        self._generator = BatchGenerator(
            model, tokenizer, self.device, cache=self.options.cache, max_len=self.max_context,
            max_batch=self.options.max_batch_size, compiler=compiler,
        )
        # Tokenizers are shared with the batch thread; the Rust side dislikes concurrent use.
        self._tok_lock = threading.Lock()
        self.batcher: Batcher[GenerationJob, GenerationResult] = Batcher(
            self._generator.generate,
            max_batch_size=self.options.max_batch_size,
            max_wait_s=self.options.batch_wait_ms / 1000,
            max_queue=self.options.max_queue,
            name=f"atlas-local-{name}",
        )
        self._torch = torch

    # -- construction -------------------------------------------------------------------

    @classmethod
    def for_model(cls, model: str, **options: Any) -> LocalBackend:
        """The shared backend of ``local/<name or folder>``, loading the model on first use."""
        require_local_extra()
        if not model.startswith(PREFIX) or not model[len(PREFIX):]:
            raise ConfigError(f"a local model string looks like local/<name or folder>, got {model!r}")
        try:
            opts = LocalOptions(**options)
        except ValueError as exc:
            raise ConfigError(f"invalid local model options: {exc}") from None
        from .embedded import resolve_local_model

        path = resolve_local_model(model[len(PREFIX):])
        key = (str(path), opts)
        with _instances_lock:
            backend = _instances.get(key)
            if backend is None:
                backend = _instances[key] = cls.load(path, name=model, options=opts)
            return backend

    @classmethod
    def load(cls, path: str | Path, *, name: str | None = None, options: LocalOptions | None = None) -> LocalBackend:
        torch, transformers = require_local_extra()
        opts = options or LocalOptions()
        if opts.torch_threads is not None:
            torch.set_num_threads(opts.torch_threads)
        device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        _check_static_options(opts, device)  # before the (slow) load
        if opts.dtype == "auto":
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, opts.dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        return cls(model.to(device), tokenizer, name=name or f"{PREFIX}{path}", options=opts)

    # -- requests -----------------------------------------------------------------------

    def encode(self, messages: list[dict[str, Any]], tools: Any = None, continue_final: bool = False) -> list[int]:
        """The prompt's token ids, through the model's own chat template.

        ``continue_final`` (vLLM's ``continue_final_message``) continues a last assistant
        message instead of opening a new turn: the "prefill" that keeps small models on a format.
        """
        chat = [_template_message(m) for m in messages]
        continue_final = continue_final and chat[-1]["role"] == "assistant"
        with self._tok_lock:
            text = self.tokenizer.apply_chat_template(
                chat, tools=tools or None, tokenize=False,
                add_generation_prompt=not continue_final, continue_final_message=continue_final,
            )
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids]

    def job(self, request: ChatRequest) -> Any:
        """The ``GenerationJob`` for ``request``; ``InvalidRequestError`` when it cannot run."""
        p = request.params
        if (p.get("n") or 1) != 1:
            raise InvalidRequestError("local models return one choice per request (n=1)")
        prompt = self.encode(request.messages, p.get("tools"), bool(p.get("continue_final_message")))
        cap = p.get("max_completion_tokens") or p.get("max_tokens") or self.options.max_new_tokens
        if not isinstance(cap, int) or cap < 1:
            raise InvalidRequestError(f"max_tokens must be a positive integer, got {cap!r}")
        if self.max_context is not None:
            room = self.max_context - len(prompt)
            if room < 1:
                what = "static cache" if self.options.cache == "static" else "context"
                raise InvalidRequestError(
                    f"prompt of {len(prompt)} tokens does not fit {self.name}'s {what} of {self.max_context}"
                )
            cap = min(cap, room)
        # Checked here, in the caller's thread: a value that would raise in the batch thread
        # fails this request alone, before it is queued, with a clear message.
        stop = p.get("stop") or ()
        stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, (list, tuple)) else None
        if stops is None or not all(isinstance(s, str) for s in stops):
            raise InvalidRequestError(f"stop must be a string or a list of strings, got {stop!r}")
        seed = p.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InvalidRequestError(f"seed must be an integer, got {seed!r}")
        temperature = p.get("temperature")
        return self._job_type(
            prompt_ids=prompt,
            max_new_tokens=cap,
            temperature=float(self.options.default_temperature if temperature is None else temperature),
            top_p=float(p["top_p"]) if p.get("top_p") is not None else 1.0,
            stop=stops,
            seed=seed,
            ignore_eos=bool(p.get("ignore_eos", False)),
        )

    def _response(self, request: ChatRequest, job: Any, result: Any) -> ChatResponse:
        if result.finish_reason == "abandoned":  # not reachable through complete/acomplete
            raise RequestAbandonedError(f"{self.name}: the request was abandoned")
        usage = Usage(
            prompt_tokens=len(job.prompt_ids), completion_tokens=result.completion_tokens,
            calls=1, counted_by="provider", cost_usd=0.0,
        )
        return ChatResponse(content=result.text, finish_reason=result.finish_reason, usage=usage,
                            model=request.model)

    # -- abandonment ----------------------------------------------------------------------

    def _submit(self, job: Any) -> tuple[Future[Any], Callable[[], None]]:
        """Queue ``job``, tied to the caller's cancel token if it has one; the future and the
        function that unties it."""
        token = current_cancel_token()
        if token is not None and token.cancelled:  # e.g. a retry after the driver gave up
            raise RequestAbandonedError(f"{self.name}: the caller stopped waiting before the request started")
        future = self.batcher.submit(job)
        if token is None:
            return future, _nothing
        return future, token.on_cancel(lambda: self._abandon(job, future))

    def _abandon(self, job: Any, future: Future[Any], error: BaseException | None = None) -> None:
        """Nobody waits for ``job`` any more: out of the queue, or out of the batch at the
        next decode step. The future is failed *before* the row is flagged, so an answer cut
        short can never reach a caller as if it were whole."""
        self.batcher.abandon(future, error or RequestAbandonedError(f"{self.name}: the caller stopped waiting"))
        job.abandoned.set()

    def _timeout_error(self, timeout: float | None) -> TimeoutError:
        return TimeoutError(f"{self.name} gave no answer within {timeout:g} s (the request's timeout)")

    def complete(self, request: ChatRequest) -> ChatResponse:
        timeout = _timeout(request)
        job = self.job(request)
        future, untie = self._submit(job)
        try:
            try:
                result = future.result(timeout)
            except TimeoutError:
                if not future.done():  # else: it finished just in time, or the job itself timed out
                    error = self._timeout_error(timeout)
                    self._abandon(job, future, error)
                    if future.cancelled():
                        raise error from None
                result = future.result()  # failed with ``error`` now, or finished just in time
        except CancelledError:  # the token dropped it from the queue
            raise RequestAbandonedError(f"{self.name}: the caller stopped waiting") from None
        finally:
            untie()
        return self._response(request, job, result)

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        timeout = _timeout(request)
        job = self.job(request)
        future, untie = self._submit(job)
        wrapped = asyncio.wrap_future(future)
        try:
            result = await asyncio.wait_for(wrapped, timeout)
        except asyncio.CancelledError:
            # The caller gave up (a driver's deadline, a dropped task): out of queue or batch.
            self._abandon(job, future)
            raise
        except TimeoutError:
            if not wrapped.cancelled():
                raise  # the job's own error, not our deadline
            error = self._timeout_error(timeout)
            self._abandon(job, future, error)
            raise error from None
        finally:
            untie()
        return self._response(request, job, result)

    def close(self) -> None:
        self.batcher.close()
        self._generator.release()


def _check_static_options(options: LocalOptions, device: Any) -> None:
    """``compile`` needs the static cache and a CUDA device: ``ConfigError`` otherwise."""
    if not options.compile:
        return
    if options.cache != "static":
        raise ConfigError("local model option compile=True needs cache='static' (only its decode step has "
                          "fixed shapes to compile)")
    if device.type != "cuda":
        raise ConfigError(f"local model option compile=True needs a CUDA device (it captures the decode step "
                          f"in CUDA graphs); this backend runs on {device.type!r}: use cache='static' "
                          "without compile, or the default dynamic cache")


def _nothing() -> None:
    pass


def _timeout(request: ChatRequest) -> float | None:
    """The request's ``timeout`` in seconds (the flow sets it to the call's deadline)."""
    value = request.params.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidRequestError(f"timeout must be a positive number of seconds, got {value!r}")
    return float(value)


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message chat templates accept: text content, ``developer`` read as ``system``."""
    from ...teaching.prompts import content_text

    role = message.get("role", "user")
    out = {k: v for k, v in message.items() if k not in ("content", "role")}
    out["role"] = "system" if role == "developer" else role
    out["content"] = content_text(message.get("content"))
    return out


def clear_shared_backends() -> None:
    """Close and forget every shared backend (tests; freeing memory in long processes)."""
    with _instances_lock:
        backends = list(_instances.values())
        _instances.clear()
    for backend in backends:
        backend.close()
