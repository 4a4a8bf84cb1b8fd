"""The supervisor of ``chorus up`` on real child processes: a crashing process is restarted
with growing delays up to a cap while the others run on; a stop gives each process its
drain time, then kills what is left; the Procfile and the commands agree."""

from __future__ import annotations

import io
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.stack import commands, read_procfile
from shared.supervise import Supervisor

PY = sys.executable
STEADY = [PY, "-c", "import time; print('steady up', flush=True); time.sleep(600)"]


class Output(io.StringIO):
    """The supervisor's output, readable while it is written."""

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


Runner = Callable[..., tuple[Supervisor, Output, dict[str, int]]]


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.fixture
def run() -> Iterator[Runner]:
    started: list[tuple[Supervisor, threading.Thread]] = []

    def go(cmds: dict[str, list[str]], **kw: float) -> tuple[Supervisor, Output, dict[str, int]]:
        out = Output()
        sup = Supervisor(cmds, env={"PATH": "/usr/bin:/bin"}, cwd="/", out=out, **kw)
        result: dict[str, int] = {}
        thread = threading.Thread(target=lambda: result.update(code=sup.run(poll_s=0.02)),
                                  daemon=True)
        thread.start()
        started.append((sup, thread))
        return sup, out, result

    yield go
    for sup, thread in started:
        sup.kill_now.set()
        sup.stop.set()
        thread.join(10)


def test_a_crashing_process_is_restarted_with_backoff_up_to_a_cap(run: Runner) -> None:
    crash = [PY, "-c", "import sys; sys.exit(3)"]
    sup, out, result = run({"crash": crash, "steady": STEADY},
                           drain_s=2, backoff_s=0.1, backoff_cap_s=0.4, stable_s=30)
    wait_for(lambda: sum("crash" in ln and "started" in ln for ln in out.lines()) >= 6, 15,
             "the crashing process was not restarted")
    delays = [float(m.group(1)) for ln in out.lines()
              if (m := re.search(r"crash +\| exited with code 3 .* restarting in ([\d.]+) s", ln))]
    assert delays[:5] == [0.1, 0.2, 0.4, 0.4, 0.4]
    # The other process ran on, untouched.
    assert sum("steady" in ln and "started" in ln for ln in out.lines()) == 1
    assert any(ln.endswith("steady | steady up") for ln in out.lines())
    steady = next(c for c in sup.children if c.name == "steady")
    assert steady.proc is not None and steady.proc.poll() is None
    sup.stop.set()
    wait_for(lambda: "code" in result, 10, "the supervisor did not stop")
    assert result["code"] == 0
    assert steady.proc.returncode == -signal.SIGTERM


def test_a_stop_waits_the_drain_time_then_kills(run: Runner) -> None:
    stubborn = [PY, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                " print('ignoring SIGTERM', flush=True); time.sleep(600)"]
    sup, out, result = run({"stubborn": stubborn, "steady": STEADY},
                           drain_s=1.0, kill_margin_s=0.5)
    wait_for(lambda: any("ignoring SIGTERM" in ln for ln in out.lines())
             and any("steady up" in ln for ln in out.lines()), 10, "processes not up")
    asked = time.monotonic()
    sup.stop.set()
    wait_for(lambda: "code" in result, 10, "the supervisor did not stop")
    took = time.monotonic() - asked
    assert 1.4 < took < 3, took
    by_name = {c.name: c.proc for c in sup.children}
    assert by_name["steady"] is not None and by_name["steady"].returncode == -signal.SIGTERM
    assert by_name["stubborn"] is not None and by_name["stubborn"].returncode == -signal.SIGKILL
    assert any("stubborn" in ln and "killed" in ln for ln in out.lines())


def test_the_procfile_runs_the_same_commands() -> None:
    """``chorus up`` builds its commands in code (an installed package has no Procfile);
    the Procfile, for other process managers, must say the same."""

    def module_form(argv: list[str]) -> list[str]:
        # "<python> -m gunicorn …" and "gunicorn …" run the same thing.
        return argv[2:] if argv[1:2] == ["-m"] else argv

    built = {name: module_form(argv) for name, argv in commands({}).items()}
    procfile = read_procfile(Path(__file__).resolve().parents[3] / "Procfile")
    # The shell's ${VAR:-default}, with nothing set.
    listed = {name: module_form(shlex.split(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", cmd)))
              for name, cmd in procfile.items()}
    assert listed == built
