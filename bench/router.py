"""How long the ``auto`` router takes to decide, per kind of request.

Times ``Router.route`` (measuring the messages and running the rules of the shipped
``[routing]`` table) per call, over a corpus of requests from a greeting to a
400 000-character document; every request is decided many times, interleaved, and the
expected rule is checked so the timing is of a real decision. Two clocks per call: wall
time (``perf_counter_ns``; includes being preempted on a busy machine) and the thread's
CPU time (``thread_time_ns``; the work itself). The load average is printed with them.

    .venv/bin/python -m bench.router [--rounds 20000]
"""

from __future__ import annotations

import argparse
import os
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
    wall: dict[str, list[int]] = {name: [] for name in CORPUS}
    cpu: dict[str, list[int]] = {name: [] for name in CORPUS}
    wall_clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, (messages, _rule) in CORPUS.items():
            w0 = wall_clock()
            c0 = cpu_clock()
            router.route(messages)
            c1 = cpu_clock()
            w1 = wall_clock()
            wall[name].append(w1 - w0)
            cpu[name].append(c1 - c0)
    print(f"{len(router.rules)} rules, scan_chars {router.scan_chars}, {args.rounds} decisions "
          f"per request kind, interleaved; load average {load:.2f} -> "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n")
    print("| request | rule | wall p50 µs | wall p99 µs | CPU p50 µs | CPU p99 µs |")
    print("|---|---|---|---|---|---|")
    rows = [(name, CORPUS[name][1], wall[name], cpu[name]) for name in CORPUS]
    rows.append(("**all**", "", [t for ts in wall.values() for t in ts],
                 [t for ts in cpu.values() for t in ts]))
    for name, rule, w, c in rows:
        print(f"| {name} | {rule} | {statistics.median(w) / 1000:.1f} | {pct(w, 0.99):.1f} "
              f"| {statistics.median(c) / 1000:.1f} | {pct(c, 0.99):.1f} |")


if __name__ == "__main__":
    main()
