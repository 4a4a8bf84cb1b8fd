"""Anthropic Messages API: request translation, stream parsing, error mapping."""

from workers.providers.anthropic.adapter import AnthropicAdapter

__all__ = ["AnthropicAdapter"]
