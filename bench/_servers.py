"""Loopback OpenAI-compatible servers in a child process, so their CPU is not counted
against the client being measured. Used by the benchmarks."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

CHILD = r"""
import sys, time
from atlas_middleware.testing import OpenAITestServer, ScriptedBackend, teacher_reply
delay = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
student = ScriptedBackend({
    "probe": "Add the numbers and check the carry.",
    "baseline": "20 plus 22 is 42. The answer is 42",
    "guided": "The answer is 42",
}, delays={"*": delay} if delay else None)
if delay:
    student.delays = {r: delay for r in ("probe", "baseline", "guided", "teacher", "judge_pair")}
teacher = ScriptedBackend({"teacher": teacher_reply("Check the carry.")},
                          delays={"teacher": delay} if delay else None)
s = OpenAITestServer(student).start()
t = OpenAITestServer(teacher).start()
print(s.url, t.url, flush=True)
while True:
    time.sleep(3600)
"""


@contextmanager
def servers(delay: float = 0.0) -> Iterator[tuple[str, str]]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(delay)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        student_url, teacher_url = proc.stdout.readline().split()
        for _ in range(100):
            try:
                httpx.get(student_url.replace("/v1", "/health"), timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield student_url, teacher_url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
