"""How long the ``auto`` router takes to decide, per kind of request.

Times ``Router.route`` (measuring the messages and running the rules of the shipped
``[routing]`` table) once per call with ``perf_counter_ns``, over a corpus of requests
from a greeting to a 400 000-character document; every request is decided many times,
interleaved, and the expected rule is checked so the timing is of a real decision.

    .venv/bin/python -m bench.router [--rounds 20000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from shared.registry import get_registry
from shared.router import get_router

Messages = list[dict[str, Any]]


def user(text: str) -> Messages:
    return [{"role": "user", "content": text}]


PLAIN = ("Summarise the main causes of the French Revolution, the role of the estates, "
         "the debt crisis and the bread prices, for a history class of teenagers. ")
CORPUS: dict[str, tuple[Messages, str]] = {
    "greeting": (user("hey there!"), "short"),
    "question": (user("Summarise the main causes of the French Revolution for a class."),
                 "default"),
    "code_fence": (user("Why does this fail?\n```python\nfor i in range(3):\n    print(i\n```"),
                   "code"),
    "code_words": (user("Can you refactor my TypeScript reducer so it is easier to test?"),
                   "code"),
    "math": (user("If 3x + 7 = 25 and y = 2x, what is y? Show the working."), "math"),
    "creative": (user("Write me a haiku about the first snow of the winter, please."),
                 "creative"),
    "cjk": (user("请帮我写一封给房东的邮件说明热水器坏了需要尽快维修谢谢。"), "cjk"),
    "plain_2k_chars": (user(PLAIN * 14), "default"),
    "doc_400k_chars": (user(PLAIN * 2700), "long_context"),
    "chat_30_turns": ([{"role": "user" if i % 2 == 0 else "assistant",
                        "content": "And what happened after that, in the next decade?"}
                       for i in range(30)], "long_conversation"),
}


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20000)
    args = ap.parse_args()
    router = get_router(get_registry())
    for name, (messages, rule) in CORPUS.items():
        got = router.route(messages).rule
        assert got == rule, f"{name}: expected rule {rule}, got {got}"
    timings: dict[str, list[int]] = {name: [] for name in CORPUS}
    clock = time.perf_counter_ns
    for _ in range(args.rounds):
        for name, (messages, _rule) in CORPUS.items():
            t0 = clock()
            router.route(messages)
            timings[name].append(clock() - t0)
    every = [t for ts in timings.values() for t in ts]
    print(f"{len(router.rules)} rules, scan_chars {router.scan_chars}, "
          f"{args.rounds} decisions per request kind, interleaved\n")
    print("| request | rule | p50 µs | p99 µs | max µs |")
    print("|---|---|---|---|---|")
    for name, ts in timings.items():
        print(f"| {name} | {CORPUS[name][1]} | {statistics.median(ts) / 1000:.1f} "
              f"| {pct(ts, 0.99):.1f} | {max(ts) / 1000:.1f} |")
    print(f"| **all** | | {statistics.median(every) / 1000:.1f} | {pct(every, 0.99):.1f} "
          f"| {max(every) / 1000:.1f} |")


if __name__ == "__main__":
    main()
