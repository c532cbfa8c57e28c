"""Test doubles that ship with the package: scripted backends, doubles of real teachers
and judges (``teachers.py``), gullible judges and teachers that obey what they read
(``gullible.py``), an OpenAI-compatible test server, an Anthropic Messages API
test server (``anthropic_server.py``), a fake vLLM async engine (``vllm_engine.py``), and a
network guard.
Nothing here touches the network."""

from .anthropic_server import AnthropicTestServer
from .gullible import EchoingJudge, GullibleTeacher, ObeyingJudge
from .network import NetworkBlockedError, block_network
from .scripted import FunctionBackend, Reply, ScriptedBackend, classify, guidance_of, hold_role, teacher_reply
from .server import HTTPFault, OpenAITestServer, RawBody
from .teachers import AtlasStyleTeacher, GradingJudge, PairwiseJudge, atlas_prompt_parts, judged_answers
from .vllm_engine import FakeAsyncEngine, FakeSamplingParams

__all__ = [
    "AnthropicTestServer",
    "AtlasStyleTeacher",
    "EchoingJudge",
    "FakeAsyncEngine",
    "FakeSamplingParams",
    "FunctionBackend",
    "GradingJudge",
    "GullibleTeacher",
    "HTTPFault",
    "NetworkBlockedError",
    "ObeyingJudge",
    "OpenAITestServer",
    "PairwiseJudge",
    "RawBody",
    "Reply",
    "ScriptedBackend",
    "atlas_prompt_parts",
    "block_network",
    "classify",
    "guidance_of",
    "hold_role",
    "judged_answers",
    "teacher_reply",
]
