"""Keep a set of processes running in the foreground: restart the ones that crash, with
backoff, and stop them all with their drain time when asked."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

# A crashed process is restarted after 1 s, then 2, 4 … up to 30 s while it keeps
# crashing; one that ran for STABLE_S before it died starts over at 1 s.
BACKOFF_S = 1.0
BACKOFF_CAP_S = 30.0
STABLE_S = 30.0
# Past the drain time, what is still running is killed after this much more: a Celery
# worker's own warm shutdown takes 3 to 6 s on a busy machine, even idle. Drain time
# plus this margin is what ``deploy/`` gives a stop (20 + 10 = Kubernetes' default 30 s).
KILL_MARGIN_S = 10.0


def _die_with_parent() -> None:
    """Runs in the child: a supervisor killed outright must not leave its processes."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """One named process, and the runs of it so far."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    crashes: int = 0  # in a row, each within STABLE_S of its start
    restart_at: float | None = None
    readers: list[threading.Thread] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        commands: dict[str, list[str]],
        *,
        env: dict[str, str],
        cwd: str,
        drain_s: float,
        out: IO[str] | None = None,
        backoff_s: float = BACKOFF_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        stable_s: float = STABLE_S,
        kill_margin_s: float = KILL_MARGIN_S,
    ) -> None:
        self.children = [Child(name, argv) for name, argv in commands.items()]
        self.env, self.cwd, self.drain_s = env, cwd, drain_s
        self.out = out or sys.stdout
        self.backoff_s, self.backoff_cap_s, self.stable_s = backoff_s, backoff_cap_s, stable_s
        self.kill_margin_s = kill_margin_s
        self.stop = threading.Event()
        self.kill_now = threading.Event()
        self._write = threading.Lock()
        self._width = max((len(c.name) for c in self.children), default=0)

    def say(self, name: str, line: str) -> None:
        """One line of a process's (or about it), prefixed with the time and its name."""
        self.write(f"{time.strftime('%H:%M:%S')} {name.ljust(self._width)} | {line}\n")

    def write(self, text: str) -> None:
        """Whole lines in one write: other threads write lines of their own."""
        with self._write:
            self.out.write(text)
            self.out.flush()

    def run(self, poll_s: float = 0.1) -> int:
        """Run until ``stop`` is set, then stop every process; 0 once all are down."""
        for child in self.children:
            self._start(child)
        while not self.stop.wait(poll_s):
            now = time.monotonic()
            for child in self.children:
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        self._start(child)
                elif child.proc is not None and child.proc.poll() is not None:
                    self._crashed(child, now)
        return self._stop_all()

    def _start(self, child: Child) -> None:
        child.restart_at = None
        child.started = time.monotonic()
        # A session of its own: a terminal's Ctrl-C reaches the supervisor alone, which
        # then stops every process with its drain.
        proc = subprocess.Popen(
            child.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child.proc = proc
        self.say(child.name, f"started with pid {proc.pid}")
        reader = threading.Thread(target=self._relay_output, args=(child.name, proc),
                                  daemon=True)
        reader.start()
        child.readers = [r for r in child.readers if r.is_alive()] + [reader]

    def _relay_output(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.say(name, raw.decode(errors="replace").rstrip("\n"))

    def _crashed(self, child: Child, now: float) -> None:
        assert child.proc is not None
        code = child.proc.returncode
        ran = now - child.started
        child.crashes = child.crashes + 1 if ran < self.stable_s else 1
        delay = min(self.backoff_cap_s, self.backoff_s * 2 ** (child.crashes - 1))
        how = f"signal {-code}" if code < 0 else f"code {code}"
        self.say(child.name, f"exited with {how} after {ran:.1f} s; restarting in "
                             f"{delay:.1f} s")
        child.restart_at = now + delay
        self._signal(child, signal.SIGKILL, group=True)  # what it left behind, if anything

    def _stop_all(self) -> int:
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None
                   and c.restart_at is None]
        for child in running:
            self.say(child.name, f"stopping (SIGTERM; {self.drain_s:.0f} s to drain)")
            self._signal(child, signal.SIGTERM, group=False)
        deadline = time.monotonic() + self.drain_s + self.kill_margin_s
        for child in running:
            assert child.proc is not None
            while child.proc.poll() is None and time.monotonic() < deadline \
                    and not self.kill_now.is_set():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(0.1)
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                self._signal(child, signal.SIGKILL, group=True)
                child.proc.wait()
                self.say(child.name, "killed: it did not stop within the drain time")
            else:
                # Whatever its exit left behind in its group (a dead master's workers).
                self._signal(child, signal.SIGKILL, group=True)
        for child in self.children:
            for reader in child.readers:
                reader.join(1)
        return 0

    @staticmethod
    def _signal(child: Child, sig: int, *, group: bool) -> None:
        if child.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(child.proc.pid, sig)
            elif child.proc.poll() is None:
                child.proc.send_signal(sig)


def stop_on_signals(supervisor: Supervisor, signals: Sequence[int] = (signal.SIGINT,
                                                                         signal.SIGTERM)) -> None:
    """The first signal stops every process with its drain; a second kills them now."""

    def handle(_sig: int, _frame: object) -> None:
        if supervisor.stop.is_set():
            supervisor.kill_now.set()
        supervisor.stop.set()

    for sig in signals:
        signal.signal(sig, handle)
