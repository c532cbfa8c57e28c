"""``local/...`` backend: batching correctness, exact token counts, parameters, queue limits,
missing extras. Most tests use a tiny random-weight Llama (fast, no download) with the
embedded model's real tokenizer and chat template; the ``slow`` ones use SmolLM2 itself."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from atlas_middleware.backends import backend_for  # noqa: E402
from atlas_middleware.backends.local import LocalBackend, LocalOptions, clear_shared_backends  # noqa: E402
from atlas_middleware.backends.local.embedded import EMBEDDED_MODEL, ensure_converted  # noqa: E402
from atlas_middleware.errors import (  # noqa: E402
    ConfigError,
    InvalidRequestError,
    MissingExtraError,
    QueueFullError,
)
from atlas_middleware.messages import ChatRequest  # noqa: E402
from atlas_middleware.testing.local_models import one_torch_thread, tiny_llama  # noqa: E402

PROMPTS = [
    "What is 2 + 3?",
    "Name three colours of the rainbow and explain why the sky is blue in one sentence.",
    "Hi",
    "Write the first line of a poem about the sea.",
]


def request(text: str, **params: Any) -> ChatRequest:
    return ChatRequest(model="local/tiny", messages=[{"role": "user", "content": text}], params=params)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def embedded_folder() -> str:
    return str(ensure_converted())


@pytest.fixture(scope="session")
def tokenizer(embedded_folder: str) -> Any:
    return transformers.AutoTokenizer.from_pretrained(embedded_folder)


@pytest.fixture(scope="session")
def tiny_model(tokenizer: Any) -> Any:
    return tiny_llama(tokenizer)


@pytest.fixture
def tiny(tiny_model: Any, tokenizer: Any) -> Iterator[LocalBackend]:
    backend = LocalBackend(tiny_model, tokenizer, name="local/tiny",
                           options=LocalOptions(max_batch_size=8, batch_wait_ms=200, max_new_tokens=16))
    yield backend
    backend.close()


def run_together(backend: LocalBackend, requests: list[ChatRequest]) -> list[Any]:
    barrier = threading.Barrier(len(requests))

    def call(req: ChatRequest) -> Any:
        barrier.wait()
        return backend.complete(req)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(call, requests))


# -- batching --------------------------------------------------------------------------------


def test_batched_outputs_equal_one_by_one_outputs_under_greedy(tiny: LocalBackend) -> None:
    # Different prompt lengths (left padding) and different per-request token caps.
    requests = [request(p, max_tokens=cap) for p, cap in zip(PROMPTS, (16, 5, 12, 9), strict=True)]
    alone = [tiny.complete(r) for r in requests]
    assert tiny.batcher.batch_sizes == [1, 1, 1, 1]
    together = run_together(tiny, requests)
    assert max(tiny.batcher.batch_sizes[4:]) > 1, "concurrent calls were not batched"
    for a, b, r in zip(alone, together, requests, strict=True):
        assert b.content == a.content
        assert b.usage == a.usage
        assert b.finish_reason == a.finish_reason
        assert b.usage.completion_tokens <= r.params["max_tokens"]


async def test_async_calls_are_batched_and_equal_sync_ones(tiny: LocalBackend) -> None:
    requests = [request(p, max_tokens=8) for p in PROMPTS]
    sync = [tiny.complete(r) for r in requests]
    before = len(tiny.batcher.batch_sizes)
    results = await asyncio.gather(*(tiny.acomplete(r) for r in requests))
    assert [r.content for r in results] == [s.content for s in sync]
    assert tiny.batcher.batch_sizes[before:] == [4]


def test_greedy_tokens_match_transformers_generate(tiny: LocalBackend, tiny_model: Any, tokenizer: Any) -> None:
    messages = [{"role": "user", "content": PROMPTS[1]}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    with torch.inference_mode():
        ref = tiny_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=10, do_sample=False)
    expected = ref[0, len(ids):].tolist()
    job = tiny.job(request(PROMPTS[1], max_tokens=10))
    result = tiny.batcher.submit(job).result(timeout=60)
    assert result.token_ids == expected


# -- exact token counts ------------------------------------------------------------------------


def test_token_counts_come_from_the_models_own_tokenizer(tiny: LocalBackend, tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[0]}]
    response = tiny.complete(ChatRequest(model="local/tiny", messages=messages, params={"max_tokens": 7}))
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert response.usage.prompt_tokens == len(templated)
    job = tiny.job(ChatRequest(model="local/tiny", messages=messages, params={"max_tokens": 7}))
    tokens = tiny.batcher.submit(job).result(timeout=60).token_ids
    assert response.usage.completion_tokens == len(tokens)
    assert response.usage.exact and response.usage.counted_by == "provider"
    assert response.usage.calls == 1 and response.usage.cost_usd == 0.0


# -- parameters --------------------------------------------------------------------------------


def test_max_tokens_is_honoured(tiny: LocalBackend) -> None:
    response = tiny.complete(request(PROMPTS[1], max_tokens=3, ignore_eos=True))
    assert response.usage.completion_tokens == 3
    assert response.finish_reason == "length"
    default_cap = tiny.complete(request(PROMPTS[1], ignore_eos=True))
    assert default_cap.usage.completion_tokens == tiny.options.max_new_tokens


def test_stop_strings_cut_the_answer_and_end_generation(tiny: LocalBackend) -> None:
    full = tiny.complete(request(PROMPTS[3], max_tokens=16, ignore_eos=True)).text
    assert len(full) > 6
    stop = full[4:7]
    cut = tiny.complete(request(PROMPTS[3], max_tokens=16, ignore_eos=True, stop=[stop]))
    assert cut.text == full[: full.find(stop)]
    assert cut.finish_reason == "stop"
    assert cut.usage.completion_tokens < 16


def test_sampling_follows_temperature_and_seed(tiny: LocalBackend) -> None:
    greedy = tiny.complete(request(PROMPTS[0], max_tokens=12, ignore_eos=True)).text
    a = tiny.complete(request(PROMPTS[0], max_tokens=12, ignore_eos=True, temperature=1.5, seed=7)).text
    b = tiny.complete(request(PROMPTS[0], max_tokens=12, ignore_eos=True, temperature=1.5, seed=7)).text
    others = {tiny.complete(request(PROMPTS[0], max_tokens=12, ignore_eos=True, temperature=1.5, seed=s)).text
              for s in (1, 2, 3)}
    assert a == b
    assert others | {a} != {greedy}, "temperature had no effect"


def test_requests_the_backend_cannot_serve_are_refused_before_queueing(tiny: LocalBackend) -> None:
    with pytest.raises(InvalidRequestError, match="n=1"):
        tiny.complete(request("hi", n=2))
    with pytest.raises(InvalidRequestError, match="does not fit"):
        tiny.complete(request("word " * 400))
    assert tiny.batcher.batch_sizes == []


# -- back-pressure -----------------------------------------------------------------------------


def test_overload_raises_queue_full(tiny_model: Any, tokenizer: Any) -> None:
    backend = LocalBackend(tiny_model, tokenizer, name="local/tiny",
                           options=LocalOptions(max_batch_size=1, batch_wait_ms=0, max_queue=2))
    release, entered = threading.Event(), threading.Event()
    run = backend.batcher._run

    def gated(jobs: list[Any]) -> Any:
        entered.set()
        release.wait(30)
        return run(jobs)

    backend.batcher._run = gated
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(backend.complete, request("a", max_tokens=2))
        assert entered.wait(10)
        queued = [backend.batcher.submit(backend.job(request(x, max_tokens=2))) for x in "bc"]
        with pytest.raises(QueueFullError, match="queue is full"):
            backend.complete(request("d", max_tokens=2))
        release.set()
        assert first.result(timeout=30).usage.completion_tokens <= 2
        assert all(f.result(timeout=30).completion_tokens <= 2 for f in queued)
    backend.close()


# -- construction errors -----------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["torch", "transformers"])
def test_missing_local_extra_is_named(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(MissingExtraError, match=r"atlas-middleware\[local\]") as info:
        backend_for("local/smollm2")
    assert info.value.extra == "local"


def test_unknown_local_model_is_a_config_error(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="no model folder"):
        LocalBackend.for_model(f"local/{tmp_path / 'nothing-here'}")
    with pytest.raises(ConfigError, match="invalid local model options"):
        LocalBackend.for_model("local/smollm2", max_batch_size=0)


# -- the embedded model itself -------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2() -> Iterator[LocalBackend]:
    backend = LocalBackend.for_model(EMBEDDED_MODEL, batch_wait_ms=200)
    yield backend
    clear_shared_backends()


@pytest.mark.slow
def test_embedded_model_is_shared_and_answers(smollm2: LocalBackend) -> None:
    assert LocalBackend.for_model(EMBEDDED_MODEL, batch_wait_ms=200) is smollm2
    answer = smollm2.complete(ChatRequest(
        model=EMBEDDED_MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
        params={"max_tokens": 12},
    ))
    assert "Paris" in answer.text
    assert answer.finish_reason == "stop" and answer.usage.completion_tokens < 12


@pytest.mark.slow
def test_embedded_model_batched_equals_one_by_one(smollm2: LocalBackend) -> None:
    requests = [ChatRequest(model=EMBEDDED_MODEL, messages=[{"role": "user", "content": p}],
                            params={"max_tokens": 10}) for p in PROMPTS[:3]]
    alone = [smollm2.complete(r) for r in requests]
    together = run_together(smollm2, requests)
    assert [t.text for t in together] == [a.text for a in alone]
    assert [t.usage for t in together] == [a.usage for a in alone]


@pytest.mark.slow
def test_embedded_model_survivors_of_an_abandoned_row_answer_as_if_alone(smollm2: LocalBackend) -> None:
    requests = [ChatRequest(model=EMBEDDED_MODEL, messages=[{"role": "user", "content": p}],
                            params={"max_tokens": 8, "ignore_eos": True}) for p in PROMPTS[:3]]
    generator = smollm2._generator
    expected = [generator.generate([smollm2.job(r)])[0].token_ids for r in requests]
    jobs = [smollm2.job(r) for r in requests]
    sizes: list[int] = []
    inner = generator._forward

    def forward(ids: Any, *args: Any) -> Any:
        if len(sizes) == 3:
            jobs[0].abandoned.set()  # the first caller leaves during the 4th forward pass
        sizes.append(int(ids.shape[0]))
        return inner(ids, *args)

    generator._forward = forward  # type: ignore[method-assign]
    try:
        results = generator.generate(jobs)
    finally:
        del generator._forward
    assert sizes == [3, 3, 3, 3] + [2] * 4
    assert results[0].finish_reason == "abandoned" and results[0].token_ids == expected[0][:3]
    assert [r.token_ids for r in results[1:]] == expected[1:]


# -- the embedded teacher's prefill --------------------------------------------------------------


def test_prefilled_teacher_starts_the_reply_and_keeps_one_paragraph() -> None:
    from atlas_middleware.backends.local.embedded import PrefilledTeacher
    from atlas_middleware.teaching.protocols import ATLAS, STRUCTURED
    from atlas_middleware.testing import FunctionBackend

    seen: list[ChatRequest] = []

    def reply(req: ChatRequest) -> str:
        seen.append(req)
        return "Check the units first.\n\nCheck the units first.\n\nCheck"

    teacher = PrefilledTeacher(FunctionBackend(reply))
    out = teacher.complete(ChatRequest(model="local/smollm2", messages=[{"role": "user", "content": "task"}],
                                       params={"max_tokens": 32}))
    assert seen[0].messages[-1] == {"role": "assistant", "content": "<teaching>"}
    assert seen[0].params["continue_final_message"] is True and "</teaching>" in seen[0].params["stop"]
    assert STRUCTURED.parse(out).guidance == ATLAS.parse(out).guidance == "Check the units first."


def test_continue_final_message_continues_the_assistant_turn(tiny: LocalBackend, tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "task"}, {"role": "assistant", "content": "<teaching>"}]
    ids = tiny.encode(messages, continue_final=True)
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n<teaching>")
    opened = tiny.encode(messages[:1])
    assert tokenizer.decode(opened).endswith("<|im_start|>assistant\n")


# -- abandoned requests ------------------------------------------------------------------------
# A caller that stops waiting (its timeout, a cancelled task, the teaching loop's deadline)
# must not keep decoding in the shared batch. ``Steps`` records the batch size of every forward
# pass (index 0 is the prefill) and can hold the batch thread before one of them, so the tests
# abandon a request at an exact step instead of racing a clock.


class Steps:
    def __init__(self, backend: LocalBackend, pause_before: int | None = None) -> None:
        self.sizes: list[int] = []
        self.paused, self.resume = threading.Event(), threading.Event()
        inner = backend._generator._forward

        def forward(ids: Any, mask: Any, pos: Any, cache: Any) -> Any:
            if len(self.sizes) == pause_before:
                self.paused.set()
                self.resume.wait(30)
            self.sizes.append(int(ids.shape[0]))
            return inner(ids, mask, pos, cache)

        backend._generator._forward = forward  # type: ignore[method-assign]


@pytest.fixture
def make_local(tiny_model: Any, tokenizer: Any) -> Iterator[Any]:
    made: list[LocalBackend] = []

    def make(model: Any = None, **options: Any) -> LocalBackend:
        options.setdefault("max_new_tokens", 16)
        backend = LocalBackend(model or tiny_model, tokenizer, name="local/tiny", options=LocalOptions(**options))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def alone(backend: LocalBackend, req: ChatRequest) -> Any:
    """The one-by-one answer, straight from the generator (before the batch thread runs)."""
    return backend._generator.generate([backend.job(req)])[0]


def test_generator_drops_a_row_abandoned_mid_decode_and_never_prefills_an_abandoned_one(
    make_local: Any,
) -> None:
    backend = make_local()
    requests = [request(p, max_tokens=12, ignore_eos=True) for p in PROMPTS]
    expected = [alone(backend, r).token_ids for r in requests]
    jobs = [backend.job(r) for r in requests]
    jobs[3].abandoned.set()  # its caller left while it waited in the queue
    steps = Steps(backend)
    inner = backend._generator._forward

    def forward(*args: Any) -> Any:
        if len(steps.sizes) == 3:  # the caller of job 1 leaves during the 4th forward pass
            jobs[1].abandoned.set()
        return inner(*args)

    backend._generator._forward = forward  # type: ignore[method-assign]
    results = backend._generator.generate(jobs)
    # Prefill and 3 steps with 3 rows; the pass in flight when job 1 left cannot be
    # interrupted, but from the next one on its row (and its KV cache rows) is gone.
    assert steps.sizes == [3, 3, 3, 3] + [2] * 8
    assert results[1].finish_reason == "abandoned"
    assert results[1].token_ids == expected[1][:3]
    assert results[3].finish_reason == "abandoned" and results[3].completion_tokens == 0
    for k in (0, 2):
        assert results[k].token_ids == expected[k], "a survivor's answer changed"
        assert results[k].finish_reason == "length"


def test_a_sync_call_past_its_timeout_leaves_the_batch_and_the_other_is_unchanged(make_local: Any) -> None:
    backend = make_local(max_batch_size=2, batch_wait_ms=5000)
    leaves = request(PROMPTS[1], max_tokens=16, ignore_eos=True, timeout=1.0)
    stays = request(PROMPTS[0], max_tokens=16, ignore_eos=True)
    expected = alone(backend, stays)
    steps = Steps(backend, pause_before=3)
    with ThreadPoolExecutor(2) as pool:
        left, stayed = pool.submit(backend.complete, leaves), pool.submit(backend.complete, stays)
        with pytest.raises(TimeoutError, match="within 1 s"):
            left.result(timeout=30)  # while the batch is held at step 3: nobody waited for the batch
        steps.resume.set()
        answer = stayed.result(timeout=30)
    assert steps.sizes == [2, 2, 2, 2] + [1] * 12, "the timed-out request kept decoding"
    assert answer.usage.completion_tokens == 16 and answer.content == expected.text
    assert backend.batcher.waiting == 0


async def test_a_cancelled_async_call_leaves_the_batch_and_the_other_is_unchanged(make_local: Any) -> None:
    backend = make_local(max_batch_size=2, batch_wait_ms=5000)
    leaves = request(PROMPTS[1], max_tokens=16, ignore_eos=True)  # no timeout of its own
    stays = request(PROMPTS[0], max_tokens=16, ignore_eos=True)
    expected = alone(backend, stays)
    steps = Steps(backend, pause_before=3)
    stayed = asyncio.ensure_future(backend.acomplete(stays))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(backend.acomplete(leaves), 1.0)  # cancels the call's task
    steps.resume.set()
    answer = await stayed
    assert steps.sizes == [2, 2, 2, 2] + [1] * 12, "the cancelled request kept decoding"
    assert answer.content == expected.text


def test_queued_requests_abandoned_by_timeout_or_token_never_start_and_free_their_slot(make_local: Any) -> None:
    from atlas_middleware.backends.base import CancelToken, cancellation
    from atlas_middleware.backends.local.batcher import RequestAbandonedError

    backend = make_local(max_batch_size=1, batch_wait_ms=0, max_queue=1)
    ran: list[list[int]] = []
    run = backend.batcher._run

    def recording(jobs: list[Any]) -> Any:
        ran.extend(job.prompt_ids for job in jobs)
        return run(jobs)

    backend.batcher._run = recording
    steps = Steps(backend, pause_before=1)  # the first request holds the batch thread
    token = CancelToken()

    def under_token(req: ChatRequest) -> Any:
        with cancellation(token):
            return backend.complete(req)

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(backend.complete, request("first", max_tokens=4))
        assert steps.paused.wait(30)
        with pytest.raises(TimeoutError):  # its own timeout passes while it waits in the queue
            backend.complete(request("timed out in the queue", max_tokens=4, timeout=0.2))
        assert backend.batcher.waiting == 0, "the timed-out request kept its queue slot"
        dropped = pool.submit(under_token, request("dropped by its caller", max_tokens=4))
        while backend.batcher.waiting == 0:
            assert not dropped.done(), dropped.exception()
            threading.Event().wait(0.01)
        with pytest.raises(QueueFullError):
            backend.complete(request("no room", max_tokens=4))
        token.cancel()  # what the sync driver does at the call's deadline
        with pytest.raises(RequestAbandonedError):
            dropped.result(timeout=5)
        assert backend.batcher.waiting == 0
        late = pool.submit(backend.complete, request("late", max_tokens=4))  # takes the freed slot
        steps.resume.set()
        assert first.result(timeout=30).usage.completion_tokens <= 4
        assert late.result(timeout=30).usage.completion_tokens <= 4
    started = [backend.tokenizer.decode(ids) for ids in ran]
    assert len(started) == 2 and "first" in started[0] and "late" in started[1]
    with pytest.raises(RequestAbandonedError):  # a token cancelled before the call: nothing queued
        under_token(request("too late", max_tokens=4))
    assert len(ran) == 2


# -- the teaching loop's deadline reaches the local backend ----------------------------------------


def _one_call_flow(req: ChatRequest, timeout: float) -> Any:
    """A flow with one teacher call under a deadline: what ``teach()`` does for the teacher."""
    from atlas_middleware.report import CallReport
    from atlas_middleware.teaching.commands import Deliver, ModelCall, Start, Wait

    report = CallReport(student_model="s", policy="strict")
    handle = yield Start(ModelCall(role="teacher", target="teacher", request=req, timeout=timeout))
    (result,) = yield Wait((handle,))
    yield Deliver(None, error=result.error, report=report)
    return report


def _finished_forwards(backend: LocalBackend, steps: Steps) -> int:
    """Forward passes of everything queued so far: the batch thread is serial, so once a
    one-token request queued behind them has its answer, they are done."""
    backend.complete(request("after", max_tokens=1))
    return len(steps.sizes) - 1


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_driver_giving_up_at_the_deadline_stops_the_local_decode(make_local: Any, driver: str) -> None:
    from atlas_middleware.errors import TeacherTimeout
    from atlas_middleware.runtime.drivers import AsyncDriver, SyncDriver

    backend = make_local(batch_wait_ms=0)
    steps = Steps(backend, pause_before=3)
    # No ``timeout`` parameter in the request: only the driver's signal can stop it.
    req = request(PROMPTS[1], max_tokens=64, ignore_eos=True)
    if driver == "sync":
        sync = SyncDriver({"teacher": backend})
        delivered = sync.run(_one_call_flow(req, 0.5), lambda report, out: None)
        sync.close()
    else:
        async def go() -> Any:
            return await AsyncDriver({"teacher": backend}).run(_one_call_flow(req, 0.5), _anoop)

        delivered = asyncio.run(go())
    assert isinstance(delivered.error, TeacherTimeout)
    steps.resume.set()
    assert _finished_forwards(backend, steps) == 4, "the abandoned call kept decoding"


async def _anoop(*_: Any) -> None:
    return None


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_teacher_timeout_in_the_teaching_loop_stops_a_local_teacher(
    make_local: Any, tokenizer: Any, mode: str
) -> None:
    from conftest import QUESTION, STUDENT_SCRIPT

    from atlas_middleware import Atlas, Reason
    from atlas_middleware.testing import ScriptedBackend

    # The teacher's prompt (question, probe, instructions) needs more than 256 positions.
    teacher = make_local(tiny_llama(tokenizer, max_position_embeddings=4096), batch_wait_ms=0)
    steps = Steps(teacher, pause_before=3)
    atlas = Atlas(student_backend=ScriptedBackend(STUDENT_SCRIPT), teacher_backend=teacher,
                  teacher="local/tiny", teacher_timeout=0.5, teacher_params={"ignore_eos": True}, ledger="none")
    try:
        if mode == "sync":
            resp = atlas.completion(model="student-model", messages=QUESTION)
        else:
            resp = asyncio.run(atlas.acompletion(model="student-model", messages=QUESTION))
    finally:
        atlas.close()
    assert resp.atlas.reason == Reason.TEACHER_TIMEOUT
    steps.resume.set()
    # Without abandonment the teacher would decode all 512 of teacher_max_tokens.
    assert _finished_forwards(teacher, steps) == 4


# -- one bad request fails alone ---------------------------------------------------------------


def test_an_over_long_prompt_fails_alone_among_concurrent_neighbours(make_local: Any) -> None:
    backend = make_local(max_batch_size=4, batch_wait_ms=200)
    requests = [request(PROMPTS[0]), request("word " * 400), request(PROMPTS[2])]
    expected = [alone(backend, requests[k]) for k in (0, 2)]
    barrier = threading.Barrier(len(requests))

    def call(req: ChatRequest) -> Any:
        barrier.wait()
        try:
            return backend.complete(req)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(requests)) as pool:
        outs = list(pool.map(call, requests))
    assert isinstance(outs[1], InvalidRequestError) and "does not fit" in str(outs[1])
    assert [outs[0].content, outs[2].content] == [e.text for e in expected]


async def test_an_over_long_prompt_fails_alone_among_concurrent_async_neighbours(make_local: Any) -> None:
    backend = make_local(max_batch_size=4, batch_wait_ms=200)
    requests = [request(PROMPTS[0]), request("word " * 400), request(PROMPTS[2])]
    expected = [alone(backend, requests[k]) for k in (0, 2)]
    outs = await asyncio.gather(*(backend.acomplete(r) for r in requests), return_exceptions=True)
    assert isinstance(outs[1], InvalidRequestError)
    assert [outs[0].content, outs[2].content] == [e.text for e in expected]  # type: ignore[union-attr]


def test_parameters_that_would_break_the_batch_are_refused_before_queueing(tiny: LocalBackend) -> None:
    with pytest.raises(InvalidRequestError, match="seed must be an integer"):
        tiny.complete(request("hi", seed="7", temperature=1.0))
    with pytest.raises(InvalidRequestError, match="stop must be a string or a list of strings"):
        tiny.complete(request("hi", stop=[1]))
    with pytest.raises(InvalidRequestError, match="stop must be"):
        tiny.complete(request("hi", stop=5))
    assert tiny.batcher.batch_sizes == []


def test_a_request_that_makes_the_model_raise_fails_alone_and_its_batch_mates_answer(make_local: Any) -> None:
    """A job the model cannot run (a token id outside its vocabulary: the embedding raises)
    shares a batch with two good requests: they still get the answers they get alone."""
    import dataclasses

    backend = make_local(max_batch_size=3, batch_wait_ms=5000)  # the batch starts when all 3 are in
    good = [request(PROMPTS[0], max_tokens=8), request(PROMPTS[3], max_tokens=6)]
    expected = [alone(backend, r) for r in good]
    vocab = backend.model.config.vocab_size
    bad = dataclasses.replace(backend.job(request(PROMPTS[1])), prompt_ids=[1, vocab + 5, 2])
    with ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(backend.complete, r) for r in good]
        while backend.batcher.waiting < 2:
            threading.Event().wait(0.005)
        failed = backend.batcher.submit(bad)
        outs = [a.result(60) for a in answers]
    with pytest.raises(IndexError):
        failed.result(60)
    assert [o.content for o in outs] == [e.text for e in expected]
    assert [o.usage.completion_tokens for o in outs] == [e.completion_tokens for e in expected]
    assert backend.batcher.batch_sizes[0] == 3 and 1 in backend.batcher.batch_sizes  # split down to the bad one
