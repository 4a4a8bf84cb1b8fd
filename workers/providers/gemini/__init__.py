"""Google Gemini generateContent API: request translation, stream parsing, error mapping."""

from workers.providers.gemini.adapter import GeminiAdapter

__all__ = ["GeminiAdapter"]
