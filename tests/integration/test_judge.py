"""Judge end to end: contestants as a chord, the judge as its body, scores and ranks."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.test_blend import finals, requests_to
from tests.integration.test_compare import _wallet
from tests.sse import stream_post
from tests.stack import Stack

MSG = [{"role": "user", "content": "Explain recursion."}]
CONTESTANTS = ["gpt-5-mini", "gemini-3-flash", "deepseek-v3.2"]
JUDGE = "gpt-5.2"  # has json_mode


def verdict(**scores: float) -> str:
    return json.dumps({"scores": [{"label": k, "score": v, "reason": f"reason {k}"}
                                  for k, v in scores.items()]})


def script(mock: httpx.Client, *replies: str) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 10, "token_ms": 2, "tokens": 10})
    mock.post("/_mock/config", json={"model": JUDGE, "replies": list(replies)})


def run(api: httpx.Client, **extra: Any) -> dict[str, Any]:
    s = stream_post(api, "/api/v1/judge", {"contestants": CONTESTANTS, "judge": JUDGE,
                                           "messages": MSG, **extra})
    assert s.done
    return {"stream": s, "final": s.final}


def test_judge_scores_and_ranks_under_shuffled_neutral_labels(api: httpx.Client,
                                                              mock: httpx.Client) -> None:
    script(mock, verdict(A=9, B=4, C=6.5))
    out = run(api, criteria="accuracy above all")
    s, final = out["stream"], out["final"]
    assert final["status"] == "succeeded", final
    labels = final["labels"]
    assert sorted(labels) == ["A", "B", "C"] and sorted(labels.values()) == sorted(CONTESTANTS)
    expected = {labels["A"]: 9, labels["B"]: 4, labels["C"]: 6.5}
    scores = final["scores"]
    assert [(x["model"], x["score"]) for x in scores] == sorted(
        expected.items(), key=lambda kv: -kv[1])
    assert [x["rank"] for x in scores] == [1, 2, 3]
    assert scores[0]["reason"] == "reason A"
    assert [e["model"] for e in s.events if e["event"] == "score"] == [x["model"]
                                                                       for x in scores]
    assert final["verdict"] == {"model": JUDGE, "attempts": 1, "repaired": False}
    chunks = [e for e in s.events if e["event"] == "chunk" and not e["done"]]
    assert {(c["model"], c["role"]) for c in chunks} == {
        *((m, "contestant") for m in CONTESTANTS), (JUDGE, "judge")}
    # The judge saw the answers under their labels, in the label order, without names,
    # asked for JSON mode, with the criteria.
    (request,) = requests_to(mock, JUDGE)
    prompt = json.dumps(request)
    assert request["response_format"] == {"type": "json_object"}
    answers = {e["model"]: e["full_content"] for e in finals(s, role="contestant")}
    where = [prompt.index(answers[labels[k]]) for k in ("A", "B", "C")]
    assert where == sorted(where)
    assert all(m not in prompt for m in CONTESTANTS)
    assert "accuracy above all" in prompt


def test_a_verdict_wrapped_in_prose_is_repaired(api: httpx.Client, mock: httpx.Client) -> None:
    script(mock, "Here you go:\n```json\n" + verdict(A=3, B=8, C=5)[:-1] + ",}\n```")
    final = run(api)["final"]
    assert final["status"] == "succeeded", final
    assert final["verdict"] == {"model": JUDGE, "attempts": 1, "repaired": True}
    assert final["scores"][0]["model"] == final["labels"]["B"]
    assert len(requests_to(mock, JUDGE)) == 1


def test_a_malformed_verdict_is_asked_for_once_more(api: httpx.Client,
                                                    mock: httpx.Client) -> None:
    script(mock, "I liked A best, then C.", verdict(A=7, B=2, C=5))
    out = run(api)
    s, final = out["stream"], out["final"]
    assert final["status"] == "succeeded", final
    assert final["verdict"]["attempts"] == 2
    (warning,) = [e for e in s.events if e["event"] == "error" and not e.get("final")]
    assert warning["role"] == "judge" and warning["retrying"] is True
    assert warning["error"]["code"] == "malformed_verdict"
    assert {e.get("attempt") for e in finals(s, role="judge")} == {None, 2}
    first, second = requests_to(mock, JUDGE)
    assert "I liked A best, then C." in json.dumps(second)
    assert "no JSON object" in json.dumps(second)
    assert "I liked A best" not in json.dumps(first)


def test_a_verdict_malformed_twice_fails_clearly(api: httpx.Client, mock: httpx.Client) -> None:
    script(mock, "A wins.", '{"scores": [{"label": "A", "score": 12}]}')
    r = api.post("/api/v1/judge", json={"contestants": CONTESTANTS, "judge": JUDGE,
                                        "messages": MSG})
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["error"]["code"] == "malformed_verdict"
    assert "after one re-ask" in body["error"]["message"]
    assert "outside 0-10" in body["error"]["message"]
    assert len(body["answers"]) == 3
    # The tokens produced are paid, not the base fee.
    assert 0 < body["credits_charged"] < 1


def test_ties_are_ranked_in_request_order(api: httpx.Client, mock: httpx.Client) -> None:
    script(mock, verdict(A=8, B=8, C=8))
    final = run(api)["final"]
    assert [(x["model"], x["rank"], x["score"]) for x in final["scores"]] == [
        (m, i, 8) for i, m in enumerate(CONTESTANTS, 1)]


def test_a_contestant_that_errors_is_ranked_last_without_a_score(
    api: httpx.Client, mock: httpx.Client
) -> None:
    script(mock, verdict(A=5, B=6))
    mock.post("/_mock/config", json={"model": "gpt-5-mini",
                                     "fault": {"kind": "status", "status": 500}})
    final = run(api)["final"]
    assert final["status"] == "succeeded", final
    assert sorted(final["labels"].values()) == ["deepseek-v3.2", "gemini-3-flash"]
    last = final["scores"][-1]
    assert last == {"model": "gpt-5-mini", "score": None, "rank": 3,
                    "reason": "no answer (upstream_server_error)"}
    assert [x["score"] for x in final["scores"][:2]] == [6, 5]
    (request,) = requests_to(mock, JUDGE)
    assert json.dumps(request).count("<answer label=") == 2


def test_every_contestant_failing_skips_the_judge(api: httpx.Client,
                                                  mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "*", "fault": {"kind": "status", "status": 500}})
    r = api.post("/api/v1/judge", json={"contestants": CONTESTANTS[:2], "judge": JUDGE,
                                        "messages": MSG})
    assert r.status_code == 502
    assert r.json()["error"]["message"] == "every contestant failed"
    assert requests_to(mock, JUDGE) == []


def test_a_judge_without_json_mode_gets_no_response_format(api: httpx.Client,
                                                           mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 10, "token_ms": 2, "tokens": 10})
    mock.post("/_mock/config", json={"model": "claude-haiku-4-5",
                                     "replies": [verdict(A=1, B=2)]})
    r = api.post("/api/v1/judge", json={"contestants": CONTESTANTS[:2],
                                        "judge": "claude-haiku-4.5", "messages": MSG})
    assert r.status_code == 200, r.text
    assert [x["score"] for x in r.json()["scores"]] == [2, 1]
    (request,) = requests_to(mock, "claude-haiku-4.5")
    assert "response_format" not in request and "JSON" in json.dumps(request)


@pytest.mark.parametrize(("body", "param"), [
    ({"contestants": ["gpt-5-mini"], "judge": JUDGE}, "contestants"),
    ({"contestants": [*CONTESTANTS, "gpt-5.2", "gemini-3-pro"], "judge": JUDGE}, "contestants"),
    ({"contestants": ["gpt-5-mini", "gpt-5-mini"], "judge": JUDGE}, "contestants"),
    ({"contestants": CONTESTANTS}, "judge"),
    ({"contestants": CONTESTANTS, "judge": "nope"}, "contestants"),
    ({"contestants": CONTESTANTS, "judge": JUDGE, "criteria": "x" * 4001}, "criteria"),
])
def test_bad_judge_bodies_are_400_and_change_nothing(stack: Stack, body: dict[str, Any],
                                                     param: str) -> None:
    account = f"acct-{uuid.uuid4().hex[:8]}"
    key = stack.create_key(account=account, credits=100)
    before = _wallet(stack, account)
    r = httpx.post(f"{stack.url}/api/v1/judge", json={**body, "messages": MSG},
                   headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert _wallet(stack, account) == before
