"""A stand-in for vLLM's async engine (``AsyncLLM``), for tests where vLLM is absent.

``VLLMBackend(model, engine=FakeAsyncEngine(), sampling_params=FakeSamplingParams)`` runs
the in-process vLLM backend's own code against it: nothing is monkeypatched. What it keeps
of the real engine's habits:

* ``generate(prompt, sampling_params, request_id)`` is an async generator of *cumulative*
  ``RequestOutput`` objects (text and token ids so far, ``finished`` on the last), one per
  engine step in which the request made tokens;
* one scheduler loop steps every running request together, and a request that arrives
  while others generate joins them at the next step (continuous batching). ``steps``
  records the request ids of every step, so a test can see who shared one; at most
  ``max_num_seqs`` run at once, the others wait;
* ``abort(request_id)`` stops a request: it makes no more tokens and its generator ends.
  A generator closed or cancelled by its consumer stops its request too (the engine's own
  cleanup; not recorded as an ``abort`` call);
* a prompt longer than ``max_model_len`` raises, at the generator's first step, the
  ``ValueError`` vLLM raises ("The decoder prompt (length N) is longer than the maximum
  model length of M. ..."); a request whose prompt contains ``fail_on`` raises
  ``RuntimeError`` after its first output, as an engine failure would. Either way only that
  request fails;
* ``max_tokens`` cuts an answer (``finish_reason="length"``), ``stop`` strings end it early
  (cut before the stop string, ``"stop"``), ``ignore_eos`` is accepted.

The tokenizer is one token per character (the id is ``ord``), so counts are easy to
compute by hand; the answer to a prompt is ``reply(prompt_text)`` (default: ``"answer to N
ids"``). Nothing here touches a GPU or imports vLLM.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FakeAsyncEngine", "FakeCompletionOutput", "FakeRequestOutput", "FakeSamplingParams", "FakeTokenizer"]


class FakeTokenizer:
    """One token per character. ``apply_chat_template`` writes ``<role>content`` per message."""

    def __init__(self) -> None:
        self.templated: list[tuple[list[dict[str, Any]], Any]] = []

    def apply_chat_template(self, chat: list[dict[str, Any]], tools: Any = None, add_generation_prompt: bool = False,
                            tokenize: bool = True, **_: Any) -> str:
        if tokenize:
            raise AssertionError("the backend tokenizes the templated text itself")
        self.templated.append((chat, tools))
        text = "".join(f"<{m['role']}>{m['content']}" for m in chat)
        return text + "<assistant>" if add_generation_prompt else text

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        if add_special_tokens:
            raise AssertionError("the chat template already holds the special tokens")
        return {"input_ids": self.encode(text)}

    @staticmethod
    def encode(text: str) -> list[int]:
        return [ord(c) for c in text]

    @staticmethod
    def decode(ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)


class FakeSamplingParams:
    """``vllm.SamplingParams``: the fields the backend sets, validated like vLLM does."""

    def __init__(self, *, max_tokens: int = 16, temperature: float = 1.0, top_p: float = 1.0,
                 stop: list[str] | None = None, seed: int | None = None, ignore_eos: bool = False) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
        if temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {temperature}.")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p
        self.stop, self.seed, self.ignore_eos = list(stop or []), seed, ignore_eos

    def as_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "stop": self.stop, "seed": self.seed, "ignore_eos": self.ignore_eos}


@dataclass(frozen=True)
class FakeCompletionOutput:
    """``vllm.CompletionOutput``: cumulative ``text`` and ``token_ids``."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # None until finished; "stop", "length" or "abort"


@dataclass(frozen=True)
class FakeRequestOutput:
    """``vllm.RequestOutput``."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[FakeCompletionOutput]
    finished: bool


@dataclass
class _Request:
    request_id: str
    prompt_ids: list[int]
    params: FakeSamplingParams
    answer: list[int]
    fail: bool
    queue: asyncio.Queue[FakeRequestOutput | BaseException | None] = field(default_factory=asyncio.Queue)
    made: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None


class FakeAsyncEngine:
    """The engine; see the module docstring. Use it from one event loop (the backend's)."""

    def __init__(self, *, max_model_len: int = 256, max_num_seqs: int = 256, tokens_per_step: int = 1,
                 step_s: float = 0.001, reply: Callable[[str], str] | None = None,
                 fail_on: str | None = None) -> None:
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.tokens_per_step = tokens_per_step
        self.step_s = step_s
        self.reply = reply or (lambda text: f"answer to {len(text)} ids")
        self.fail_on = fail_on
        self.tokenizer = FakeTokenizer()
        self.steps: list[frozenset[str]] = []
        """The request ids that made tokens in each engine step, in order."""
        self.abort_calls: list[str] = []
        self.requests: dict[str, _Request] = {}
        """Every request ever added, by id (finished ones stay, for tests to read)."""
        self.shut_down = False
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._loop_task: asyncio.Task[None] | None = None

    def get_tokenizer(self) -> FakeTokenizer:
        return self.tokenizer

    @property
    def generating(self) -> set[str]:
        """Ids of the requests still waiting or running."""
        return {r.request_id for r in (*self._waiting, *self._running)}

    async def generate(self, prompt: Mapping[str, Any], sampling_params: FakeSamplingParams,
                       request_id: str) -> AsyncIterator[FakeRequestOutput]:
        if self.shut_down:
            raise RuntimeError("the engine was shut down")  # vLLM: EngineDeadError
        ids = [int(i) for i in prompt["prompt_token_ids"]]
        if len(ids) > self.max_model_len:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                f"{self.max_model_len}. Make sure that `max_model_len` is no smaller than the number of text tokens."
            )
        if request_id in self.requests and self.requests[request_id].finish is None:
            raise ValueError(f"Request id {request_id} already running.")
        text = self.tokenizer.decode(ids)
        request = _Request(request_id, ids, sampling_params, self.tokenizer.encode(self.reply(text)),
                           fail=self.fail_on is not None and self.fail_on in text)
        self.requests[request_id] = request
        self._waiting.append(request)
        self._wake()
        try:
            while True:
                item = await request.queue.get()
                if item is None:  # aborted: the stream ends
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:  # cancelled, closed early, or failed: the request stops making tokens
            self._drop(request, "abort")

    async def abort(self, request_id: str) -> None:
        """Stop ``request_id``; nothing happens when it is finished or unknown."""
        self.abort_calls.append(request_id)
        request = self.requests.get(request_id)
        if request is not None and request.finish is None:
            self._drop(request, "abort")
            request.queue.put_nowait(None)

    def shutdown(self) -> None:
        self.shut_down = True
        for request in [*self._waiting, *self._running]:
            self._drop(request, "abort")
            request.queue.put_nowait(RuntimeError("the engine was shut down"))
        if self._loop_task is not None:
            self._loop_task.cancel()

    # -- the scheduler -------------------------------------------------------------------

    def _drop(self, request: _Request, reason: str) -> None:
        if request.finish is None:
            request.finish = reason
        if request in self._running:
            self._running.remove(request)
        if request in self._waiting:
            self._waiting.remove(request)

    def _wake(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._waiting or self._running:
            while self._waiting and len(self._running) < self.max_num_seqs:
                self._running.append(self._waiting.popleft())
            self.steps.append(frozenset(r.request_id for r in self._running))
            for request in list(self._running):
                self._step(request)
            await asyncio.sleep(self.step_s)

    def _step(self, request: _Request) -> None:
        if request.fail and request.made:
            self._drop(request, "error")
            request.queue.put_nowait(RuntimeError(f"engine step failed for request {request.request_id}"))
            return
        params = request.params
        for _ in range(self.tokens_per_step):
            if len(request.made) >= len(request.answer):
                request.finish = "stop"
                break
            request.made.append(request.answer[len(request.made)])
            request.text = self.tokenizer.decode(request.made)
            hits = [request.text.find(s) for s in params.stop if s and s in request.text]
            if hits:
                request.text, request.finish = request.text[: min(hits)], "stop"
                break
            if len(request.made) >= params.max_tokens:
                request.finish = "length"
                break
        if request.finish is None and len(request.made) >= len(request.answer):
            request.finish = "stop"  # the end-of-sequence token (not counted: no id for it here)
        finished = request.finish is not None
        request.queue.put_nowait(FakeRequestOutput(
            request_id=request.request_id, prompt_token_ids=list(request.prompt_ids),
            outputs=[FakeCompletionOutput(0, request.text, list(request.made), request.finish)], finished=finished,
        ))
        if finished:
            self._running.remove(request)
