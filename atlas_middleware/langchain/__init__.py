"""LangChain integration (``pip install 'atlas-middleware[langchain]'``).

* ``AtlasChatModel``: wraps any LangChain chat model (the student) behind the teaching
  loop; a real ``BaseChatModel`` (invoke, ainvoke, stream, bind_tools, structured output).
* ``AtlasAgentMiddleware``: an ``AgentMiddleware`` for ``create_agent`` that diagnoses once
  per agent task and reuses the guidance on the agent's later model calls.
* ``LangChainBackend``: the core's ``ChatBackend`` protocol over a LangChain chat model.
* ``atlas_report(message)``: the ``CallReport`` a delivered ``AIMessage`` carries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import MissingExtraError

try:
    import langchain_core  # noqa: F401
except ImportError as exc:
    raise MissingExtraError("the LangChain integration", "langchain", "langchain-core") from exc

from ..report import CallReport
from .backend import LangChainBackend
from .chat_model import AtlasChatModel

if TYPE_CHECKING:
    from .middleware import AtlasAgentMiddleware

__all__ = ["AtlasAgentMiddleware", "AtlasChatModel", "LangChainBackend", "atlas_report"]


def atlas_report(message: Any) -> CallReport | None:
    """The ``CallReport`` in ``message.response_metadata["atlas"]``, or ``None``."""
    data = (getattr(message, "response_metadata", None) or {}).get("atlas")
    return CallReport.model_validate(data) if data else None


def __getattr__(name: str) -> Any:
    # The middleware needs the ``langchain`` package itself (not only langchain-core).
    if name == "AtlasAgentMiddleware":
        try:
            from .middleware import AtlasAgentMiddleware
        except ImportError as exc:
            raise MissingExtraError("AtlasAgentMiddleware", "langchain", "langchain") from exc
        return AtlasAgentMiddleware
    raise AttributeError(name)
