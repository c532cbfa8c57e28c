"""Keys stay out of everything the middleware writes, on every error path (issue 23, item 7).

The student's key reaches a provider on every call, and a provider (or a gateway in front of
it) may quote it in an error. LiteLLM re-raises that text, masking only key *shapes*
(``sk-...``), so the keys here are distinctive and shaped like no known key: only
remembering the call's own key can mask them. Each test searches every output for the key
and for its first 12 characters.

The proxy's outputs (response bodies, its log, /atlas/metrics) are in
tests/test_proxy_redaction.py.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import pkgutil
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADDITION_QUESTION, addition_script

import atlas_middleware
from atlas_middleware import Atlas, InvalidRequestError
from atlas_middleware._redact import (
    MASK,
    RECENT_LIMIT,
    SECRET_FILTER,
    redact,
    register_secret,
    remember_secret,
    scrub,
    secret_logger,
)
from atlas_middleware.backends.http.transport import LeanHTTPBackend
from atlas_middleware.messages import ChatRequest
from atlas_middleware.testing import OpenAITestServer, ScriptedBackend

litellm = pytest.importorskip("litellm")

TEACHER_KEY = "teacher-LEAKCANARY-lib-7f3e9a1c5b"
LOCKED_KEY = "the-right-key-for-locked-4d2c"


def canary(case: str) -> str:
    """A key no pattern knows (not ``sk-``, not a bearer header): one per case, so that a key
    remembered on one case cannot mask another's."""
    return f"ck-LEAKCANARY-{case}-5a7e0c9d1b3f"


def assert_clean(haystacks: dict[str, str], *keys: str) -> None:
    for key in keys:
        for needle in (key, key[:12]):
            leaks = {name: text.count(needle) for name, text in haystacks.items() if needle in text}
            assert not leaks, f"{needle!r} found in {leaks}"


# -- the registry of secrets ------------------------------------------------------------------


def _lean_calls(backend: LeanHTTPBackend, keys: list[str]) -> None:
    for key in keys:  # what the lean path does with every call's key
        backend._prepare(ChatRequest(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                     params={"api_base": "http://127.0.0.1:9/v1", "api_key": key}))


def _redact_seconds(text: str) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(20):
            redact(text)
        best = min(best, time.perf_counter() - t0)
    return best


def test_per_call_keys_are_bounded_and_configured_ones_stay() -> None:
    """Many distinct callers' keys: memory and the cost of ``redact`` stop growing at the
    bound (before: every key was kept, and each redaction sorted them all), and a flood of
    keys cannot push out the configured teacher's key."""
    register_secret(TEACHER_KEY)
    backend = LeanHTTPBackend()
    text = "upstream said: nothing secret here " * 20
    first = f"ck-flood-first-{RECENT_LIMIT}-0000000000"
    _lean_calls(backend, [first] + [f"ck-flood-a-{i:06d}-9c8b7a6d" for i in range(RECENT_LIMIT)])
    at_bound = _redact_seconds(text)
    _lean_calls(backend, [f"ck-flood-b-{i:06d}-9c8b7a6d" for i in range(8 * RECENT_LIMIT)])
    after_9x = _redact_seconds(text)
    assert after_9x <= 2.5 * at_bound, (at_bound, after_9x)  # 9x the keys, about the same cost
    assert TEACHER_KEY not in redact(f"bad key {TEACHER_KEY}")
    # the oldest per-call key is forgotten by the process...
    assert first in redact(f"bad key {first}")
    # ...but a call's own error is always scrubbed of the call's key
    err = ValueError(f"bad key {first}")
    assert first not in str(scrub(err, [first]))
    backend.close()


def test_short_placeholder_keys_are_not_secrets() -> None:
    remember_secret("EMPTY")  # vLLM's placeholder: masking it would mask the word everywhere
    assert redact("EMPTY queue") == "EMPTY queue"


def test_scrub_masks_the_whole_chain_in_place_and_keeps_the_error() -> None:
    key = canary("chain")
    try:
        try:
            raise ValueError(f"openai: bad request for key {key}")
        except ValueError as inner:
            raise litellm.BadRequestError(message=f"OpenAIException - bad request for key {key}", model="m",
                                          llm_provider="openai", body={"error": {"message": key}}) from inner
    except litellm.BadRequestError as exc:
        caught = exc
    assert scrub(caught, [key]) is caught
    assert type(caught) is litellm.BadRequestError and caught.status_code == 400
    text = "".join(traceback.format_exception(caught)) + repr(caught) + json.dumps(caught.body)
    assert_clean({"error": text}, key)
    assert MASK in str(caught) and "OpenAIException - bad request for key" in str(caught)


# -- logs -------------------------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_log_records_are_redacted_message_and_traceback() -> None:
    key = canary("log")
    remember_secret(key)
    logger = secret_logger("atlas_middleware.test_redaction")
    capture = _Capture()
    logger.addHandler(capture)
    try:
        try:
            raise RuntimeError(f"provider said: bad request for key {key}")
        except RuntimeError:
            logger.warning("student call failed with key %s", key, exc_info=True)
    finally:
        logger.removeHandler(capture)
    assert_clean({"log": "\n".join(capture.lines)}, key)
    assert "Traceback" in capture.lines[0] and MASK in capture.lines[0]


def test_the_proxy_masks_litellms_loggers() -> None:
    """LiteLLM's loggers in the proxy process carry the filter too (whatever LiteLLM logs
    about a call whose key is known), put there when the proxy builds the hooks."""
    pytest.importorskip("prometheus_client")
    from atlas_middleware.proxy.hooks import LITELLM_LOGGERS, build

    key = canary("litellm-log")
    remember_secret(key)
    build(metrics=False, teacher="openai/gpt-4o")
    logger = logging.getLogger("LiteLLM Proxy")
    capture = _Capture()
    logger.addHandler(capture)
    try:
        logger.error("litellm.proxy: Exception occured - key=%s", key)
    finally:
        logger.removeHandler(capture)
    assert all(SECRET_FILTER in logging.getLogger(name).filters for name in LITELLM_LOGGERS)
    assert_clean({"log": "\n".join(capture.lines)}, key)
    assert MASK in capture.lines[0]


def _package_modules() -> Iterator[str]:
    for info in pkgutil.walk_packages(atlas_middleware.__path__, "atlas_middleware."):
        if not info.name.endswith("__main__"):  # (runs the CLI)
            yield info.name


def test_every_atlas_middleware_logger_carries_the_filter() -> None:
    """A logger's filters see only its own records (not its children's), so each logger
    must carry it; a new module's ``logging.getLogger`` shows up here."""
    # Old paths of moved modules import with a DeprecationWarning (scripts/reorganise.py); they
    # are the new modules themselves, whose loggers are checked here under their new names.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in _package_modules():
            try:
                importlib.import_module(name)
            except ImportError:  # an optional extra that is not installed
                continue
    loggers = {name: obj for name, obj in logging.Logger.manager.loggerDict.items()
               if name.startswith("atlas_middleware") and isinstance(obj, logging.Logger)}
    assert {"atlas_middleware", "atlas_middleware.proxy", "atlas_middleware.ledger"} <= set(loggers)
    bare = sorted(name for name, logger in loggers.items() if SECRET_FILTER not in logger.filters)
    assert not bare, f"loggers without the secret filter: {bare}"


# -- Atlas.completion on LiteLLM's own path ---------------------------------------------------

# (case, model, extra params, messages); the student's server checks requests as OpenAI does
# and quotes the caller's key in every error.
CASES = [
    ("unknown", "openai/gpt-4o-mini", {"foo_unknown_param": 1}, ADDITION_QUESTION),
    ("functions", "openai/gpt-4o-mini", {"functions": [{"description": "a function without a name"}]},
     ADDITION_QUESTION),
    ("type", "openai/gpt-4o-mini", {"temperature": "hot"}, ADDITION_QUESTION),
    ("model", "openai/no-such-model", {}, ADDITION_QUESTION),
    ("shape", "openai/gpt-4o-mini", {}, [{"role": "robot", "content": "hi"}]),
    ("locked", "openai/gpt-4o-mini", {}, ADDITION_QUESTION),  # a 401 that quotes the key
]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[OpenAITestServer, OpenAITestServer]]:
    models = ["gpt-4o-mini", "gpt-4o"]
    with OpenAITestServer(ScriptedBackend(addition_script()), models=models, strict=True, echo_key=True) as up, \
            OpenAITestServer(ScriptedBackend(addition_script()), models=models, strict=True, echo_key=True,
                             api_key=LOCKED_KEY) as locked:
        yield up, locked


def _call(atlas: Atlas, mode: str, model: str, messages: Any, **params: Any) -> None:
    if mode == "sync":
        atlas.completion(model, messages, **params)
    elif mode == "async":
        asyncio.run(atlas.acompletion(model, messages, **params))
    else:
        for _ in atlas.completion(model, messages, stream=True, **params):
            pass


def _export(ledger: str, out: Path) -> str:
    from typer.testing import CliRunner

    from atlas_middleware.cli import app

    result = CliRunner().invoke(app, ["export", "--ledger", ledger, "--out", str(out), "--include-untaught",
                                      "--validation-share", "0"])
    files = "".join(p.read_text(errors="replace") for p in sorted(out.rglob("*")) if p.is_file())
    return result.output + files


@pytest.mark.parametrize("mode", ["sync", "async", "stream"])
def test_library_errors_on_litellms_path_never_carry_the_key(servers, tmp_path, caplog, mode) -> None:  # type: ignore[no-untyped-def]
    up, locked = servers
    caplog.set_level(logging.INFO)
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    atlas = Atlas(teacher="openai/gpt-4o", teacher_api_base=up.url, teacher_api_key=TEACHER_KEY, ledger=ledger,
                  store_texts=True, policy="strict", lean_http=False, teacher_retries=1)
    errors: dict[str, str] = {}
    keys = [canary(f"{case}-{mode}") for case, *_ in CASES]
    for (case, model, params, messages), key in zip(CASES, keys, strict=True):
        base = locked.url if case == "locked" else up.url
        with pytest.raises(Exception) as info:
            _call(atlas, mode, model, messages, api_base=base, api_key=key, **params)
        exc = info.value
        errors[case] = "".join(traceback.format_exception(exc)) + repr(exc) + json.dumps(
            getattr(exc, "body", None), default=str)
        if case == "shape":
            assert isinstance(exc, InvalidRequestError)
        else:  # the provider's error, as the provider raised it, with the key masked
            assert isinstance(exc, litellm.APIError | litellm.BadRequestError | litellm.NotFoundError
                              | litellm.AuthenticationError), type(exc)
            assert "bad request for key" in str(exc) and MASK in str(exc), str(exc)
    atlas.flush()
    reports = [r.report_json for r in atlas.ledger.records()]
    atlas.close()
    db = tmp_path / "ledger.db"
    haystacks = {
        **errors,
        "log": caplog.text,
        "reports": "\n".join(reports),
        "ledger": (db.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("ledger.db-*"))).decode("latin-1"),
        "export": _export(ledger, tmp_path / "export"),
    }
    assert len(reports) >= len(CASES) - 1  # every call the student saw is recorded (the bad shape is not a call)
    assert any("bad request for key" in r for r in reports)  # the haystack holds the errors
    assert_clean(haystacks, TEACHER_KEY, *keys)
