"""LangChain's own standard test suites, run against ``AtlasChatModel``.

The student and the teacher are scripted LangChain chat models (``ScriptedChatModel``),
so the integration suite runs offline: every call below goes through the whole teaching
loop (probe, teacher, guided, baseline, strict comparison) of the core.

Tests the suites skip here, and why (none is declared xfail):

* ``test_init_from_env``: the wrapper reads no environment variable of its own (the core's
  ``ATLAS_*`` variables are covered by the config tests).
* ``test_serdes``: ``AtlasChatModel`` is not LangChain-serializable (it holds a student model
  object and a live ``Atlas``), as LangChain's default ``is_lc_serializable() == False`` says.
* ``test_json_mode``, image/PDF/audio inputs, image/PDF tool messages, Anthropic-format
  inputs: capabilities of the *student*; the scripted student declares none. What the
  wrapper owes them is pass-through: ``test_langchain_chat_model.py`` sends OpenAI,
  LangChain-standard and Anthropic-format images, OpenAI and standard PDF files, OpenAI
  audio and an image in a tool message, and checks that the student gets each exactly as
  LangChain converts it and the teacher only a placeholder. PDF tool messages are not
  covered.
* ``test_stream_time``: needs VCR cassettes of a real provider.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

from atlas_middleware.langchain import AtlasChatModel  # noqa: E402
from atlas_middleware.testing import ScriptedBackend, teacher_reply  # noqa: E402
from atlas_middleware.testing.langchain import ScriptedChatModel, rule_student  # noqa: E402


def _params() -> dict[str, Any]:
    return {
        "student": ScriptedChatModel(backend=ScriptedBackend({"*": rule_student})),
        "teacher": ScriptedChatModel(backend=ScriptedBackend({"teacher": teacher_reply("Use the tool when asked.")}),
                                     model_name="scripted-teacher"),
        "ledger": "none",
    }


class _AtlasChatModelUnderTest:
    """What both standard suites build: an AtlasChatModel over scripted backends."""

    @property
    def chat_model_class(self) -> type[AtlasChatModel]:
        return AtlasChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return _params()


class TestAtlasChatModelUnit(_AtlasChatModelUnderTest, ChatModelUnitTests):
    pass


class TestAtlasChatModelIntegration(_AtlasChatModelUnderTest, ChatModelIntegrationTests):
    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return {}

    @property
    def model_override_value(self) -> str:
        # ``invoke(..., model=...)`` reaches the student's calls and names the report's model.
        return "scripted-override"


class TestAtlasChatModelIntegrationLiveStream(TestAtlasChatModelIntegration):
    """The same suite under policy ``off``: ``stream`` passes the student's tokens on live."""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {**_params(), "policy": "off"}
