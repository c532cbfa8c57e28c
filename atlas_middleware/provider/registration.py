"""Registering the ``atlas`` provider with LiteLLM."""

from __future__ import annotations

from typing import Any

import litellm

from ..backends.compat import register_custom_provider
from .adapter import AtlasLLM
from .options import PROVIDER


def register(provider: AtlasLLM | None = None, **atlas_kwargs: Any) -> AtlasLLM:
    """Make ``atlas/...`` models callable through LiteLLM; returns the provider.

    Registering again replaces the previous ``atlas`` provider.
    """
    provider = provider or AtlasLLM(**atlas_kwargs)
    register_custom_provider(litellm, PROVIDER, provider)
    return provider
