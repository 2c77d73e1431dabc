"""The HTTP API of ``caretally serve``: routes, API keys, rate limits and connection hygiene."""
