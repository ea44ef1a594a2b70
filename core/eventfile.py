"""JSON-lines files of events, read exactly as the worker reads message bodies.

A line is what lies between two ``b"\\n"`` bytes and nothing else: U+2028, U+2029,
U+0085, a lone ``\\r`` or a form feed inside a JSON string is part of that string,
never a line break (``str.splitlines()`` would split there and turn one valid event
into two bad halves). Each line goes through :func:`core.events.parse_event`, the
worker's own parser, as the bytes a Pub/Sub message body would carry, so a file is
accepted exactly when every one of its events would be.

Lines made only of JSON whitespace (space, tab, ``\\r``) are skipped. A ``\\r`` before
the ``\\n`` (a file written with CRLF line ends) is therefore tolerated: it is JSON
whitespace after the object, which the worker accepts too, and the event is
re-serialised on publish, so it never reaches a message body.

The whole file is checked before anything is returned: the first line that is not
UTF-8 or not a valid event raises :class:`~core.events.EventError` naming the
file, the line and (for bad bytes) the byte offset in the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .events import Event, EventError, parse_event

JSON_WHITESPACE = b" \t\r"


def split_lines(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """``(line number from 1, byte offset of the line in data, line)`` for every
    line that is not blank; a line never includes its ``b"\\n"``."""
    offset = 0
    for number, line in enumerate(data.split(b"\n"), 1):
        if line.strip(JSON_WHITESPACE):
            yield number, offset, line
        offset += len(line) + 1


def parse_lines(data: bytes, source: str) -> list[Event]:
    """Every event of a JSON-lines document, or :class:`EventError` for the first bad
    line (``source:line: reason``); nothing is returned unless every line is valid."""
    events = []
    for number, offset, line in split_lines(data):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = line[exc.start : exc.end].hex(" ")
            raise EventError(
                f"{source}:{number}: not UTF-8: byte(s) {bad} at byte offset "
                f"{offset + exc.start} of the file (byte {exc.start + 1} of the line)"
            ) from None
        try:
            events.append(parse_event(line))
        except EventError as exc:
            raise EventError(f"{source}:{number}: {exc}") from None
    return events


def read_events(path: Path) -> list[Event]:
    """The events of a JSON-lines file (see :func:`parse_lines`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EventError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_lines(data, str(path))
