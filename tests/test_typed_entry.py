"""The typed entry point (issue 26, part 6): ``stream=True`` is a stream to the type checker,
and ``report_of`` reads the report of every shape ``Atlas.completion`` hands back."""

from __future__ import annotations

import asyncio
import gc
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atlas_middleware import Atlas, CallReport, report_of
from atlas_middleware.messages import ChatRequest, ChatResponse
from atlas_middleware.testing import ScriptedBackend

SNIPPET = '''
from typing import Any, assert_type

from atlas_middleware import Atlas, CallReport, report_of
from atlas_middleware.runtime.streaming import AtlasStream

MESSAGES = [{"role": "user", "content": "What is 20 + 22?"}]


def sync(atlas: Atlas) -> None:
    assert_type(atlas.completion(model="m", messages=MESSAGES, stream=True), AtlasStream)
    assert_type(atlas.completion(model="m", messages=MESSAGES), Any)
    assert_type(atlas.completion(model="m", messages=MESSAGES, stream=False, temperature=0), Any)
    assert_type(report_of(atlas.completion(model="m", messages=MESSAGES)), CallReport)


async def asynchronous(atlas: Atlas) -> None:
    assert_type(await atlas.acompletion(model="m", messages=MESSAGES, stream=True), AtlasStream)
    assert_type(report_of(await atlas.acompletion(model="m", messages=MESSAGES, stream=True)), CallReport)
'''


def test_stream_overloads_type_check(tmp_path: Path) -> None:
    """mypy (strict) reads ``stream=True`` as an ``AtlasStream`` and a report as a ``CallReport``:
    without the overloads both entry points are ``Any`` and the ``assert_type`` lines fail."""
    from mypy import api

    snippet = tmp_path / "snippet.py"
    snippet.write_text(textwrap.dedent(SNIPPET))
    # The project's own settings and cache (``pyproject.toml``): warm after a ``mypy`` run.
    out, err, status = api.run([str(snippet), "--no-error-summary"])
    assert status == 0, out + err


QUESTION = [{"role": "user", "content": "What is 20 + 22?"}]


def test_report_of_every_shape(make_atlas: Any, call: Any) -> None:
    atlas, _, _ = make_atlas(policy="strict")
    response = call(atlas)
    assert isinstance(report_of(response), CallReport) and report_of(response) is response.atlas
    stream = call(atlas, stream=True)
    assert isinstance(report_of(stream), CallReport) and report_of(stream) is stream.atlas


def test_report_of_what_has_none() -> None:
    with pytest.raises(LookupError, match="dict carries no ATLAS report"):
        report_of({"choices": []})


@dataclass(frozen=True)
class FrozenReply:
    """A provider's response object that takes no new attribute."""

    text: str


class FrozenRawBackend(ScriptedBackend):
    """A scripted student whose provider objects are frozen, as some SDKs' are."""

    def complete(self, request: ChatRequest) -> ChatResponse:
        response = super().complete(request)
        return response.model_copy(update={"raw": FrozenReply(response.text)})

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        response = await super().acomplete(request)
        return response.model_copy(update={"raw": FrozenReply(response.text)})


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_report_of_a_frozen_provider_object(mode: str) -> None:
    """The provider's object is delivered as it is, not forced open; its report is found beside it."""
    student = FrozenRawBackend(default="42")
    alone = {"teach": False}
    with Atlas(student_backend=student, teacher_backend=ScriptedBackend(), ledger="none") as atlas:
        if mode == "sync":
            response = atlas.completion(model="student-model", messages=QUESTION, atlas=alone)
        else:
            response = asyncio.run(atlas.acompletion(model="student-model", messages=QUESTION, atlas=alone))
    assert isinstance(response, FrozenReply) and not hasattr(response, "atlas")
    assert report_of(response).decision == "student_only"
    from atlas_middleware import attach

    held = len(attach._DETACHED)
    del response
    gc.collect()
    assert len(attach._DETACHED) == held - 1  # gone with its response
