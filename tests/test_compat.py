"""``backends/compat.py``: every touchpoint of a dependency's private internals, in one file.

Two kinds of test:

* a scan of the package's sources that fails when a module other than ``compat.py`` uses a
  dependency's private name (an underscored import path or attribute the package does not
  define itself, ``__wrapped__``, LiteLLM's internal modules, functions and callback lists);
* a contract test per touchpoint, against the LiteLLM (aiohttp, LangChain) installed: the
  private behaviour compat relies on is still there. ``make test`` runs this file in both
  environments, the oldest and the newest LiteLLM of the supported range (docs/testing.md).
"""

from __future__ import annotations

import ast
import asyncio
import gc
import re
import socket
import tomllib
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from atlas_middleware.backends import compat
from atlas_middleware.backends.litellm import import_litellm
from atlas_middleware.testing import OpenAITestServer

PACKAGE = Path(__file__).resolve().parent.parent / "atlas_middleware"
COMPAT = PACKAGE / "backends" / "compat.py"

INTERNAL_NAMES = frozenset({
    "__wrapped__",  # stopping LiteLLM's completion part-way, under its decorator
    "litellm_core_utils",  # LiteLLM's internal package
    "custom_llm_setup",  # LiteLLM's internal provider registration
    "complete_input_dict", "model_call_details",  # LiteLLM's logging object
    "sync_deployment_callback_on_success", "deployment_callback_on_failure",  # the Router's hooks
    "leastbusy_logger", "lowestlatency_logger", "lowesttpm_logger", "lowesttpm_logger_v2", "lowestcost_logger",
})
"""Dependencies' internals without an underscore, named here because the scan cannot tell."""
CALLBACK_LISTS = frozenset({"callbacks", "input_callback", "success_callback", "failure_callback",
                            "_async_success_callback"})
"""LiteLLM's global callback lists: internal when read or written on the ``litellm`` module
(as ``litellm_settings`` keys of the proxy's config they are public)."""
_NAMED_BY = frozenset({"getattr", "setattr", "hasattr", "delattr"})
_PRIVATE = re.compile(r"^_[A-Za-z]\w*$")


def _own_names() -> set[str]:
    """Every underscored name the package defines: those are its own, not a dependency's."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        names.add(path.stem)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)  # a dependency's object's private attribute set is no definition
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[0])
    return {n for n in names if n.startswith("_")}


def _import_uses(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and not node.level and node.module:
        if node.module.split(".")[0] in ("atlas_middleware", "__future__"):
            return []
        path = node.module.split(".")
        return [f"from {node.module} import {a.name}" for a in node.names
                if any(p.startswith("_") or p in INTERNAL_NAMES for p in [*path, a.name])]
    if isinstance(node, ast.Import):
        return [f"import {a.name}" for a in node.names
                if not a.name.startswith("atlas_middleware")
                and any(p.startswith("_") or p in INTERNAL_NAMES for p in a.name.split("."))]
    return []


def _named_strings(node: ast.AST) -> list[ast.Constant]:
    """String constants in a place where they name something: an attribute (``getattr``), a
    key (a dict's, a subscript's) or a constant of their own."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _NAMED_BY:
        candidates = node.args[1:2]
    elif isinstance(node, ast.Dict):
        candidates = [k for k in node.keys if k is not None]
    elif isinstance(node, ast.Subscript):
        candidates = [node.slice]
    elif isinstance(node, ast.Assign):
        candidates = [node.value]
    else:
        return []
    return [c for c in candidates if isinstance(c, ast.Constant) and isinstance(c.value, str)]


def _name_uses(node: ast.AST, own: set[str]) -> list[str]:
    found = []
    if isinstance(node, ast.Attribute):
        if node.attr in INTERNAL_NAMES or (_PRIVATE.match(node.attr) and node.attr not in own):
            found.append(f".{node.attr}")
        elif node.attr in CALLBACK_LISTS and isinstance(node.value, ast.Name) and node.value.id in ("litellm", "lm"):
            found.append(f"{node.value.id}.{node.attr}")
    if isinstance(node, ast.Constant) and node.value in INTERNAL_NAMES:
        found.append(repr(node.value))
    for const in _named_strings(node):
        if _PRIVATE.match(const.value) and const.value not in own and const.value not in INTERNAL_NAMES:
            found.append(repr(const.value))
        elif isinstance(node, ast.Call) and const.value in CALLBACK_LISTS:
            found.append(f"{node.func.id}(..., {const.value!r})")  # type: ignore[attr-defined]
    return found


def private_uses(path: Path, own: set[str]) -> list[str]:
    """Where ``path`` uses a dependency's private name: ``name:line: what``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        for what in _import_uses(node) + _name_uses(node, own):
            found.append(f"{path.name}:{getattr(node, 'lineno', 0)}: {what}")
    return found


def test_no_module_but_compat_touches_a_dependencys_private_internals() -> None:
    own = _own_names()
    found = [f"{path.parent.name}/{use}" for path in sorted(PACKAGE.rglob("*.py")) if path != COMPAT
             for use in private_uses(path, own)]
    assert found == [], "move these into atlas_middleware/backends/compat.py:\n" + "\n".join(found)


def test_the_scan_sees_each_kind_of_use(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from litellm.proxy._types import X\n"
        "import torch._dynamo\n"
        "from litellm.litellm_core_utils.litellm_logging import Logging\n"
        "r._hidden_params\n"
        "f.__wrapped__\n"
        "getattr(r, '_hidden_params', None)\n"
        "litellm.callbacks\n"
        "setattr(lm, 'callbacks', [])\n"
        "self._mine\n"
        "router.model_list\n"
    )
    found = sorted(use.split(": ", 1)[1] for use in private_uses(sample, own={"_mine"}))
    assert found == sorted([
        "from litellm.proxy._types import X", "import torch._dynamo",
        "from litellm.litellm_core_utils.litellm_logging import Logging", "._hidden_params", ".__wrapped__",
        "'_hidden_params'", "litellm.callbacks", "setattr(..., 'callbacks')",
    ])


# -- contracts: the private behaviour compat relies on, in the installed releases -------------

QUESTION = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def litellm() -> Any:
    return import_litellm()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_the_installed_litellm_is_in_the_supported_range(litellm: Any) -> None:
    from importlib.metadata import version

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    assert f"litellm{compat.LITELLM_RANGE}" in project["dependencies"]
    low, high = (_version(bound) for bound in compat.LITELLM_RANGE.split(","))
    assert low <= _version(version("litellm")) < high


def _mocked(litellm: Any, **kwargs: Any) -> Any:
    return litellm.completion(model="openai/gpt-4o-mini", messages=QUESTION, mock_response="hello", api_key="k",
                              **kwargs)


def _logging(litellm: Any) -> Any:
    from litellm.litellm_core_utils.litellm_logging import Logging

    log = Logging(model="gpt-4o-mini", messages=QUESTION, stream=False, call_type="completion",
                  start_time=datetime.now(), litellm_call_id="compat-1", function_id="compat")
    log.update_environment_variables(model="gpt-4o-mini", user=None, optional_params={},
                                     litellm_params={"custom_llm_provider": "openai"})
    return log


def test_litellm_logs_the_cost_a_response_carries_in_hidden_params(litellm: Any) -> None:
    response = _mocked(litellm)
    assert isinstance(compat.hidden_params(response).get("response_cost"), float)
    compat.set_response_cost(response, 0.125)
    assert compat.hidden_params(response) == {"response_cost": 0.125}
    assert _logging(litellm).response_cost_calculator(result=response) == 0.125
    assert compat.hidden_params(object()) == {}


def test_litellm_logs_a_provider_reported_cost(litellm: Any) -> None:
    log = _logging(litellm)
    response = litellm.ModelResponse(model="gpt-4o-mini", usage=litellm.Usage(prompt_tokens=10, completion_tokens=20,
                                                                               total_tokens=30))
    assert log.response_cost_calculator(result=response) != 0.25
    assert compat.set_reported_cost(log, 0.25)
    assert log.response_cost_calculator(result=response) == 0.25
    assert not compat.set_reported_cost(None, 0.25) and not compat.set_reported_cost(object(), 0.25)


def test_a_custom_provider_is_routable_and_its_call_details_reach_the_stream(litellm: Any) -> None:
    from litellm.llms.custom_llm import CustomLLM
    from litellm.types.utils import GenericStreamingChunk

    class Echo(CustomLLM):
        def streaming(self, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
            details = compat.call_details(kwargs["logging_obj"])
            assert details is not None
            details["compat_probe"] = "seen"
            yield GenericStreamingChunk(text="hi", is_finished=True, finish_reason="stop", usage=None, index=0,
                                        tool_use=None)

    saved = list(litellm.custom_provider_map)
    try:
        compat.register_custom_provider(litellm, "atlas-compat", Echo())
        compat.register_custom_provider(litellm, "atlas-compat", Echo())  # replaces, does not add
        assert [p["provider"] for p in litellm.custom_provider_map].count("atlas-compat") == 1
        stream = litellm.completion(model="atlas-compat/x", messages=QUESTION, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "hi"
        details = compat.stream_call_details(stream)
        assert details is not None and details["compat_probe"] == "seen"
    finally:
        litellm.custom_provider_map = saved


def test_litellm_ships_the_default_encoding() -> None:
    assert compat.default_encoding().decode(compat.default_encoding().encode("carry the one")) == "carry the one"


def test_the_request_body_is_captured_before_anything_is_sent(litellm: Any) -> None:
    body = compat.capture_request_body(litellm, "openai/o3-mini", QUESTION, {"max_tokens": 7, "api_key": "k"},
                                       call_id="compat-capture")
    assert body["model"] == "o3-mini" and body["messages"] == QUESTION
    assert body["max_completion_tokens"] == 7 and "max_tokens" not in body  # LiteLLM's own mapping
    with pytest.raises(Exception) as refused:  # LiteLLM's own refusal propagates
        compat.capture_request_body(litellm, "openai/o3-mini", QUESTION, {"temperature": 0.5, "api_key": "k"},
                                    call_id="compat-capture")
    assert type(refused.value).__name__ == "UnsupportedParamsError"


def _router(litellm: Any, **settings: Any) -> Any:
    model_list = [{"model_name": "g", "litellm_params": {"model": "openai/m", "api_base": f"http://127.0.0.1:9/{i}",
                                                          "api_key": "k"}, "model_info": {"id": f"d{i}"}}
                  for i in range(2)]
    return litellm.Router(model_list=model_list, num_retries=0, **settings)


def _picks(router: Any, skipped: tuple[str, ...] = ()) -> set[str]:
    return {compat.router_pick(router, "g", QUESTION, skipped)["model_info"]["id"] for _ in range(20)}


async def _apicks(router: Any, skipped: tuple[str, ...] = ()) -> set[str]:
    return {(await compat.router_apick(router, "g", QUESTION, skipped))["model_info"]["id"] for _ in range(20)}


async def test_the_router_leaves_skipped_deployments_out(litellm: Any) -> None:
    router = _router(litellm)
    try:
        assert _picks(router) == {"d0", "d1"} == await _apicks(router)
        assert _picks(router, ("d0",)) == {"d1"} == await _apicks(router, ("d0",))
    finally:
        compat.router_forget(litellm, router)


def _in_flight(selector: Any) -> dict[str, int]:
    return {d: selector.router_cache.get_cache(key=f"g_request_count:{d}") or 0 for d in ("d0", "d1")}


async def test_a_pick_reserves_nothing_the_caller_reports_itself(litellm: Any) -> None:
    router = _router(litellm, routing_strategy="least-busy")
    try:
        selector = compat.router_strategy_logger(router)
        for _ in range(3):
            await compat.router_apick(router, "g", QUESTION, ())
            compat.router_pick(router, "g", QUESTION, ())
        # least-busy's in-flight counts: only what the caller logged (nothing yet) is busy
        assert _in_flight(selector) == {"d0": 0, "d1": 0}
        selector.log_pre_api_call("openai/m", QUESTION, compat.router_event("openai/m", QUESTION, "g", "d0"))
        assert _in_flight(selector) == {"d0": 1, "d1": 0}
    finally:
        compat.router_forget(litellm, router)


async def test_a_reported_failure_cools_the_deployment_down(litellm: Any) -> None:
    router = _router(litellm, allowed_fails=0, cooldown_time=30)
    try:
        exc = litellm.InternalServerError(message="boom", model="openai/m", llm_provider="openai")
        event = compat.router_event("openai/m", QUESTION, "g", "d0", exc=exc)
        compat.router_failure(router, event, datetime.now(), datetime.now())
        await asyncio.sleep(0)  # the cooldown event the Router scheduled
        assert compat.router_cooled_down(router, ["d0", "d1"]) == {"d0"}
        assert _picks(router) == {"d1"}
    finally:
        compat.router_forget(litellm, router)


def test_a_reported_success_is_counted(litellm: Any) -> None:
    from litellm.router_utils.router_callbacks.track_deployment_metrics import (
        get_deployment_successes_for_current_minute,
    )

    router = _router(litellm)
    try:
        try:  # LiteLLM 1.110 reads the Router through its RoutingContext
            from litellm.router_api import RoutingContext

            view: Any = RoutingContext(router)
        except ImportError:
            view = router
        before = get_deployment_successes_for_current_minute(view, "d1")
        response = litellm.ModelResponse(usage=litellm.Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5))
        compat.router_success(router, compat.router_event("openai/m", QUESTION, "g", "d1"), response,
                              datetime.now(), datetime.now())
        assert get_deployment_successes_for_current_minute(view, "d1") == before + 1
    finally:
        compat.router_forget(litellm, router)


def test_the_strategy_logger_is_found_and_forgotten(litellm: Any) -> None:
    assert compat.router_strategy_logger(_shuffled := _router(litellm)) is None
    compat.router_forget(litellm, _shuffled)
    router = _router(litellm, routing_strategy="least-busy")
    selector = compat.router_strategy_logger(router)
    assert selector is not None and callable(selector.log_pre_api_call)
    assert any(h is selector for h in litellm.callbacks + litellm.input_callback)
    compat.router_forget(litellm, router)
    assert not any(h is selector or h is router for name in ("callbacks", "input_callback", "success_callback",
                                                             "failure_callback", "_async_success_callback")
                   for h in getattr(litellm, name))


def _pooled_session(loop: asyncio.AbstractEventLoop, url: str) -> Any:
    import aiohttp

    async def open_one() -> Any:
        session = aiohttp.ClientSession()
        async with session.get(f"{url}/models") as response:
            await response.read()
        return session

    return loop.run_until_complete(open_one())


def _sockets(session: Any) -> list[socket.socket]:
    return [protocol.transport.get_extra_info("socket") for conns in session.connector._conns.values()
            for protocol, _ in conns]


@pytest.mark.parametrize("loop_closed", [True, False])
def test_a_pool_is_released_from_outside_its_loop(loop_closed: bool) -> None:
    with OpenAITestServer() as server:
        loop = asyncio.new_event_loop()
        session = _pooled_session(loop, server.url)
        sockets, connector = _sockets(session), session.connector
        assert sockets and all(s.fileno() != -1 for s in sockets)  # a kept-alive connection
        if loop_closed:
            loop.close()
        compat.release_session(session)
        assert session.closed and connector.closed
        if not loop_closed:  # the transports close on the loop's next turn
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
        assert all(s.fileno() == -1 for s in sockets)


def test_a_pool_released_after_its_loop_leaves_no_transport_to_finalise() -> None:
    # ``asyncio.run`` per call ends a loop with the pool still open. Closing only the sockets
    # leaves each asyncio transport open in its own eyes: it warns "unclosed transport" when
    # it is collected.
    with OpenAITestServer() as server:
        loop = asyncio.new_event_loop()
        session = _pooled_session(loop, server.url)
        pool = {f"fd={s.fileno()}>" for s in _sockets(session)}
        assert pool
        loop.close()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compat.release_session(session)
            del session
            gc.collect()
    # Only this pool's transports: the collector may finalise other tests' leftovers here too.
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)
            and any(str(w.message).endswith(fd) for fd in pool)] == []


def test_langchains_streaming_handler_is_recognised() -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.tracers._streaming import _StreamingCallbackHandler

    class Streams(BaseCallbackHandler, _StreamingCallbackHandler):
        def tap_output_aiter(self, run_id: Any, output: Any) -> Any:
            return output

        def tap_output_iter(self, run_id: Any, output: Any) -> Any:
            return output

    assert compat.streams_to([BaseCallbackHandler(), Streams()])
    assert not compat.streams_to([BaseCallbackHandler()])


def test_the_proxys_auth_types() -> None:
    try:
        from litellm.proxy import _types  # noqa: F401
    except ImportError:
        pytest.skip("the proxy extra is not installed (the newest-LiteLLM environment)")
    error = compat.proxy_auth_error("wrong key")
    assert getattr(error, "code", None) in (401, "401") and "wrong key" in str(getattr(error, "message", error))
    auth = compat.proxy_key_auth({"api_key": "sk-1", "team_id": "t1"})
    assert auth.team_id == "t1"


def test_torchs_recompile_limit_is_raised() -> None:
    torch = pytest.importorskip("torch")
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    before = getattr(config, name)
    try:
        compat.raise_recompile_limit(torch, before + 5)
        assert getattr(config, name) == before + 5
        compat.raise_recompile_limit(torch, 1)  # never lowered
        assert getattr(config, name) == before + 5
    finally:
        setattr(config, name, before)
