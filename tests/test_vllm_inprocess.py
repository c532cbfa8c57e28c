"""``vllm/...`` fails at construction, with a clear reason, where it cannot run."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from atlas_middleware.backends import backend_for
from atlas_middleware.backends.vllm_inprocess import VLLMBackend
from atlas_middleware.errors import ConfigError, MissingExtraError


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
