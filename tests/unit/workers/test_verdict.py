"""The judge's verdict: strict JSON, what gets repaired, what is refused, how ranks fall."""

from __future__ import annotations

import pytest

from workers.judge import VerdictError, parse_verdict, rank, shuffled

LABELS = ["A", "B", "C"]
GOOD = ('{"scores": [{"label": "A", "score": 7, "reason": "solid"}, '
        '{"label": "B", "score": 9.5, "reason": "best"}, '
        '{"label": "C", "score": 0, "reason": "wrong"}]}')


def test_strict_json_is_read_as_is() -> None:
    v = parse_verdict(GOOD, LABELS)
    assert v.scores == {"A": (7.0, "solid"), "B": (9.5, "best"), "C": (0.0, "wrong")}
    assert not v.repaired


@pytest.mark.parametrize("text", [
    f"Here is my verdict:\n```json\n{GOOD}\n```\nHope that helps.",
    GOOD.replace('"wrong"}]}', '"wrong"},]}'),  # trailing comma
    "Sure. " + GOOD.replace('"wrong"}]}', '"wrong"},],}') + " {not json}",
])
def test_json_wrapped_in_prose_or_with_trailing_commas_is_repaired(text: str) -> None:
    v = parse_verdict(text, LABELS)
    assert v.repaired
    assert v.scores["B"] == (9.5, "best")


def test_label_mapping_form_and_loose_labels_are_accepted() -> None:
    text = '{"Answer A": {"score": "6", "reason": "ok"}, "[B]": 8, "c": {"score": 3}}'
    v = parse_verdict(text, LABELS)
    assert v.scores == {"A": (6.0, "ok"), "B": (8.0, ""), "C": (3.0, "")}


def test_the_first_usable_object_wins_over_a_nested_or_stray_one() -> None:
    text = '{"note": "draft"} then ' + GOOD
    assert parse_verdict(text, LABELS).scores["A"] == (7.0, "solid")


def test_long_reasons_are_cut() -> None:
    text = GOOD.replace("solid", "x" * 2000)
    assert len(parse_verdict(text, LABELS).scores["A"][1]) == 500


@pytest.mark.parametrize(("text", "problem"), [
    ("A is the best, then B, then C.", "no JSON object"),
    ('{"scores": [{"label": "A", "score": 7}, {"label": "B", "score": 8}]}', "no score for C"),
    (GOOD.replace('"score": 7', '"score": 11'), "outside 0-10"),
    (GOOD.replace('"score": 7', '"score": -1'), "outside 0-10"),
    (GOOD.replace('"score": 7', '"score": "great"'), "not a number"),
    (GOOD.replace('"score": 7', '"score": true'), "not a number"),
    (GOOD.replace('"score": 7', '"score": NaN'), "outside 0-10"),
    ('{"scores": "A wins"}', "neither a list nor an object"),
    ('{"scores": [{"label": "D", "score": 5}]}', "no score for A, B, C"),
])
def test_unusable_verdicts_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(VerdictError, match=problem):
        parse_verdict(text, LABELS)


def test_ranks_follow_scores() -> None:
    out = rank(["m1", "m2", "m3"], {"m1": (4.0, "a"), "m2": (9.0, "b"), "m3": (6.5, "c")}, {})
    assert [(s["model"], s["rank"], s["score"]) for s in out] == [
        ("m2", 1, 9), ("m3", 2, 6.5), ("m1", 3, 4)]
    assert isinstance(out[0]["score"], int)


def test_ties_keep_the_request_order_whatever_order_the_judge_saw() -> None:
    scored = {"m3": (8.0, ""), "m1": (8.0, ""), "m2": (8.0, ""), "m4": (9.0, "")}
    out = rank(["m1", "m2", "m3", "m4"], scored, {})
    assert [(s["model"], s["rank"]) for s in out] == [("m4", 1), ("m1", 2), ("m2", 3),
                                                       ("m3", 4)]


def test_failed_contestants_rank_last_without_a_score() -> None:
    out = rank(["m1", "m2", "m3"], {"m2": (2.0, "weak")}, {"m3": "no answer (x)",
                                                          "m1": "no answer (y)"})
    assert [(s["model"], s["rank"], s["score"]) for s in out] == [
        ("m2", 1, 2), ("m1", 2, None), ("m3", 3, None)]
    assert out[1]["reason"] == "no answer (y)"


def test_shuffle_is_a_reproducible_permutation_per_job() -> None:
    models = ["a", "b", "c", "d"]
    assert shuffled(models, "job-1") == shuffled(models, "job-1")
    assert sorted(shuffled(models, "job-1")) == models
    orders = {tuple(shuffled(models, f"job-{i}")) for i in range(30)}
    assert len(orders) > 5
