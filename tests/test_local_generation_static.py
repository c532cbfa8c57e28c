"""``local/...`` backend, ``cache="static"``: the preallocated, fixed-shape decode loop must give
exactly the tokens of the dynamic loop and of one-by-one decoding (greedy), keep its shapes when
rows finish or are abandoned, reuse its caches, and refuse ``compile=True`` where it cannot work.
A tiny random-weight Llama with the embedded model's tokenizer, as in ``test_local_backend``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from atlas_middleware.backends.local import LocalBackend, LocalOptions  # noqa: E402
from atlas_middleware.backends.local.embedded import ensure_converted  # noqa: E402
from atlas_middleware.backends.local.generation import BatchGenerator  # noqa: E402
from atlas_middleware.errors import ConfigError, InvalidRequestError  # noqa: E402
from atlas_middleware.messages import ChatRequest  # noqa: E402
from atlas_middleware.testing.local_models import one_torch_thread, tiny_llama  # noqa: E402

PROMPTS = [
    "What is 2 + 3?",
    "Name three colours of the rainbow and explain why the sky is blue in one sentence.",
    "Hi",
    "Write the first line of a poem about the sea.",
]
STATIC_LEN = 128  # the prompts above are 30-50 tokens with the chat template


def request(text: str, **params: Any) -> ChatRequest:
    return ChatRequest(model="local/tiny", messages=[{"role": "user", "content": text}], params=params)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return transformers.AutoTokenizer.from_pretrained(str(ensure_converted()))


@pytest.fixture(scope="module")
def tiny_model(tokenizer: Any) -> Any:
    return tiny_llama(tokenizer)


@pytest.fixture
def make_local(tiny_model: Any, tokenizer: Any) -> Iterator[Any]:
    made: list[LocalBackend] = []

    def make(**options: Any) -> LocalBackend:
        options.setdefault("max_new_tokens", 16)
        backend = LocalBackend(tiny_model, tokenizer, name="local/tiny", options=LocalOptions(**options))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def static(make_local: Any, **options: Any) -> LocalBackend:
    options.setdefault("max_batch_size", 8)
    options.setdefault("static_max_len", STATIC_LEN)
    return make_local(cache="static", **options)  # type: ignore[no-any-return]


class Passes:
    """Records the input shapes of every forward pass (index 0 is the prefill); ``before(n)``
    runs just before pass ``n`` (to abandon a row at an exact step)."""

    def __init__(self, generator: BatchGenerator, before: dict[int, Any] | None = None) -> None:
        self.ids: list[tuple[int, ...]] = []
        self.masks: list[tuple[int, ...]] = []
        inner = generator._forward

        def forward(ids: Any, mask: Any, pos: Any, cache: Any) -> Any:
            if before and len(self.ids) in before:
                before[len(self.ids)]()
            self.ids.append(tuple(ids.shape))
            self.masks.append(tuple(mask.shape))
            return inner(ids, mask, pos, cache)

        generator._forward = forward  # type: ignore[method-assign]

    @property
    def rows(self) -> list[int]:
        return [shape[0] for shape in self.ids]


def one_by_one(backend: LocalBackend, requests: list[ChatRequest]) -> list[Any]:
    return [backend._generator.generate([backend.job(r)])[0] for r in requests]


def mixed_requests(dynamic: LocalBackend) -> list[ChatRequest]:
    """Different prompt lengths, token caps, a stop string, end tokens honoured on some rows."""
    full = dynamic.complete(request(PROMPTS[3], max_tokens=16, ignore_eos=True)).text
    assert len(full) > 6
    return [
        request(PROMPTS[0], max_tokens=16, ignore_eos=True),
        request(PROMPTS[1], max_tokens=5),
        request(PROMPTS[2], max_tokens=12),
        request(PROMPTS[3], max_tokens=16, ignore_eos=True, stop=[full[4:7]]),
    ]


def same(a: Any, b: Any) -> None:
    assert (a.token_ids, a.text, a.finish_reason, a.completion_tokens) == (
        b.token_ids, b.text, b.finish_reason, b.completion_tokens)


# -- the same tokens -------------------------------------------------------------------------------


def test_static_batch_equals_the_dynamic_batch_and_one_by_one_decoding(make_local: Any) -> None:
    dynamic, fixed = make_local(), static(make_local)
    requests = mixed_requests(dynamic)
    alone = one_by_one(dynamic, requests)
    assert alone[3].finish_reason == "stop" and alone[3].completion_tokens < 16  # the stop string hit
    assert [a.completion_tokens for a in alone[:2]] == [16, 5]
    batched = dynamic._generator.generate([dynamic.job(r) for r in requests])
    passes = Passes(fixed._generator)
    together = fixed._generator.generate([fixed.job(r) for r in requests])
    for a, b, c in zip(alone, batched, together, strict=True):
        same(a, b)
        same(a, c)
    # One batch, one shape: finished rows stay (idle) until the longest row is done.
    longest = max(a.completion_tokens for a in alone)
    assert passes.rows == [4] * longest
    assert set(passes.ids[1:]) == {(4, 1)} and set(passes.masks) == {(4, STATIC_LEN)}
    for a, c in zip(alone, one_by_one(fixed, requests), strict=True):  # static, one by one
        same(a, c)


def test_static_backend_answers_concurrent_calls_like_the_dynamic_one(make_local: Any) -> None:
    dynamic = make_local()
    fixed = static(make_local, batch_wait_ms=2000, max_batch_size=4)  # starts when all 4 are in
    requests = mixed_requests(dynamic)
    expected = [dynamic.complete(r) for r in requests]
    barrier = threading.Barrier(len(requests))

    def call(req: ChatRequest) -> Any:
        barrier.wait()
        return fixed.complete(req)

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(call, requests))
    assert fixed.batcher.batch_sizes == [4]
    for a, e in zip(answers, expected, strict=True):
        assert (a.content, a.finish_reason, a.usage) == (e.content, e.finish_reason, e.usage)
    assert all(a.usage.counted_by == "provider" and a.usage.exact for a in answers)


def test_sampled_rows_follow_their_seed_in_the_static_batch(make_local: Any) -> None:
    dynamic, fixed = make_local(), static(make_local)
    requests = [request(PROMPTS[0], max_tokens=10, ignore_eos=True, temperature=1.5, seed=7),
                request(PROMPTS[2], max_tokens=6, ignore_eos=True)]
    expected = one_by_one(dynamic, requests)
    for got, want in zip(fixed._generator.generate([fixed.job(r) for r in requests]), expected, strict=True):
        same(got, want)


# -- abandoned rows ------------------------------------------------------------------------------------


def test_a_row_abandoned_mid_decode_goes_idle_and_the_others_are_unchanged(make_local: Any) -> None:
    dynamic, fixed = make_local(), static(make_local)
    requests = [request(p, max_tokens=12, ignore_eos=True) for p in PROMPTS]
    expected = [r.token_ids for r in one_by_one(dynamic, requests)]
    jobs = [fixed.job(r) for r in requests]
    jobs[3].abandoned.set()  # its caller left while it waited in the queue: never prefilled
    passes = Passes(fixed._generator, before={3: jobs[1].abandoned.set})  # leaves during the 4th pass
    results = fixed._generator.generate(jobs)
    # Three rows in a bucket of 4, all 12 passes at the same shape: the abandoned row's slot
    # stays in the batch (idle) instead of the cache being reshaped.
    assert passes.rows == [4] * 12 and set(passes.ids[1:]) == {(4, 1)}
    assert results[1].finish_reason == "abandoned" and results[1].token_ids == expected[1][:3]
    assert results[3].finish_reason == "abandoned" and results[3].completion_tokens == 0
    for k in (0, 2):
        assert results[k].token_ids == expected[k], "a survivor's answer changed"
        assert results[k].finish_reason == "length"


def test_the_static_loop_stops_when_every_row_has_left(make_local: Any) -> None:
    fixed = static(make_local)
    jobs = [fixed.job(request(p, max_tokens=16, ignore_eos=True)) for p in PROMPTS[:2]]
    passes = Passes(fixed._generator, before={3: lambda: [job.abandoned.set() for job in jobs]})
    results = fixed._generator.generate(jobs)
    assert passes.rows == [2] * 4, "the static batch kept decoding for nobody"
    assert [r.finish_reason for r in results] == ["abandoned"] * 2
    assert [r.completion_tokens for r in results] == [3, 3]


def test_a_timed_out_call_leaves_the_static_batch_and_the_other_is_unchanged(make_local: Any) -> None:
    fixed = static(make_local, max_batch_size=2, batch_wait_ms=5000)
    leaves = request(PROMPTS[1], max_tokens=16, ignore_eos=True, timeout=1.0)
    stays = request(PROMPTS[0], max_tokens=16, ignore_eos=True)
    expected = one_by_one(make_local(), [stays])[0]
    held, resume = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        resume.wait(30)

    passes = Passes(fixed._generator, before={3: hold})
    with ThreadPoolExecutor(2) as pool:
        left, stayed = pool.submit(fixed.complete, leaves), pool.submit(fixed.complete, stays)
        with pytest.raises(TimeoutError, match="within 1 s"):
            left.result(timeout=30)
        resume.set()
        answer = stayed.result(timeout=30)
    assert passes.rows == [2] * 16
    assert answer.usage.completion_tokens == 16 and answer.content == expected.text


# -- the preallocated caches ---------------------------------------------------------------------------


def test_caches_are_made_once_per_bucket_and_reused_without_stale_state(make_local: Any) -> None:
    fixed = static(make_local)
    generator = fixed._generator
    assert generator.buckets == [1, 2, 4, 8]
    first = [request(p, max_tokens=8, ignore_eos=True) for p in PROMPTS[1:]]  # 3 rows: bucket 4
    second = [request(p, max_tokens=8, ignore_eos=True) for p in (PROMPTS[2], PROMPTS[0], PROMPTS[3])]
    expected = one_by_one(make_local(), second)
    generator.generate([fixed.job(r) for r in first])
    cache = generator._static_caches[4]
    keys = cache.layers[0].keys
    results = generator.generate([fixed.job(r) for r in second])  # same bucket, different prompts
    for got, want in zip(results, expected, strict=True):
        same(got, want)
    assert generator._static_caches[4] is cache and cache.layers[0].keys is keys, "the cache was remade"
    assert tuple(keys.shape) == (4, 2, STATIC_LEN, 16)
    generator.generate([fixed.job(second[0])])
    assert sorted(generator._static_caches) == [1, 4]
    fixed.close()
    assert generator._static_caches == {}


def test_static_max_len_acts_as_the_context_and_a_batch_that_does_not_fit_is_split(make_local: Any) -> None:
    fixed = static(make_local, static_max_len=56)
    long_prompt, short_prompt = PROMPTS[1], PROMPTS[2]
    widths = [len(fixed.job(request(p)).prompt_ids) for p in (long_prompt, short_prompt)]
    assert widths[0] + 16 > 56 >= widths[1] + 16 and widths[0] + 4 <= 56
    requests = [request(long_prompt, max_tokens=4, ignore_eos=True),
                request(short_prompt, max_tokens=16, ignore_eos=True)]
    expected = one_by_one(make_local(), requests)
    passes = Passes(fixed._generator)
    results = fixed._generator.generate([fixed.job(r) for r in requests])
    for got, want in zip(results, expected, strict=True):
        same(got, want)
    # Widest prompt + largest cap > 56: two batches of one, each prefilled on its own.
    assert passes.ids == [(1, widths[0])] + [(1, 1)] * 3 + [(1, widths[1])] + [(1, 1)] * 15
    capped = fixed.complete(request(long_prompt, max_tokens=100, ignore_eos=True))
    assert capped.usage.completion_tokens == 56 - widths[0] and capped.finish_reason == "length"
    with pytest.raises(InvalidRequestError, match="static cache of 56"):
        fixed.complete(request("word " * 80))


# -- compile ----------------------------------------------------------------------------------------------


def test_compile_is_refused_on_cpu_and_without_the_static_cache(make_local: Any) -> None:
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        static(make_local, compile=True)
    with pytest.raises(ConfigError, match="needs cache='static'"):
        make_local(compile=True)
    with pytest.raises(ConfigError, match="needs a CUDA device"):  # before the model is loaded
        LocalBackend.load(ensure_converted(), options=LocalOptions(cache="static", compile=True, device="cpu"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")  # torch.compile's own imports
def test_the_compiled_decode_step_traces_as_one_graph_and_gives_the_same_tokens(
    make_local: Any, tiny_model: Any, tokenizer: Any
) -> None:
    # The GPU path compiles with inductor and CUDA graphs; here dynamo's own "eager" backend
    # with fullgraph=True proves the decode step traces without a graph break (no C compiler).
    dynamic = make_local()
    requests = mixed_requests(dynamic)
    expected = one_by_one(dynamic, requests)
    made, calls = [], []

    def compiler(step: Any) -> Any:
        inner = torch.compile(step, backend="eager", fullgraph=True, dynamic=False)
        made.append(inner)

        def counted(*args: Any) -> Any:
            calls.append(tuple(args[0].shape))
            return inner(*args)

        return counted

    generator = BatchGenerator(tiny_model, tokenizer, torch.device("cpu"), cache="static", max_len=STATIC_LEN,
                               max_batch=8, compiler=compiler)
    jobs_backend = static(make_local)
    for _ in range(2):  # the second batch reuses the compiled step and the cache
        results = generator.generate([jobs_backend.job(r) for r in requests])
        for got, want in zip(results, expected, strict=True):
            same(got, want)
    longest = max(e.completion_tokens for e in expected)
    assert len(made) == 1 and calls == [(4, 1)] * (longest - 1) * 2, "the decode steps were not the compiled ones"


def test_a_prefill_of_one_token_prompts_is_never_the_compiled_step(tiny_model: Any, tokenizer: Any) -> None:
    # A prefill of one-token prompts has the decode step's shape; it must still run eagerly,
    # since the static cache allocates its tensors (outside any CUDA graph) at the prefill.
    from atlas_middleware.backends.local.generation import GenerationJob

    compiled_calls: list[tuple[int, ...]] = []

    def compiler(step: Any) -> Any:
        def counted(*args: Any) -> Any:
            compiled_calls.append(tuple(args[0].shape))
            return step(*args)

        return counted

    generator = BatchGenerator(tiny_model, tokenizer, torch.device("cpu"), cache="static", max_len=16,
                               max_batch=2, compiler=compiler)
    forwards: list[tuple[int, ...]] = []
    inner = generator._forward

    def forward(ids: Any, *args: Any) -> Any:
        forwards.append(tuple(ids.shape))
        return inner(ids, *args)

    generator._forward = forward  # type: ignore[method-assign]
    jobs = [GenerationJob(prompt_ids=[tokenizer.bos_token_id or 1], max_new_tokens=3, ignore_eos=True)
            for _ in range(2)]
    results = generator.generate(jobs)
    assert [len(r.token_ids) for r in results] == [3, 3]
    assert forwards == [(2, 1)] * 3  # the prefill and two decode steps, all one wide
    assert compiled_calls == [(2, 1)] * 2, "the prefill went through the compiled step"
