"""OpenAI chat completions, and every OpenAI-compatible host by configuration."""

from workers.providers.openai.adapter import OpenAIAdapter

__all__ = ["OpenAIAdapter"]
