"""``AtlasAgentMiddleware``: the teaching loop around every model call of a ``create_agent`` agent.

An agent makes many model calls for one task. The teacher diagnoses the task once (on the
first call), and the agent's later calls reuse that guidance through the core's session
cache until the policy's comparison shows it stopped helping (a judge preferred the
baseline, or the guided step made an invalid tool call); the next call is then taught
afresh. Sessions are keyed by the LangGraph thread (and the user message that started the
current task), else by the first user message.

The student calls (probe, guided, baseline) all go through the agent's own ``handler``, so
they are ordinary model runs of the agent: its callbacks and tracers see each of them
once, with the usage the provider reported. The teacher's calls never reach LangChain
callbacks; their tokens are in the ``CallReport`` (``response_metadata["atlas"]`` of the
delivered message) and in the ledger, one row per agent model call.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, cast

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain.agents.structured_output import AutoStrategy, OutputToolBinding, ToolStrategy
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables.config import var_child_runnable_config
from langgraph.constants import TAG_NOSTREAM

from ..client import Atlas
from ..config import AtlasConfig
from ..teaching import protocols
from ._convert import model_name, openai_tools, to_openai_messages
from .backend import CallBinding, Delivery, LangChainBackend, bound_params
from .chat_model import RUN_TASK_KEY

SessionKey = Callable[[ModelRequest], str | None]


def _digest(message: BaseMessage | None) -> str:
    text = message.text if message is not None else ""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _graph_config() -> dict[str, Any]:
    """The running graph's config (``{}`` outside a graph run)."""
    try:
        from langgraph.config import get_config

        return dict(get_config())
    except (ImportError, RuntimeError):  # outside a graph run
        return {}


def run_task() -> Any:
    """The task named in the run's metadata (``config={"metadata": {"atlas_task": ...}}``), or None."""
    return (_graph_config().get("metadata") or {}).get(RUN_TASK_KEY)


def default_session_key(request: ModelRequest) -> str:
    """The thread and the user message that opened the current task; else the first user message."""
    try:
        from langgraph.config import get_config

        config = get_config()
    except (ImportError, RuntimeError):  # outside a graph run
        config = {}
    humans = [m for m in request.messages if isinstance(m, HumanMessage)]
    thread = (config.get("configurable") or {}).get("thread_id")
    if thread is not None:
        return f"thread:{thread}:{_digest(humans[-1] if humans else None)}"
    return f"task:{_digest(humans[0] if humans else None)}"


def _structured_tools(response_format: Any) -> list[Any]:
    """The tools a ``ToolStrategy`` adds, so their calls count as calls of offered tools."""
    if isinstance(response_format, AutoStrategy):
        response_format = ToolStrategy(schema=response_format.schema)
    if isinstance(response_format, ToolStrategy):
        return [OutputToolBinding.from_schema_spec(spec).tool for spec in response_format.schema_specs]
    return []


def _plain(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Role and text of each message: what the protocols' detectors read."""
    roles = {HumanMessage: "user", SystemMessage: "system", AIMessage: "assistant"}
    return [{"role": next((r for t, r in roles.items() if isinstance(m, t)), "tool"), "content": m.text}
            for m in messages]


def _is_probe(messages: Sequence[BaseMessage]) -> bool:
    return protocols.is_probe(_plain(messages))


def _is_guided(messages: Sequence[BaseMessage]) -> bool:
    return protocols.guidance_of(_plain(messages)) is not None


@contextmanager
def _unstreamed() -> Iterator[None]:
    """Tag the model run made inside with ``nostream``.

    LangGraph's ``stream_mode="messages"`` then leaves out its tokens; the message the agent
    keeps still reaches that stream whole, when the model node ends.
    """
    config = var_child_runnable_config.get()
    if config is None:
        yield
        return
    token = var_child_runnable_config.set({**config, "tags": [*(config.get("tags") or []), TAG_NOSTREAM]})
    try:
        yield
    finally:
        var_child_runnable_config.reset(token)


class AtlasAgentMiddleware(AgentMiddleware):
    """Teach an agent's model: ``create_agent(model, tools, middleware=[AtlasAgentMiddleware(...)])``.

    ``teacher`` is a LiteLLM model string or a LangChain chat model; ``policy``, ``judge``,
    ``ledger`` and further ``AtlasConfig`` fields (``**settings``) configure the core.
    ``session_key(request)`` overrides how model calls are grouped into one task.
    """

    def __init__(
        self,
        teacher: str | BaseChatModel | None = None,
        *,
        teacher_api_base: str | None = None,
        teacher_api_key: str | None = None,
        policy: str | None = None,
        judge: Any = None,
        ledger: Any = None,
        config: AtlasConfig | None = None,
        session_key: SessionKey | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        # The student runs through the agent's handler: no isolation, its runs are the agent's.
        self._backend = LangChainBackend(isolate=False)
        teacher_backend = LangChainBackend(teacher) if isinstance(teacher, BaseChatModel) else None
        self.atlas = Atlas(
            model_name(teacher) if isinstance(teacher, BaseChatModel) else teacher,
            teacher_api_base=teacher_api_base, teacher_api_key=teacher_api_key, policy=policy,
            judge=judge, ledger=ledger, config=config, student_backend=self._backend,
            teacher_backend=teacher_backend, **settings,
        )
        self.session_key: SessionKey = session_key or default_session_key

    @property
    def name(self) -> str:
        return "AtlasAgentMiddleware"

    # -- the call -------------------------------------------------------------------------

    def _prepare(self, request: ModelRequest, run: Callable[[ModelRequest, Any], Any],
                 arun: Callable[[ModelRequest], Awaitable[Any]]) -> tuple[str, list[dict[str, Any]], dict[str, Any], CallBinding]:
        originals: list[BaseMessage] = list(request.messages)
        if request.system_message is not None:
            originals.insert(0, request.system_message)
        dicts = to_openai_messages(originals)

        def step(restored: list[BaseMessage], params: dict[str, Any]) -> ModelRequest:
            system = None
            if restored and isinstance(restored[0], SystemMessage):
                system, restored = restored[0], restored[1:]
            messages = cast("list[AnyMessage]", restored)
            if _is_probe(messages):
                # The probe asks for a short plan in plain text: no tools, no structured output.
                settings = {**request.model_settings}
                if "max_tokens" in params:
                    settings["max_tokens"] = params["max_tokens"]
                return request.override(messages=messages, system_message=system, tools=[], tool_choice=None,
                                        response_format=None, model_settings=settings)
            return request.override(messages=messages, system_message=system)

        # Only a call whose tokens are the answer may stream: the guided call, when the policy
        # delivers it without comparing first. The probe, the baseline and any compared call
        # are run unstreamed (see ``_unstreamed``).
        live_guided = self.atlas.settings.policy in ("off", "audit")

        def quiet(messages: list[BaseMessage]) -> Any:
            streams = live_guided and not _is_probe(messages) and _is_guided(messages)
            return nullcontext() if streams else _unstreamed()

        def run_step(messages: list[BaseMessage], params: dict[str, Any]) -> Any:
            req = step(messages, params)
            return run(req, quiet(messages))

        async def arun_step(messages: list[BaseMessage], params: dict[str, Any]) -> Any:
            # Runs in its own task (the core's async driver), so the tag stays in this call.
            with quiet(messages):
                return await arun(step(messages, params))

        binding = CallBinding(originals=originals, original_dicts=dicts, run=run_step, arun=arun_step)
        params: dict[str, Any] = {}
        tools = openai_tools([*request.tools, *_structured_tools(request.response_format)])
        if tools:
            params["tools"] = tools
        if request.tool_choice is not None:
            params["tool_choice"] = request.tool_choice
        params["atlas"] = {"session_id": self.session_key(request)}
        task = run_task()
        if task is not None:
            params["atlas"]["task"] = task
        return model_name(request.model), dicts, params, binding

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        # The core runs student calls on worker threads; each runs in a copy of this
        # context, so the graph's config (callbacks, streaming, tracing) reaches it.
        context = contextvars.copy_context()

        def run(req: ModelRequest, tags: Any) -> Any:
            def call() -> Any:
                with tags:
                    return handler(req)

            return context.copy().run(call)

        async def never(req: ModelRequest) -> Any:  # pragma: no cover - sync path only
            raise RuntimeError("async call on a sync agent step")

        model, dicts, params, binding = self._prepare(request, run, never)
        delivery: Delivery = self.atlas.completion(model, dicts, **bound_params(params, binding))
        return _with_report(delivery)

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> Any:
        def never(req: ModelRequest, tags: Any) -> Any:  # pragma: no cover - async path only
            raise RuntimeError("sync call on an async agent step")

        # Tasks inherit this context, so no copy is needed here.
        model, dicts, params, binding = self._prepare(request, never, handler)
        delivery: Delivery = await self.atlas.acompletion(model, dicts, **bound_params(params, binding))
        return _with_report(delivery)


def _with_report(delivery: Delivery) -> Any:
    """The handler's result, its ``AIMessage`` carrying the call's report."""
    report = delivery.atlas.model_dump(mode="json")
    result = delivery.result
    if isinstance(result, AIMessage):
        return _tagged(result, report)
    if isinstance(result, ModelResponse):
        messages = [_tagged(m, report) if m is delivery.message else m for m in result.result]
        return ModelResponse(result=messages, structured_response=result.structured_response)
    return result


def _tagged(message: AIMessage, report: dict[str, Any]) -> AIMessage:
    return message.model_copy(update={"response_metadata": {**message.response_metadata, "atlas": report}})
