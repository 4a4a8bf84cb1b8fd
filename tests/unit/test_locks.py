"""The lock files say what every machine installs: they must stay in step with pyproject.toml.

Offline and quick: each requirement that pyproject.toml declares is pinned in its lock at
a version the requirement accepts, and the runtime lock pins what the dev lock pins, so the
tests run on the versions a deployment gets. A change of pyproject.toml without
``bash deploy/lock.sh`` fails here.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"

# "name==version", optionally "; marker", optionally a line continuation.
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)"
                  r"\s*(?:;\s*(?P<marker>[^\\]*?))?\s*\\?\s*$")

Pins = dict[str, list[tuple[Version, Marker | None]]]


def read_pins(text: str) -> Pins:
    """Every ``name==version`` of a requirements file, by canonical name (a universal
    lock may pin one name twice, under exclusive markers)."""
    pins: Pins = {}
    for line in text.splitlines():
        found = _PIN.match(line)
        if found is None:
            continue
        marker = Marker(found["marker"]) if found["marker"] else None
        pins.setdefault(canonicalize_name(found["name"]), []).append(
            (Version(found["version"]), marker))
    return pins


def out_of_step(requirements: Iterable[str], pins: Pins) -> list[str]:
    """What the lock gets wrong about each requirement: missing, or pinned at a version
    outside the requirement's range."""
    problems = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name} is not pinned")
            continue
        for version, _ in pins[name]:
            if not req.specifier.contains(version, prereleases=True):
                problems.append(f"{req.name}=={version} is outside {req.specifier}")
    return problems


def project() -> dict[str, list[str]]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        table = tomllib.load(f)["project"]
    return {"runtime": table["dependencies"], "dev": table["optional-dependencies"]["dev"]}


def test_the_runtime_lock_pins_every_runtime_requirement_within_its_range() -> None:
    assert out_of_step(project()["runtime"], read_pins(RUNTIME_LOCK.read_text())) == []


def test_the_dev_lock_pins_every_requirement_within_its_range() -> None:
    declared = project()
    assert out_of_step(declared["runtime"] + declared["dev"],
                       read_pins(DEV_LOCK.read_text())) == []


def test_the_dev_lock_has_the_runtime_lock_versions() -> None:
    runtime, dev = read_pins(RUNTIME_LOCK.read_text()), read_pins(DEV_LOCK.read_text())
    differ = {name: (pins, dev.get(name)) for name, pins in runtime.items()
              if sorted(map(str, pins)) != sorted(map(str, dev.get(name, [])))}
    assert differ == {}


def test_every_pin_is_hashed() -> None:
    """pip installs a lock in hash-checking mode only if every package in it has a hash."""
    for lock in (RUNTIME_LOCK, DEV_LOCK):
        entries = re.split(r"\n(?=\S)", lock.read_text())
        unhashed = [e.split()[0] for e in entries
                    if _PIN.match(e.splitlines()[0]) and "--hash=sha256:" not in e]
        assert unhashed == [], lock.name


@pytest.mark.parametrize(("requirement", "lock", "problem"), [
    ("redis>=8.0,<9", "redis==7.4.0 \\\n", "redis==7.4.0 is outside <9,>=8.0"),
    ("redis>=8.0,<9", "redis==9.0.0 \\\n", "redis==9.0.0 is outside <9,>=8.0"),
    ("httpcore>=1.0,<2", "httpx==0.28.1\n", "httpcore is not pinned"),
    ("celery[redis]>=5.7,<6", "Celery==5.6.3 ; python_version >= '3.11'\n",
     "celery==5.6.3 is outside <6,>=5.7"),
])
def test_a_lock_out_of_step_is_named(requirement: str, lock: str, problem: str) -> None:
    assert out_of_step([requirement], read_pins(lock)) == [problem]


def test_a_pin_in_range_under_its_marker_passes() -> None:
    lock = ("Flask_Sock==0.7.0 \\\n    --hash=sha256:00\n"
            "async-timeout==5.0.1 ; python_full_version < '3.11.3' \\\n")
    assert out_of_step(["flask-sock>=0.7,<1", "async-timeout>=4"], read_pins(lock)) == []
