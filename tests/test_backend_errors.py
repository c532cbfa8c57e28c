"""Errors in one place (issue 26, part 7): each student's own time-out error at the caller's
deadline, and one classification of providers' errors."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import litellm
import pytest

from atlas_middleware import Atlas, ConfigError
from atlas_middleware.backends.http.transport import LeanHTTPBackend
from atlas_middleware.errors import is_timeout, is_transient
from atlas_middleware.messages import ChatRequest, ChatResponse
from atlas_middleware.testing import Reply, ScriptedBackend

HUNG = 10.0
QUESTION = [{"role": "user", "content": "What is 20 + 22?"}]
TEACHER = {"teacher": "<thinking>carry</thinking><level>2</level><teaching>Carry the one.</teaching>"}


def _hung_call(student: Any, mode: str) -> BaseException:
    """The error a caller gets from a strict call whose student never answers (deadline 0.5 s)."""
    with Atlas(student_backend=student, teacher_backend=ScriptedBackend(TEACHER), teacher="scripted-teacher",
               ledger="none", policy="strict") as atlas:
        with pytest.raises(Exception) as caught:
            if mode == "sync":
                atlas.completion(model="student-model", messages=QUESTION, timeout=0.5)
            else:
                asyncio.run(atlas.acompletion(model="student-model", messages=QUESTION, timeout=0.5))
    return caught.value


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_langchain_student_times_out_as_langchain_does(mode: str) -> None:
    """Not LiteLLM's ``Timeout``: a LangChain student raises the builtin ``TimeoutError``, as
    LangChain's runnables and LangGraph's step timeout do."""
    pytest.importorskip("langchain_core")
    from atlas_middleware.langchain.backend import LangChainBackend
    from atlas_middleware.testing.langchain import ScriptedChatModel

    hung = Reply("The answer is 42", delay=HUNG)
    student = LangChainBackend(ScriptedChatModel(backend=ScriptedBackend({"*": hung, "probe": "Add them."})))
    error = _hung_call(student, mode)
    assert type(error) is TimeoutError and "within" in str(error)


class PlainBackend:
    """A user's own backend that says nothing about its time-outs."""

    def complete(self, request: ChatRequest) -> ChatResponse:
        import time

        time.sleep(HUNG if request.context.role in ("guided", "baseline") else 0)
        return ChatResponse(content="Add them.")

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        await asyncio.sleep(HUNG if request.context.role in ("guided", "baseline") else 0)
        return ChatResponse(content="Add them.")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_backend_without_its_own_timeout_error_gives_a_builtin_one(mode: str) -> None:
    assert type(_hung_call(PlainBackend(), mode)) is TimeoutError


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_litellm_student_times_out_with_litellms_timeout(mode: str) -> None:
    hung = Reply("The answer is 42", delay=HUNG)
    error = _hung_call(ScriptedBackend({"*": hung, "probe": "Add them."}), mode)
    assert isinstance(error, litellm.Timeout) and error.model == "student-model"


def test_the_lean_path_refuses_what_it_cannot_send_as_a_configuration_error() -> None:
    lean = LeanHTTPBackend()
    try:
        with pytest.raises(ConfigError, match="route it through LiteLLM"):
            lean.complete(ChatRequest(model="anthropic/claude", messages=QUESTION))
    finally:
        lean.close()


def _named(name: str, base: type[Exception] = Exception) -> Exception:
    return type(name, (base,), {})("x")


@pytest.mark.parametrize(("error", "timeout", "transient"), [
    (litellm.Timeout(message="x", model="m", llm_provider="openai"), True, True),
    (litellm.RateLimitError(message="x", model="m", llm_provider="openai"), False, True),
    (litellm.BadRequestError(message="x", model="m", llm_provider="openai"), False, False),
    (httpx.ConnectTimeout("x"), True, True),  # a subclass of TimeoutException: the MRO counts
    (httpx.ConnectError("x"), False, True),
    (_named("APITimeoutError"), True, True),
    (_named("ServiceUnavailableError"), False, True),
    (TimeoutError("x"), True, True),
    (ConnectionResetError("x"), False, True),
    (ValueError("x"), False, False),
])
def test_one_classification_of_providers_errors(error: Exception, timeout: bool, transient: bool) -> None:
    assert (is_timeout(error), is_transient(error)) == (timeout, transient)
