"""``AtlasAgentMiddleware``: the teaching loop around every model call of a ``create_agent`` agent.

An agent makes many model calls for one task. The teacher diagnoses the task once (on the
first call), and the agent's later calls reuse that guidance through the core's session
cache until the policy's comparison shows it stopped helping (a judge preferred the
baseline, or the guided step made an invalid tool call); the next call is then taught
afresh. Sessions are keyed by the LangGraph thread (and the user message that started the
current task), else by the agent run (an id the middleware gives each ``invoke``, kept in
the agent's state), so two runs that open with the same question never share a diagnosis.

The student calls (probe, guided, baseline) all go through the agent's own ``handler``, so
they are ordinary model runs of the agent: its callbacks and tracers see each of them
once, with the usage the provider reported. The teacher's and judge's calls show up as
child runs of the model step without usage; their tokens are in the ``CallReport``
(``response_metadata["atlas"]`` of the delivered message) and in the ledger, one row per
agent model call. Which run streams the answer, and which are tagged internal: ``_runs.py``.
"""

from __future__ import annotations

import contextvars
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NotRequired, cast

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain.agents.middleware.types import PrivateStateAttr
from langchain.agents.structured_output import AutoStrategy, OutputToolBinding, ToolStrategy
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables.config import var_child_runnable_config

from ..client import Atlas
from ..config import AtlasConfig
from ..messages import CallContext
from ._convert import model_name, openai_tools, to_openai_messages
from ._runs import TracedTeacher, areplay, child_run, replay, with_id
from .backend import CallBinding, Delivery, LangChainBackend, ai_message_of, bound_params
from .chat_model import RUN_TASK_KEY, RUN_TENANT_KEY

SessionKey = Callable[[ModelRequest], str | None]
RUN_KEY = "atlas_run"
"""The agent-state field holding this agent run's id (private: not in the agent's output)."""


class AtlasAgentState(AgentState[Any]):
    atlas_run: NotRequired[Annotated[str, PrivateStateAttr]]


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
    """The thread and the user message that opened the current task; else the agent run.

    Without a thread, the first user message alone would make two runs that open with the
    same question (two users of one agent, say) share one diagnosis; the run's id does not.
    Outside an agent run (no id in the state) the first user message is the key."""
    try:
        from langgraph.config import get_config

        config = get_config()
    except (ImportError, RuntimeError):  # outside a graph run
        config = {}
    humans = [m for m in request.messages if isinstance(m, HumanMessage)]
    thread = (config.get("configurable") or {}).get("thread_id")
    if thread is not None:
        return f"thread:{thread}:{_digest(humans[-1] if humans else None)}"
    run = (request.state or {}).get(RUN_KEY)
    if run is not None:
        return f"run:{run}"
    return f"task:{_digest(humans[0] if humans else None)}"


def _structured_tools(response_format: Any) -> list[Any]:
    """The tools a ``ToolStrategy`` adds, so their calls count as calls of offered tools."""
    if isinstance(response_format, AutoStrategy):
        response_format = ToolStrategy(schema=response_format.schema)
    if isinstance(response_format, ToolStrategy):
        return [OutputToolBinding.from_schema_spec(spec).tool for spec in response_format.schema_specs]
    return []


class _Step:
    """One agent model step: the student answers that streamed live."""

    def __init__(self) -> None:
        self.live: list[AIMessage] = []

    @staticmethod
    def streams(context: CallContext) -> bool:
        """Only a call whose tokens are the answer streams: the guided call where the policy
        delivers it without comparing first; under shadow, the student's own answer. The
        role and the policy (under ``adaptive``, the family's mode) ride with the request."""
        role, policy = context.role, context.policy
        return (role == "guided" and policy in ("off", "audit")) or (role == "baseline" and policy == "shadow")

    def ran(self, result: Any, context: CallContext) -> Any:
        if self.streams(context):
            self.live.append(ai_message_of(result))
        return result

    def replays(self, delivery: Delivery) -> bool:
        """The delivered answer did not stream live (compared first, or a fallback)."""
        return not any(m is delivery.message for m in self.live)


class AtlasAgentMiddleware(AgentMiddleware):
    """Teach an agent's model: ``create_agent(model, tools, middleware=[AtlasAgentMiddleware(...)])``.

    ``teacher`` is a LiteLLM model string or a LangChain chat model; ``judge`` and ``ledger``
    (settings or objects), ``config`` and ``AtlasConfig`` settings as keywords (``policy``,
    ``teacher_api_base``, ...: ``**settings``, checked by ``AtlasConfig``) configure the core.
    ``session_key(request)`` overrides how model calls are grouped into one task.
    ``tenant`` says whose sessions and family guidance the agent's calls use (``_tenants.py``);
    a run's ``config={"metadata": {"atlas_tenant": ...}}`` overrides it (an agent serving
    several users); neither: the default tenant.
    """

    def __init__(
        self,
        teacher: str | BaseChatModel | None = None,
        *,
        judge: Any = None,
        ledger: Any = None,
        config: AtlasConfig | None = None,
        session_key: SessionKey | None = None,
        tenant: str | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        # The student runs through the agent's handler: no isolation, its runs are the agent's.
        self._backend = LangChainBackend(isolate=False)
        teacher_backend = LangChainBackend(teacher) if isinstance(teacher, BaseChatModel) else None
        self.atlas = Atlas(
            model_name(teacher) if isinstance(teacher, BaseChatModel) else teacher,
            judge=judge, ledger=ledger, config=config, student_backend=self._backend,
            teacher_backend=teacher_backend, **settings,
        )
        self.session_key: SessionKey = session_key or default_session_key
        # The teacher's and judge's calls, as child runs of the agent's model step (``_runs.py``).
        self.atlas.backends["teacher"] = TracedTeacher(self.atlas.backends["teacher"],
                                                       name=self.atlas.settings.teacher_model or "teacher")
        self.tenant = tenant

    state_schema = AtlasAgentState

    @property
    def name(self) -> str:
        return "AtlasAgentMiddleware"

    def before_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        """Give this agent run its own id: the default session key of a run without a thread."""
        return {RUN_KEY: uuid.uuid4().hex}

    # -- the call -------------------------------------------------------------------------

    def _prepare(self, request: ModelRequest, run: Callable[[ModelRequest, Any], Any],
                 arun: Callable[[ModelRequest], Awaitable[Any]]
                 ) -> tuple[str, list[dict[str, Any]], dict[str, Any], CallBinding, _Step]:
        originals: list[BaseMessage] = list(request.messages)
        if request.system_message is not None:
            originals.insert(0, request.system_message)
        dicts = to_openai_messages(originals)

        def step(restored: list[BaseMessage], params: dict[str, Any], context: CallContext) -> ModelRequest:
            system = None
            if restored and isinstance(restored[0], SystemMessage):
                system, restored = restored[0], restored[1:]
            messages = cast("list[AnyMessage]", restored)
            if context.role == "probe":
                # The probe asks for a short plan in plain text: no tools, no structured output.
                settings = {**request.model_settings}
                if "max_tokens" in params:
                    settings["max_tokens"] = params["max_tokens"]
                return request.override(messages=messages, system_message=system, tools=[], tool_choice=None,
                                        response_format=None, model_settings=settings)
            return request.override(messages=messages, system_message=system)

        # Every call but the live answer runs tagged ``nostream`` (``_runs.py``); each call's
        # role and policy come with it (``ChatRequest.context``).
        state = _Step()

        def run_step(messages: list[BaseMessage], params: dict[str, Any], context: CallContext) -> Any:
            tags = child_run(context, streams=state.streams(context))
            return state.ran(run(step(messages, params, context), tags), context)

        async def arun_step(messages: list[BaseMessage], params: dict[str, Any], context: CallContext) -> Any:
            # Runs in its own task (the core's async driver), so the tag stays in this call.
            with child_run(context, streams=state.streams(context)):
                return state.ran(await arun(step(messages, params, context)), context)

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
        tenant = (_graph_config().get("metadata") or {}).get(RUN_TENANT_KEY, self.tenant)
        if tenant is not None:
            params["atlas"]["tenant"] = tenant
        return model_name(request.model), dicts, params, binding, state

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

        model, dicts, params, binding, state = self._prepare(request, run, never)
        delivery: Delivery = self.atlas.completion(model, dicts, **bound_params(params, binding))
        result, message = _with_report(delivery)
        if message is not None and state.replays(delivery):
            replay(var_child_runnable_config.get(), message, _run_name(request), _prompt(binding))
        return result

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> Any:
        def never(req: ModelRequest, tags: Any) -> Any:  # pragma: no cover - async path only
            raise RuntimeError("sync call on an async agent step")

        # Tasks inherit this context, so no copy is needed here.
        model, dicts, params, binding, state = self._prepare(request, never, handler)
        delivery: Delivery = await self.atlas.acompletion(model, dicts, **bound_params(params, binding))
        result, message = _with_report(delivery)
        if message is not None and state.replays(delivery):
            await areplay(var_child_runnable_config.get(), message, _run_name(request), _prompt(binding))
        return result


def _run_name(request: ModelRequest) -> str:
    """The delivered answer's run is named as the student's own runs are (``ChatOpenAI``)."""
    return request.model.get_name() if hasattr(request.model, "get_name") else model_name(request.model)


def _prompt(binding: CallBinding) -> list[BaseMessage]:
    return list(binding.originals)


def _with_report(delivery: Delivery) -> tuple[Any, AIMessage | None]:
    """The handler's result, its ``AIMessage`` carrying the call's report (and that message)."""
    report = delivery.atlas.model_dump(mode="json")
    result = delivery.result
    if isinstance(result, AIMessage):
        tagged = _tagged(result, report)
        return tagged, tagged
    if isinstance(result, ModelResponse):
        tagged = _tagged(delivery.message, report)
        messages = [tagged if m is delivery.message else m for m in result.result]
        return ModelResponse(result=messages, structured_response=result.structured_response), tagged
    return result, None


def _tagged(message: AIMessage, report: dict[str, Any]) -> AIMessage:
    # An id, so that the replayed chunks and the message the agent keeps are one message.
    return with_id(message).model_copy(update={"response_metadata": {**message.response_metadata, "atlas": report}})
