"""The default registry works end to end on the mock, with nothing scripted: nine models
compare, the default judge returns a usable verdict, a quirky host's usage is estimated."""

from __future__ import annotations

import httpx

from shared.registry import get_registry
from shared.settings import PACKAGE_DIR
from tests.sse import stream_post

MSG = [{"role": "user", "content": "Name a prime number."}]
REGISTRY = get_registry(PACKAGE_DIR / "models.toml")


def fast_everything(mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 5, "token_ms": 1, "tokens": 6})


def test_nine_default_models_compare(api: httpx.Client, mock: httpx.Client) -> None:
    fast_everything(mock)
    models = sorted(REGISTRY.models)[:9]
    assert len(models) == 9
    s = stream_post(api, "/api/v1/compare", {"models": models, "messages": MSG})
    assert s.done and s.final["status"] == "succeeded", s.final
    assert s.final["summary"]["answered"] == 9


def test_default_judge_scores_without_scripting(api: httpx.Client, mock: httpx.Client) -> None:
    fast_everything(mock)
    judge = REGISTRY.defaults["judge"]
    s = stream_post(api, "/api/v1/judge", {"contestants": ["gpt-5.2", "gemini-3-flash"],
                                           "judge": judge, "messages": MSG})
    assert s.done and s.final["status"] == "succeeded", s.final
    scores = s.final["scores"]
    assert sorted(x["model"] for x in scores) == ["gemini-3-flash", "gpt-5.2"]
    assert sorted(x["rank"] for x in scores) == [1, 2]
    assert all(0 <= x["score"] <= 10 and x["reason"] for x in scores)


def test_host_without_stream_usage_gets_estimated_usage(
    api: httpx.Client, mock: httpx.Client
) -> None:
    fast_everything(mock)
    s = stream_post(api, "/api/v1/chat", {"model": "mistral-large", "messages": MSG})
    assert s.done and s.final["status"] == "succeeded"
    assert s.final["usage_estimated"] is True and s.final["completion_tokens"] > 0
    sent = mock.get("/_mock/requests", params={"model": "mistral-large-latest"}).json()
    assert "stream_options" not in sent[-1]["body"]
