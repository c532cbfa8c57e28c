"""``vllm/...``: construction where it cannot run, and the backend's own work against the
fake async engine of ``atlas_middleware.testing.vllm_engine`` (vLLM is not installed here):
continuous batching across arrivals, abort on cancel, streamed deltas, exact usage, and a
bad request failing alone, from sync and async callers."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from atlas_middleware.backends import backend_for
from atlas_middleware.backends.base import CancelToken, cancellation
from atlas_middleware.backends.local.batcher import BatcherClosedError, RequestAbandonedError
from atlas_middleware.backends.local.vllm_inprocess import VLLMBackend, VLLMOptions, build_engine
from atlas_middleware.errors import ConfigError, InvalidRequestError, MissingExtraError, QueueFullError
from atlas_middleware.messages import ChatRequest
from atlas_middleware.runtime.chunks import Assembler
from atlas_middleware.testing.vllm_engine import FakeAsyncEngine, FakeSamplingParams

LONG = "x" * 4000  # an answer that takes thousands of engine steps: still running when the test looks


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_construction_names_the_extra() -> None:
    with pytest.raises(MissingExtraError, match=r"pip install 'atlas-middleware\[vllm\]'") as info:
        backend_for("vllm/Arc-Intelligence/ATLAS-8B-Thinking")
    assert info.value.extra == "vllm"


def test_without_a_gpu_construction_names_the_missing_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    # vLLM "installed" (an empty module is enough: the GPU check comes before any use of it).
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="need a CUDA GPU") as info:
        VLLMBackend.for_model("vllm/Arc-Intelligence/ATLAS-8B-Thinking")
    assert "hosted_vllm/" in str(info.value)


def test_bad_model_string_and_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="vllm/<model>"):
        VLLMBackend.for_model("vllm/")
    with pytest.raises(ConfigError, match="invalid vLLM options"):
        VLLMBackend.for_model("vllm/m", tensor_parallel_size=0)


def test_the_engine_is_vllms_async_engine_built_from_engine_args() -> None:
    made: list[tuple[dict[str, Any], str]] = []

    class AsyncEngineArgs:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

    class AsyncLLMEngine:  # vllm.AsyncLLMEngine: used where vllm.v1.engine.async_llm is absent (here)
        @classmethod
        def from_engine_args(cls, args: AsyncEngineArgs) -> str:
            made.append((args.kwargs, threading.current_thread().name))
            return "engine"

    vllm = types.SimpleNamespace(AsyncEngineArgs=AsyncEngineArgs, AsyncLLMEngine=AsyncLLMEngine)
    assert build_engine(vllm, "org/model-x", VLLMOptions(tensor_parallel_size=2, max_batch_size=64)) == "engine"
    assert made[0][0] == {"model": "org/model-x", "tensor_parallel_size": 2, "max_model_len": 8192,
                          "gpu_memory_utilization": 0.9, "enable_prefix_caching": True, "dtype": "auto",
                          "max_num_seqs": 64}


def test_for_model_builds_the_engine_on_its_own_loop_and_shares_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    built: list[tuple[str, bool]] = []

    class AsyncEngineArgs:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

    class AsyncLLMEngine:
        @classmethod
        def from_engine_args(cls, args: AsyncEngineArgs) -> FakeAsyncEngine:
            try:  # vLLM's engine binds to the loop it is built on: the backend's own
                asyncio.get_running_loop()
                on_a_loop = True
            except RuntimeError:
                on_a_loop = False
            built.append((threading.current_thread().name, on_a_loop))
            return FakeAsyncEngine()

    module = types.ModuleType("vllm")
    module.AsyncEngineArgs = AsyncEngineArgs  # type: ignore[attr-defined]
    module.AsyncLLMEngine = AsyncLLMEngine  # type: ignore[attr-defined]
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    a = VLLMBackend.for_model("vllm/org/model-y", max_model_len=4096)
    b = VLLMBackend.for_model("vllm/org/model-y", max_model_len=4096)
    c = VLLMBackend.for_model("vllm/org/model-y")
    try:
        assert a is b and a is not c and len(built) == 2
        assert built[0] == ("atlas-vllm-org/model-y", True)
        assert a.complete(_req("hi")).finish_reason == "stop"
    finally:
        a.close()
        c.close()
    assert a.engine.shut_down
    d = VLLMBackend.for_model("vllm/org/model-y", max_model_len=4096)  # a closed one is not handed out
    try:
        assert d is not a and len(built) == 3
    finally:
        d.close()


# -- the backend against the fake engine ----------------------------------------------------


def _req(content: str = "What is 2+2?", **params: Any) -> ChatRequest:
    return ChatRequest(model="vllm/m", messages=[{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": content}], params=params)


def _prompt(content: str) -> str:
    return f"<system>Be brief.<user>{content}<assistant>"


def _reply(text: str) -> str:
    return LONG if "long" in text else f"answer to {len(text)} ids"


@pytest.fixture
def make() -> Iterator[Callable[..., VLLMBackend]]:
    made: list[VLLMBackend] = []

    def factory(options: VLLMOptions | None = None, **engine: Any) -> VLLMBackend:
        engine.setdefault("reply", _reply)
        backend = VLLMBackend("m", options, engine=FakeAsyncEngine(**engine), sampling_params=FakeSamplingParams)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


def _engine(backend: VLLMBackend) -> FakeAsyncEngine:
    assert isinstance(backend.engine, FakeAsyncEngine)
    return backend.engine


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.002)


async def _await_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.002)


def _started(engine: FakeAsyncEngine, count: int = 1) -> Callable[[], bool]:
    """True once ``count`` requests have made tokens."""
    return lambda: sum(1 for r in engine.requests.values() if r.made) >= count


def test_job_templates_the_chat_and_maps_the_sampling_parameters(make: Callable[..., VLLMBackend]) -> None:
    backend = make()
    tools = [{"type": "function", "function": {"name": "add"}}]
    ids, sp = backend.job(_req(max_completion_tokens=7, temperature=0.3, top_p=0.9, stop="\n\n", seed=5, tools=tools))
    (chat, seen_tools), = _engine(backend).tokenizer.templated
    assert [m["role"] for m in chat] == ["system", "user"] and seen_tools == tools
    assert ids == [ord(c) for c in _prompt("What is 2+2?")]
    assert sp.as_dict() == {"max_tokens": 7, "temperature": 0.3, "top_p": 0.9, "stop": ["\n\n"], "seed": 5,
                            "ignore_eos": False}
    # unset: greedy and max_new_tokens; max_tokens when that is what is given
    assert backend.job(_req())[1].as_dict() | {"stop": []} == {
        "max_tokens": 512, "temperature": 0.0, "top_p": 1.0, "stop": [], "seed": None, "ignore_eos": False}
    assert backend.job(_req(max_tokens=9))[1].max_tokens == 9
    with pytest.raises(InvalidRequestError, match="n=1"):
        backend.job(_req(n=2))
    prefilled = ChatRequest(model="vllm/m", messages=[{"role": "user", "content": "Hi"},
                                                      {"role": "assistant", "content": "Hel"}],
                            params={"continue_final_message": True})
    assert backend.job(prefilled)[0] == [ord(c) for c in "<user>Hi<assistant>Hel"]  # no new turn opened


def test_usage_is_the_engines_token_counts_and_finish_reasons_map(make: Callable[..., VLLMBackend]) -> None:
    backend = make(tokens_per_step=4)
    prompt = _prompt("What is 2+2?")
    out = backend.complete(_req())
    assert out.content == f"answer to {len(prompt)} ids" and out.finish_reason == "stop"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(prompt), len(out.content))
    assert (out.usage.calls, out.usage.counted_by, out.usage.cost_usd) == (1, "provider", 0.0)
    cut = backend.complete(_req(max_tokens=3))
    assert (cut.content, cut.finish_reason, cut.usage.completion_tokens) == ("ans", "length", 3)
    stopped = backend.complete(_req(stop=" to"))
    # the tokens the engine made, not the text's length: " to" was made, then cut
    assert (stopped.content, stopped.finish_reason, stopped.usage.completion_tokens) == ("answer", "stop", 9)


def test_a_request_arriving_mid_generation_joins_the_running_one(make: Callable[..., VLLMBackend]) -> None:
    """Continuous batching: the second request is served while the first still decodes, in
    the same engine steps, not after it."""
    backend = make()
    engine = _engine(backend)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(backend.complete, _req("long one"))
        _wait_for(_started(engine))
        second = backend.complete(_req("short one"))
        assert not first.done()
        long_id, short_id = list(engine.requests)
        assert long_id in engine.generating  # the first is still decoding
        shared = [i for i, step in enumerate(engine.steps) if {long_id, short_id} <= step]
        assert shared and engine.steps[0] == {long_id}  # the first ran alone, then both together
        assert second.content == f"answer to {len(_prompt('short one'))} ids"
        backend.close()  # aborts the first
        with pytest.raises(BatcherClosedError):
            first.result(10)


async def test_async_arrivals_share_engine_steps_and_each_gets_its_own_answer(
        make: Callable[..., VLLMBackend]) -> None:
    backend = make(tokens_per_step=2, step_s=0.005)
    engine = _engine(backend)
    questions = [f"question {'q' * i}" for i in range(5)]
    outs = await asyncio.gather(*(backend.acomplete(_req(q)) for q in questions))
    for q, out in zip(questions, outs, strict=True):
        assert out.content == f"answer to {len(_prompt(q))} ids"
        assert out.usage.prompt_tokens == len(_prompt(q))
    assert max(len(step) for step in engine.steps) == 5  # one engine, all five in one step
    # the backend's loop is its own: the caller's loop never runs the engine
    assert engine._loop_task is not None and engine._loop_task.get_loop() is not asyncio.get_running_loop()


async def test_a_cancelled_async_call_aborts_its_request_in_the_engine(make: Callable[..., VLLMBackend]) -> None:
    backend = make()
    engine = _engine(backend)
    task = asyncio.ensure_future(backend.acomplete(_req("long one")))
    await _await_for(_started(engine))
    (request_id,) = engine.requests
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _await_for(lambda: request_id in engine.abort_calls)
    assert request_id not in engine.generating
    made = len(engine.requests[request_id].made)
    assert made < len(LONG)
    await asyncio.sleep(0.05)
    assert len(engine.requests[request_id].made) == made  # no token after the abort
    assert (await backend.acomplete(_req("after"))).finish_reason == "stop"


def test_a_cancel_token_and_a_request_timeout_abort_sync_calls(make: Callable[..., VLLMBackend]) -> None:
    backend = make()
    engine = _engine(backend)
    token = CancelToken()

    def call() -> Any:
        with cancellation(token):
            return backend.complete(_req("long one"))

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        _wait_for(_started(engine))
        token.cancel()
        with pytest.raises(RequestAbandonedError):
            future.result(10)
    first_id = list(engine.requests)[0]
    _wait_for(lambda: first_id in engine.abort_calls)
    assert first_id not in engine.generating
    with pytest.raises(TimeoutError, match="within 0.05 s"):
        backend.complete(_req("long two", timeout=0.05))
    second_id = list(engine.requests)[1]
    assert second_id in engine.abort_calls and second_id not in engine.generating
    with pytest.raises(RequestAbandonedError), cancellation(token):  # already cancelled: never submitted
        backend.complete(_req("long three"))
    assert len(engine.requests) == 2


def test_a_stream_yields_each_steps_new_text_then_finish_and_usage(make: Callable[..., VLLMBackend]) -> None:
    backend = make(tokens_per_step=3)
    chunks = list(backend.stream(_req()))
    whole = backend.complete(_req())
    texts = [c.content for c in chunks if c.content]
    assert len(texts) == -(-len(whole.text) // 3) and all(len(t) <= 3 for t in texts)  # deltas, not prefixes
    assert "".join(texts) == whole.text
    assert [c.finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert chunks[-1].usage == whole.usage
    assembled = Assembler()
    for chunk in chunks:
        assembled.add(chunk)
    assert assembled.response().content == whole.content


async def test_an_async_stream_yields_deltas_and_closing_it_early_aborts(make: Callable[..., VLLMBackend]) -> None:
    backend = make(tokens_per_step=2)
    chunks = [c async for c in backend.astream(_req())]
    whole = await backend.acomplete(_req())
    assert "".join(c.content or "" for c in chunks) == whole.text and len(chunks) > 2
    assert chunks[-1].usage == whole.usage and chunks[-1].finish_reason == "stop"

    engine = _engine(backend)
    stream = backend.astream(_req("long one"))
    first = await stream.__anext__()
    assert first.content == "xx"
    await stream.aclose()
    long_id = list(engine.requests)[-1]
    await _await_for(lambda: long_id in engine.abort_calls)
    assert long_id not in engine.generating


def test_a_sync_stream_closed_early_aborts_its_request(make: Callable[..., VLLMBackend]) -> None:
    backend = make()
    engine = _engine(backend)
    stream = backend.stream(_req("long one"))
    assert next(stream).content == "x"
    stream.close()
    (request_id,) = engine.requests
    _wait_for(lambda: request_id in engine.abort_calls)
    assert request_id not in engine.generating


def test_an_over_long_prompt_fails_alone_and_its_neighbours_are_answered_sync(
        make: Callable[..., VLLMBackend]) -> None:
    backend = make(max_model_len=60)
    questions = ["q1", "far too long " * 10, "q3", "q4"]
    barrier = threading.Barrier(len(questions))

    def call(q: str) -> Any:
        barrier.wait()
        try:
            return backend.complete(_req(q))
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(questions)) as pool:
        outs = list(pool.map(call, questions))
    assert isinstance(outs[1], ValueError)
    assert "longer than the maximum model length of 60" in str(outs[1])
    for q, out in zip(questions, outs, strict=True):
        if out is not outs[1]:
            assert out.content == f"answer to {len(_prompt(q))} ids"


async def test_an_over_long_prompt_or_a_failing_request_fails_alone_async(make: Callable[..., VLLMBackend]) -> None:
    backend = make(max_model_len=60, fail_on="poison", tokens_per_step=2, step_s=0.005)
    engine = _engine(backend)
    questions = ["q1", "far too long " * 10, "poison", "q4"]
    outs = await asyncio.gather(*(backend.acomplete(_req(q)) for q in questions), return_exceptions=True)
    assert isinstance(outs[1], ValueError) and "maximum model length" in str(outs[1])
    assert isinstance(outs[2], RuntimeError) and "engine step failed" in str(outs[2])
    ok = [out for i, out in enumerate(outs) if i in (0, 3)]
    assert [o.content for o in ok] == [f"answer to {len(_prompt(q))} ids" for q in ("q1", "q4")]  # type: ignore[union-attr]
    poison_id = next(rid for rid, r in engine.requests.items() if r.fail)
    assert any(poison_id in step and len(step) > 1 for step in engine.steps)  # it failed beside a running neighbour
    # a stream fails the same way, before its first chunk
    with pytest.raises(ValueError, match="maximum model length"):
        [c async for c in backend.astream(_req("far too long " * 10))]


def test_a_full_engine_refuses_at_once_and_close_aborts_and_shuts_down(make: Callable[..., VLLMBackend]) -> None:
    backend = make(VLLMOptions(max_queue=1))
    engine = _engine(backend)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(backend.complete, _req("long one"))
        _wait_for(_started(engine))
        with pytest.raises(QueueFullError, match="1 requests"):
            backend.complete(_req("another"))
        backend.close()
        with pytest.raises(BatcherClosedError):
            first.result(10)
    (request_id,) = engine.requests
    assert request_id in engine.abort_calls and engine.shut_down and not engine.generating
    with pytest.raises(BatcherClosedError):
        backend.complete(_req())


def test_a_teacher_prompt_over_the_engines_length_fails_open_to_the_student(
        make: Callable[..., VLLMBackend], call: Any) -> None:
    from conftest import STUDENT_SCRIPT

    from atlas_middleware import Atlas
    from atlas_middleware.report import Reason
    from atlas_middleware.testing import ScriptedBackend

    teacher = make(max_model_len=60)  # the teacher's instructions alone are longer
    atlas = Atlas(student_backend=ScriptedBackend(STUDENT_SCRIPT), teacher_backend=teacher, teacher="vllm/m",
                  ledger="none")
    try:
        out = call(atlas)
    finally:
        atlas.close()
    report = out.atlas
    assert report.reason == Reason.TEACHER_ERROR
    assert any("maximum model length of 60" in e.message for e in report.errors)
    assert out.choices[0].message.content == STUDENT_SCRIPT["baseline"]
