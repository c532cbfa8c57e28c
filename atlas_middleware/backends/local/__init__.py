"""Models in this process: transformers (``local/...``), vLLM (``vllm/...``), the embedded SmolLM2."""

from .backend import LocalBackend, LocalOptions, clear_shared_backends, require_local_extra

__all__ = ["clear_shared_backends", "LocalBackend", "LocalOptions", "require_local_extra"]
