"""The lean HTTP path: OpenAI-compatible servers without LiteLLM on the call."""
