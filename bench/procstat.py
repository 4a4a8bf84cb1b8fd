"""CPU seconds and peak memory of a process tree, read from /proc (Linux)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _all_stats() -> Iterator[tuple[int, str, list[str]]]:
    """Every process: its pid, command name and the ``stat`` fields after the name."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, fields = stat.split("(", 1)[1].rsplit(")", 1)
        yield int(entry.name), name, fields.split()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for pid, _name, fields in _all_stats():
        tree.setdefault(int(fields[1]), []).append(pid)
    return tree


def tree_pids(root: int) -> list[int]:
    tree = _children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICK


def peak_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def cpu_by_command() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every process on the machine, with its command name."""
    return {pid: (name, (int(fields[11]) + int(fields[12])) / TICK)
            for pid, name, fields in _all_stats()}


def spent_by_group(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                   groups: dict[int, str]) -> dict[str, float]:
    """CPU seconds spent between two ``cpu_by_command`` readings, summed by group: the
    group ``groups`` names for a pid, else the command's own name."""
    out: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        spent = seconds - before.get(pid, (name, 0.0))[1]
        if spent > 0:
            group = groups.get(pid, name)
            out[group] = out.get(group, 0.0) + spent
    return out
