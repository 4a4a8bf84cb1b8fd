"""Log lines a caller cannot break or forge: what they sent is escaped, never written raw."""

from __future__ import annotations

import logging
import re
import traceback

# C0 and C1 controls, DEL and the Unicode line and paragraph separators: everything a
# terminal, a log shipper or ``str.splitlines`` could take for the end of a line or a
# command. Printable text, quotes and backslashes stay as they are.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100
                               else f"\\u{ord(char):04x}")


def escape(text: str) -> str:
    """``text`` on one line: each control character as its escape (``\\n``, ``\\x00``)."""
    if CONTROL.search(text) is None:
        return text
    return CONTROL.sub(_escape_char, text)


def exception_text(exc: BaseException) -> str:
    """The traceback as ``logging`` writes it, each exception's message on one line.

    Frames come from source files; only the messages can carry what a caller sent.
    """
    blocks: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        message = "".join(traceback.format_exception_only(type(current), current))
        block = [escape(message.rstrip("\n")) + "\n"]
        if current.__traceback__ is not None:
            block[:0] = ["Traceback (most recent call last):\n",
                         *traceback.format_tb(current.__traceback__)]
        blocks[:0] = ["".join(block) + link]
        if current.__cause__ is not None:
            current, link = current.__cause__, (
                "\nThe above exception was the direct cause of the following exception:\n\n")
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, (
                "\nDuring handling of the above exception, another exception occurred:\n\n")
        else:
            current = None
    return "".join(blocks).rstrip("\n")


class EscapeCallerText(logging.Filter):
    """On a handler: every record it writes has its message and exception messages
    escaped, whatever formatter the handler has. Like ``QueueHandler.prepare``, it folds
    the arguments into the message and renders the traceback, once per record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "chorus_escaped", False):
            return True
        try:
            message = record.getMessage()
        except Exception:
            # A message its arguments do not fit: the handler reports it as it would.
            return True
        record.msg = escape(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Even over a traceback an unguarded handler already rendered as it came.
            record.exc_text = exception_text(record.exc_info[1])
        record.chorus_escaped = True
        return True


def guard(handler: logging.Handler) -> None:
    if not any(isinstance(f, EscapeCallerText) for f in handler.filters):
        handler.addFilter(EscapeCallerText())
