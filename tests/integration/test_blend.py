"""Blend end to end: candidate chords, MoA layers, self_moa samples, chain, synthesis."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.test_compare import UPSTREAM, _wallet
from tests.sse import Stream, stream_post
from tests.stack import Stack

MSG = [{"role": "user", "content": "How do tides work?"}]
CANDIDATES = ["gpt-5-mini", "gemini-3-flash", "claude-haiku-4.5"]  # synthesiser: gpt-5.2


def requests_to(mock: httpx.Client, model: str) -> list[dict[str, Any]]:
    r = mock.get("/_mock/requests", params={"model": UPSTREAM[model], "limit": 50})
    return [item["body"] for item in r.json()]


def layer_events(s: Stream) -> list[tuple[int, str, str]]:
    return [(e["layer"], e["role"], e["status"]) for e in s.events if e["event"] == "layer"]


def finals(s: Stream, **match: Any) -> list[dict[str, Any]]:
    return [e for e in s.events if e["event"] == "chunk" and e["done"]
            and all(e.get(k) == v for k, v in match.items())]


def fast(mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 10, "token_ms": 3, "tokens": 10})


def test_consensus_streams_candidates_then_the_synthesis(api: httpx.Client,
                                                         mock: httpx.Client) -> None:
    fast(mock)
    s = stream_post(api, "/api/v1/blend", {"models": CANDIDATES, "messages": MSG})
    assert s.done and s.ids == list(range(1, len(s.ids) + 1))
    assert layer_events(s) == [(1, "candidate", "started"), (1, "candidate", "done"),
                               (2, "synthesizer", "started"), (2, "synthesizer", "done")]
    chunks = [e for e in s.events if e["event"] == "chunk" and not e["done"]]
    assert {(c["model"], c["role"], c["layer"]) for c in chunks} == {
        *((m, "candidate", 1) for m in CANDIDATES), ("gpt-5.2", "synthesizer", 2)}
    candidates = finals(s, role="candidate")
    (synth,) = finals(s, role="synthesizer")
    final = s.final
    assert final["status"] == "succeeded" and final["strategy"] == "consensus"
    assert final["model"] == "gpt-5.2" and final["full_content"] == synth["full_content"]
    assert final["full_content"] == "".join(c["delta"] for c in chunks
                                            if c["role"] == "synthesizer")
    assert [a["model"] for a in final["answers"]] == CANDIDATES
    # The synthesiser's prompt quotes every candidate's answer.
    (prompt,) = requests_to(mock, "gpt-5.2")
    for c in candidates:
        assert c["full_content"] in json.dumps(prompt)
    assert "consensus answer" in json.dumps(prompt)


def test_moa_layers_run_in_order_and_see_the_previous_layer(api: httpx.Client,
                                                           mock: httpx.Client) -> None:
    fast(mock)
    s = stream_post(api, "/api/v1/blend", {"models": CANDIDATES, "strategy": "moa",
                                           "layers": 3, "messages": MSG})
    assert s.final["status"] == "succeeded", s.final
    layers = [e for e in s.events if e["event"] == "layer"]
    assert [(e["layer"], e["status"]) for e in layers] == [
        (1, "started"), (1, "done"), (2, "started"), (2, "done"), (3, "started"), (3, "done"),
        (4, "started"), (4, "done")]
    assert layers[-1]["role"] == "synthesizer"
    # Every chunk of layer k streams between layer k's started and done events.
    position = {(e["layer"], e["status"]): s.events.index(e) for e in layers}
    for i, e in enumerate(s.events):
        if e["event"] == "chunk":
            assert position[(e["layer"], "started")] < i < position[(e["layer"], "done")]
    answers = {k: {e["model"]: e["full_content"] for e in finals(s, layer=k)}
               for k in (1, 2, 3)}
    assert all(len(answers[k]) == 3 for k in answers)
    for model in CANDIDATES:
        calls = [json.dumps(b) for b in requests_to(mock, model)]
        assert len(calls) == 3
        assert not any(a in calls[0] for a in answers[1].values())
        for k in (2, 3):
            # The mock records the newest call last: call k is layer k.
            assert all(a in calls[k - 1] for a in answers[k - 1].values()), (model, k)
    (synth_prompt,) = [json.dumps(b) for b in requests_to(mock, "gpt-5.2")]
    assert all(a in synth_prompt for a in answers[3].values())
    assert [a["layer"] for a in s.final["answers"]] == [1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_self_moa_samples_differ_in_temperature_and_prompt(api: httpx.Client,
                                                           mock: httpx.Client) -> None:
    fast(mock)
    s = stream_post(api, "/api/v1/blend", {"models": ["deepseek-v3.2"], "strategy": "self_moa",
                                           "samples": 4, "temperature": 0.1, "messages": MSG})
    final = s.final
    assert final["status"] == "succeeded", final
    samples = finals(s, role="candidate")
    assert sorted(e["sample"] for e in samples) == [1, 2, 3, 4]
    calls = requests_to(mock, "deepseek-v3.2")
    assert len(calls) == 5  # four samples, then the same model aggregates
    sample_calls, aggregate = calls[:4], calls[4]
    assert sorted(c["temperature"] for c in sample_calls) == [0.3, 0.6, 0.9, 1.2]
    assert len({c["messages"][0]["content"] for c in sample_calls}) == 4
    assert len({e["full_content"] for e in samples}) == 4
    assert aggregate["temperature"] == 0.1
    assert all(e["full_content"] in json.dumps(aggregate) for e in samples)
    assert final["model"] == "deepseek-v3.2" and final["strategy"] == "self_moa"
    assert sorted(a["sample"] for a in final["answers"]) == [1, 2, 3, 4]


def test_chain_folds_the_answers_in_one_after_another(api: httpx.Client,
                                                      mock: httpx.Client) -> None:
    fast(mock)
    s = stream_post(api, "/api/v1/blend", {"models": CANDIDATES, "strategy": "chain",
                                           "messages": MSG})
    final = s.final
    assert final["status"] == "succeeded", final
    candidates = {e["model"]: e["full_content"] for e in finals(s, role="candidate")}
    steps = finals(s, role="synthesizer")
    assert [e["step"] for e in steps] == [1, 2]
    first, second = (json.dumps(b) for b in requests_to(mock, "gpt-5.2"))
    assert "step 1 of 2" in first and "step 2 of 2" in second
    # Step 1: answer 1 folded with answer 2; step 2: step 1's result folded with answer 3.
    assert candidates[CANDIDATES[0]] in first and candidates[CANDIDATES[1]] in first
    assert steps[0]["full_content"] in second and candidates[CANDIDATES[2]] in second
    assert candidates[CANDIDATES[0]] not in second
    # The chain's steps run in order: every chunk of step 1 before any of step 2.
    index = [i for i, e in enumerate(s.events) if e.get("role") == "synthesizer"
             and e["event"] == "chunk"]
    step_of = [s.events[i]["step"] for i in index]
    assert step_of == sorted(step_of)
    assert final["full_content"] == steps[1]["full_content"]
    assert [a.get("step") for a in final["answers"]] == [None, None, None, 1]


def test_a_failing_candidate_does_not_sink_the_blend(api: httpx.Client,
                                                     mock: httpx.Client) -> None:
    fast(mock)
    mock.post("/_mock/config", json={"model": "gemini-3-flash",
                                     "fault": {"kind": "status", "status": 500}})
    s = stream_post(api, "/api/v1/blend", {"models": CANDIDATES, "strategy": "best_of",
                                           "messages": MSG})
    errors = [e for e in s.events if e["event"] == "error" and not e.get("final")]
    assert [(e["model"], e["role"], e["layer"]) for e in errors] == [
        ("gemini-3-flash", "candidate", 1)]
    done = [e for e in s.events if e["event"] == "layer" and e["status"] == "done"]
    assert (done[0]["answered"], done[0]["failed"]) == (2, 1)
    final = s.final
    assert final["status"] == "succeeded" and final["full_content"]
    (prompt,) = [json.dumps(b) for b in requests_to(mock, "gpt-5.2")]
    assert prompt.count("<answer n=") == 2
    failed = next(a for a in final["answers"] if a["model"] == "gemini-3-flash")
    assert failed["error"]["code"] == "upstream_server_error"


def test_every_candidate_failing_is_a_502_without_synthesis(api: httpx.Client,
                                                            mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "*", "fault": {"kind": "status", "status": 500}})
    r = api.post("/api/v1/blend", json={"models": CANDIDATES[:2], "messages": MSG})
    assert r.status_code == 502, r.text
    assert r.json()["error"]["message"] == "every candidate of layer 1 failed"
    assert requests_to(mock, "gpt-5.2") == []


def test_a_failing_synthesizer_is_a_502_with_the_answers(api: httpx.Client,
                                                         mock: httpx.Client) -> None:
    fast(mock)
    mock.post("/_mock/config", json={"model": "claude-sonnet-4-5",
                                     "fault": {"kind": "status", "status": 500}})
    r = api.post("/api/v1/blend", json={"models": CANDIDATES[:2], "strategy": "council",
                                        "synthesizer": "claude-sonnet-4.5", "messages": MSG})
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["error"]["message"] == "the synthesizer failed"
    assert len(body["answers"]) == 3 and body["answers"][2]["role"] == "synthesizer"
    # Only the tokens produced were paid for: no base fee for a failed job.
    assert 0 < body["credits_charged"] < 1


@pytest.mark.parametrize(("body", "param"), [
    ({"models": ["gpt-5-mini"]}, "models"),
    ({"models": ["gpt-5-mini"] * 2}, "models"),
    ({"models": [*CANDIDATES, "gpt-5.2", "gemini-3-pro", "deepseek-v3.2", "llama-3.3-70b"]},
     "models"),
    ({"models": CANDIDATES, "layers": 2}, "layers"),
    ({"models": CANDIDATES, "strategy": "moa", "layers": 4}, "layers"),
    ({"models": CANDIDATES, "strategy": "moa", "samples": 3}, "samples"),
    ({"models": ["gpt-5-mini"], "strategy": "self_moa", "samples": 9}, "samples"),
    ({"models": ["gpt-5-mini"], "strategy": "self_moa", "samples": 1}, "samples"),
    ({"models": CANDIDATES[:2], "strategy": "self_moa"}, "models"),
    ({"models": CANDIDATES, "strategy": "vote"}, "strategy"),
    ({"models": CANDIDATES, "synthesizer": "nope"}, "models"),
])
def test_bad_blend_bodies_are_400_and_change_nothing(stack: Stack, body: dict[str, Any],
                                                     param: str) -> None:
    account = f"acct-{uuid.uuid4().hex[:8]}"
    key = stack.create_key(account=account, credits=100)
    before = _wallet(stack, account)
    r = httpx.post(f"{stack.url}/api/v1/blend", json={**body, "messages": MSG},
                   headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert _wallet(stack, account) == before
