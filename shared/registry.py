"""The model registry: which Chorus model id is served by which provider, at what price."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


class RegistryError(ValueError):
    """The registry file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ProviderSpec:
    """A host speaking one wire format; OpenAI-compatible hosts differ only here."""

    name: str
    adapter: str
    base_url: str
    key_env: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # Host quirks the shared adapters read (e.g. no stream usage, max_tokens field name).
    quirks: dict[str, Any] = field(default_factory=dict)

    def api_key(self) -> str:
        return os.environ.get(self.key_env, "") if self.key_env else ""


@dataclass(frozen=True)
class ModelSpec:
    id: str
    provider: ProviderSpec
    upstream: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    context_window: int
    max_output_tokens: int
    capabilities: frozenset[str] = frozenset()
    # What a usual answer runs to: a call without ``max_tokens`` is held for this many
    # output tokens and extends its hold as it streams past it (``shared.pricing``).
    typical_output_tokens: int = 512
    tags: frozenset[str] = frozenset()

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """Credits for the given token counts at this model's prices."""
        total = self.input_per_mtok * prompt_tokens + self.output_per_mtok * completion_tokens
        return (total / Decimal(1_000_000)).quantize(Decimal("0.000001"))

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    providers: dict[str, ProviderSpec]
    defaults: dict[str, Any] = field(default_factory=dict)
    routing: dict[str, Any] = field(default_factory=dict)

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError as exc:
            raise RegistryError(f"unknown model {model_id!r}") from exc

    def __contains__(self, model_id: object) -> bool:
        return model_id in self.models


def _expand(value: str, env: dict[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        return env.get(match.group(1)) or (match.group(2) or "")

    return _VAR.sub(repl, value)


def _expand_all(obj: Any, env: dict[str, str]) -> Any:
    if isinstance(obj, str):
        return _expand(obj, env)
    if isinstance(obj, dict):
        return {k: _expand_all(v, env) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand_all(v, env) for v in obj]
    return obj


def parse_registry(raw: dict[str, Any], env: dict[str, str] | None = None) -> Registry:
    env = dict(os.environ if env is None else env)
    env.setdefault("CHORUS_MOCK_URL", "http://127.0.0.1:8100")
    raw = _expand_all(raw, env)
    providers: dict[str, ProviderSpec] = {}
    for name, p in raw.get("providers", {}).items():
        try:
            providers[name] = ProviderSpec(
                name=name,
                adapter=p["adapter"],
                base_url=p["base_url"].rstrip("/"),
                key_env=p.get("key_env", ""),
                headers=dict(p.get("headers", {})),
                quirks=dict(p.get("quirks", {})),
            )
        except KeyError as exc:
            raise RegistryError(f"provider {name!r} lacks {exc.args[0]!r}") from exc
    models: dict[str, ModelSpec] = {}
    for model_id, m in raw.get("models", {}).items():
        provider = providers.get(m.get("provider", ""))
        if provider is None:
            raise RegistryError(f"model {model_id!r} names unknown provider {m.get('provider')!r}")
        models[model_id] = ModelSpec(
            id=model_id,
            provider=provider,
            upstream=m.get("upstream", model_id),
            input_per_mtok=Decimal(str(m.get("input_per_mtok", 0))),
            output_per_mtok=Decimal(str(m.get("output_per_mtok", 0))),
            context_window=int(m.get("context_window", 8192)),
            max_output_tokens=int(m.get("max_output_tokens", 4096)),
            capabilities=frozenset(m.get("capabilities", [])),
            typical_output_tokens=_positive(model_id, m.get("typical_output_tokens", 512)),
            tags=frozenset(m.get("tags", [])),
        )
    return Registry(
        models=models,
        providers=providers,
        defaults=dict(raw.get("defaults", {})),
        routing=dict(raw.get("routing", {})),
    )


def _positive(model_id: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RegistryError(f"model {model_id!r}: typical_output_tokens must be a positive integer")
    return value


def load_registry(path: Path) -> Registry:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RegistryError(f"cannot read model registry {path}: {exc}") from exc
    return parse_registry(raw)


_cache: dict[str, Registry] = {}


def get_registry(path: Path | None = None) -> Registry:
    """The process-wide registry, loaded once per path."""
    if path is None:
        from shared.settings import get_settings

        path = get_settings().models_path
    key = str(path)
    if key not in _cache:
        _cache[key] = load_registry(path)
    return _cache[key]
