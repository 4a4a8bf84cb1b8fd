"""Adapter names used in the model registry, mapped to their implementations."""

from __future__ import annotations

from importlib import import_module

from workers.providers.base import Adapter

# name -> "module:Class"; imported lazily so one broken adapter cannot stop the others.
ADAPTERS: dict[str, str] = {
    "openai": "workers.providers.openai:OpenAIAdapter",
    "anthropic": "workers.providers.anthropic:AnthropicAdapter",
    "gemini": "workers.providers.gemini:GeminiAdapter",
}

_instances: dict[str, Adapter] = {}


def get_adapter(name: str) -> Adapter:
    if name not in _instances:
        try:
            module_name, cls_name = ADAPTERS[name].split(":")
        except KeyError as exc:
            raise LookupError(f"no adapter named {name!r}") from exc
        _instances[name] = getattr(import_module(module_name), cls_name)()
    return _instances[name]
