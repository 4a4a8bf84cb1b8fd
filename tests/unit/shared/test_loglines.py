"""Log records through an escaping handler stay whole lines, whatever a caller put in
their arguments or in an exception's message; tracebacks keep their usual shape."""

from __future__ import annotations

import io
import logging
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.logs import APP_FORMAT, DATE_FORMAT, install
from shared.loglines import EscapeCallerText, escape, exception_text

FORGED = "[2026-01-01 00:00:00 +0000] [1] [CRITICAL] forged"


@pytest.fixture
def file_logger(tmp_path: Path) -> Iterator[tuple[logging.Logger, Path]]:
    path = tmp_path / "app.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(APP_FORMAT, DATE_FORMAT))
    handler.addFilter(EscapeCallerText())
    logger = logging.getLogger(f"chorus-test-{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(handler)
    yield logger, path
    logger.removeHandler(handler)
    handler.close()


@pytest.mark.parametrize(("text", "escaped"), [
    ("plain text, 'quotes' \"and\" \\ backslash é€😀", None),
    ("a\nb\rc\td", "a\\nb\\rc\\td"),
    ("\x00\x1b[31m\x7f", "\\x00\\x1b[31m\\x7f"),
    ("\x85\u2028\u2029", "\\x85\\u2028\\u2029"),
])
def test_escape(text: str, escaped: str | None) -> None:
    assert escape(text) == (text if escaped is None else escaped)


def test_arguments_cannot_start_a_line(file_logger: tuple[logging.Logger, Path]) -> None:
    logger, path = file_logger
    logger.warning("redis error on %s: %s", f"/x\r\n{FORGED}", ValueError(f"a\n{FORGED}"))
    logger.warning(f"message itself\n{FORGED}")
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("[") and "[WARNING]" in line for line in lines)
    assert lines[0].endswith(f"/x\\r\\n{FORGED}: a\\n{FORGED}")


def test_exception_messages_cannot_start_a_line(
    file_logger: tuple[logging.Logger, Path]
) -> None:
    logger, path = file_logger
    try:
        try:
            raise KeyError(f"k\r\n{FORGED}")
        except KeyError as inner:
            raise ValueError(f"bad\n{FORGED}") from inner
    except ValueError:
        logger.exception("unhandled error on %s", f"/y\n{FORGED}")
    text = path.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert not [line for line in lines if "forged" in line and not (
        line.startswith(("[", "KeyError: ", "ValueError: ")))]
    assert f"ValueError: bad\\n{FORGED}" in lines
    assert "The above exception was the direct cause of the following exception:" in lines


def _raise_chained() -> BaseException:
    try:
        try:
            {}["missing"]
        except KeyError:
            raise RuntimeError("while handling") from None
    except RuntimeError:
        try:
            raise OSError("context") from ValueError("cause")
        except OSError as exc:
            return exc
    raise AssertionError


@pytest.mark.parametrize("exc", [_raise_chained(), ValueError("never raised")])
def test_a_traceback_without_control_characters_is_the_standard_one(
    exc: BaseException
) -> None:
    assert exception_text(exc) == "".join(traceback.format_exception(exc)).rstrip("\n")


def test_install_guards_the_root_handlers_once(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    install()
    install()
    assert len(root.handlers) == 1
    assert [type(f) for f in root.handlers[0].filters] == [EscapeCallerText]


def test_a_traceback_an_unguarded_handler_rendered_first_is_escaped_again(
    file_logger: tuple[logging.Logger, Path]
) -> None:
    logger, path = file_logger
    plain = logging.StreamHandler(io.StringIO())
    plain.setFormatter(logging.Formatter(APP_FORMAT))
    logger.handlers.insert(0, plain)
    try:
        raise ValueError(f"bad\n{FORGED}")
    except ValueError:
        logger.exception("failed")
    assert f"\n{FORGED}" in plain.stream.getvalue()
    assert f"ValueError: bad\\n{FORGED}" in path.read_text().splitlines()
