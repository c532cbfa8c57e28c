"""``vllm/...`` fails at construction, with a clear reason, where it cannot run."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from atlas_middleware.backends import backend_for
from atlas_middleware.backends.vllm_inprocess import VLLMBackend, VLLMOptions
from atlas_middleware.errors import ConfigError, InvalidRequestError, MissingExtraError


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


# -- the backend's own work, against a fake ``vllm`` that records and answers like vLLM ---------

class _SamplingParams:
    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs


class _Completion:  # vllm.CompletionOutput: text, token_ids, finish_reason ("stop" | "length")
    def __init__(self, text: str, token_ids: list[int], finish_reason: str) -> None:
        self.text, self.token_ids, self.finish_reason = text, token_ids, finish_reason


class _RequestOutput:  # vllm.RequestOutput: prompt_token_ids and one output per choice
    def __init__(self, prompt_token_ids: list[int], outputs: list[_Completion]) -> None:
        self.prompt_token_ids, self.outputs = prompt_token_ids, outputs


class _Tokenizer:
    def __init__(self) -> None:
        self.templated: list[tuple[list[dict[str, object]], object]] = []

    def apply_chat_template(self, chat, tools=None, add_generation_prompt=False, tokenize=True):  # type: ignore[no-untyped-def]
        assert add_generation_prompt and not tokenize
        self.templated.append((chat, tools))
        return "".join(f"<{m['role']}>{m['content']}" for m in chat) + "<assistant>"

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        assert not add_special_tokens  # the template already holds them
        return {"input_ids": [ord(c) % 97 for c in text]}


class _LLM:
    instances: list[_LLM] = []

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs
        self.tokenizer = _Tokenizer()
        self.generate_calls: list[tuple[list[dict[str, list[int]]], list[_SamplingParams]]] = []
        _LLM.instances.append(self)

    def get_tokenizer(self) -> _Tokenizer:
        return self.tokenizer

    def generate(self, prompts, sampling_params, use_tqdm=True):  # type: ignore[no-untyped-def]
        assert use_tqdm is False and len(prompts) == len(sampling_params)
        self.generate_calls.append((prompts, sampling_params))
        out = []
        for prompt, sp in zip(prompts, sampling_params, strict=True):
            cap = sp.kwargs["max_tokens"]
            ids = list(range(min(cap, 5)))  # five tokens, or the cap when it is smaller
            out.append(_RequestOutput(prompt["prompt_token_ids"],
                                      [_Completion(f"answer to {len(prompt['prompt_token_ids'])} ids", ids,
                                                   "length" if cap < 5 else "stop")]))
        return out


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    torch = pytest.importorskip("torch")
    module = types.ModuleType("vllm")
    module.LLM = _LLM  # type: ignore[attr-defined]
    module.SamplingParams = _SamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _LLM.instances.clear()
    return module


def _req(content: str = "What is 2+2?", **params: object) -> object:
    from atlas_middleware.messages import ChatRequest

    return ChatRequest(model="vllm/m", messages=[{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": content}], params=params)


def test_engine_gets_the_options_and_instances_are_shared(fake_vllm: types.ModuleType) -> None:
    a = VLLMBackend.for_model("vllm/org/model-x", tensor_parallel_size=2, max_model_len=4096)
    b = VLLMBackend.for_model("vllm/org/model-x", tensor_parallel_size=2, max_model_len=4096)
    c = VLLMBackend.for_model("vllm/org/model-x")
    try:
        assert a is b and a is not c and len(_LLM.instances) == 2
        assert _LLM.instances[0].kwargs == {"model": "org/model-x", "tensor_parallel_size": 2, "max_model_len": 4096,
                                            "gpu_memory_utilization": 0.9, "enable_prefix_caching": True,
                                            "dtype": "auto"}
    finally:
        a.close()
        c.close()


def test_job_templates_the_chat_and_maps_the_sampling_parameters(fake_vllm: types.ModuleType) -> None:
    backend = VLLMBackend("m")
    try:
        tools = [{"type": "function", "function": {"name": "add"}}]
        ids, sp = backend.job(_req(max_completion_tokens=7, temperature=0.3, top_p=0.9, stop="\n\n", seed=5,
                                   tools=tools))
        (chat, seen_tools), = backend.tokenizer.templated
        assert [m["role"] for m in chat] == ["system", "user"] and seen_tools == tools
        assert ids == [ord(c) % 97 for c in "<system>Be brief.<user>What is 2+2?<assistant>"]
        assert sp.kwargs == {"max_tokens": 7, "temperature": 0.3, "top_p": 0.9, "stop": ["\n\n"], "seed": 5,
                             "ignore_eos": False}
        # unset: the engine's defaults (greedy, max_new_tokens), max_tokens when that is what is given
        _, sp = backend.job(_req())
        assert (sp.kwargs["max_tokens"], sp.kwargs["temperature"], sp.kwargs["top_p"], sp.kwargs["stop"]) == (
            512, 0.0, 1.0, [])
        assert backend.job(_req(max_tokens=9))[1].kwargs["max_tokens"] == 9
        with pytest.raises(InvalidRequestError, match="n=1"):
            backend.job(_req(n=2))
    finally:
        backend.close()


def test_concurrent_calls_are_one_generate_and_each_gets_its_own_answer(fake_vllm: types.ModuleType) -> None:
    from concurrent.futures import ThreadPoolExecutor

    backend = VLLMBackend("m", VLLMOptions(batch_wait_ms=200))
    try:
        questions = [f"question {'x' * i}" for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda q: backend.complete(_req(q, max_tokens=3 if q.endswith("xx") else 8)),
                                 questions))
        llm = _LLM.instances[-1]
        assert len(llm.generate_calls) == 1 and len(llm.generate_calls[0][0]) == 4  # one batch
        for q, out in zip(questions, outs, strict=True):
            prompt_len = len(backend.job(_req(q))[0])
            assert out.content == f"answer to {prompt_len} ids"  # its own prompt's answer
            assert (out.usage.prompt_tokens, out.usage.counted_by, out.usage.cost_usd) == (prompt_len, "provider", 0.0)
        cut = [o for q, o in zip(questions, outs, strict=True) if q.endswith("xx")]
        assert all(o.finish_reason == "length" and o.usage.completion_tokens == 3 for o in cut)
        assert all(o.finish_reason == "stop" and o.usage.completion_tokens == 5 for o in outs if o not in cut)
    finally:
        backend.close()


def test_acomplete_goes_through_the_same_batcher(fake_vllm: types.ModuleType) -> None:
    import asyncio

    backend = VLLMBackend("m")
    try:
        async def go() -> list[object]:
            return list(await asyncio.gather(*(backend.acomplete(_req(f"q{i}")) for i in range(3))))

        outs = asyncio.run(go())
        assert [o.finish_reason for o in outs] == ["stop"] * 3  # type: ignore[attr-defined]
        assert sum(len(p) for p, _ in _LLM.instances[-1].generate_calls) == 3
    finally:
        backend.close()
