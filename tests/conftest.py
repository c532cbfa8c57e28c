"""Test-wide guards: no network beyond loopback, LiteLLM's cost map from disk."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Nothing in the tests may read a real key or default ledger from the environment.
for _name in list(os.environ):
    if _name.startswith("ATLAS_"):
        del os.environ[_name]

from atlas_middleware.testing import block_network  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _no_network() -> Iterator[None]:
    with block_network():
        yield


@pytest.fixture(autouse=True)
def _isolated_data_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default ledger lives in the user's data folder: point it at a temporary one.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))
