"""Test doubles that ship with the package: scripted backends, an OpenAI-compatible test
server, and a network guard. Nothing here touches the network."""

from .network import NetworkBlockedError, block_network
from .scripted import FunctionBackend, Reply, ScriptedBackend, classify, guidance_of, hold_role, teacher_reply
from .server import HTTPFault, OpenAITestServer, RawBody

__all__ = [
    "FunctionBackend",
    "HTTPFault",
    "NetworkBlockedError",
    "OpenAITestServer",
    "RawBody",
    "Reply",
    "ScriptedBackend",
    "block_network",
    "classify",
    "guidance_of",
    "hold_role",
    "teacher_reply",
]
