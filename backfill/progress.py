"""Progress for long copies and checks: a bar on a terminal, log lines otherwise.

On a TTY a rich bar shows rows done, rows/s and the ETA; in CI or a log file the same
numbers go out as one plain line every ``interval_s`` seconds, so a job's log shows
that it is alive without drowning in carriage returns. Safe to call from several
worker threads.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any, TextIO

import click


def _eta(remaining: float, rate: float) -> str:
    if rate <= 0 or remaining <= 0:
        return "-"
    return str(timedelta(seconds=int(remaining / rate)))


class Progress:
    """Counts rows against an optional total; renders as a bar or periodic lines."""

    def __init__(
        self,
        title: str,
        total: int | None = None,
        done: int = 0,
        *,
        tty: bool | None = None,
        interval_s: float = 10.0,
        emit: Callable[[str], None] | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.title, self.total, self.done = title, total, done
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval_s
        self.emit = emit or (lambda line: click.echo(line, err=True))
        self.note = ""
        self._start = time.monotonic()
        self._session = 0
        self._last_line = self._start
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task: Any = None
        if self.tty:
            self._open_bar()

    def _open_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as Bar,
        )

        self._bar = Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=Console(file=self.stream),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(
            self.title, total=self.total, completed=self.done, rate="0", note=""
        )

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self._start
        return self._session / elapsed if elapsed > 0 else 0.0

    def advance(self, rows: int) -> None:
        with self._lock:
            self.done += rows
            self._session += rows
            self._render()

    def set_note(self, note: str) -> None:
        """A short status shown next to the numbers, e.g. ``paused``."""
        with self._lock:
            if note != self.note:
                self.note = note
                self._render(force=True)

    def line(self) -> str:
        total = f"/{self.total:,}" if self.total else ""
        pct = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
        remaining = (self.total - self.done) if self.total else 0
        note = f" [{self.note}]" if self.note else ""
        return (
            f"{self.title}: {self.done:,}{total} rows{pct}, {self.rate:,.0f} rows/s, "
            f"ETA {_eta(remaining, self.rate)}{note}"
        )

    def _render(self, force: bool = False) -> None:
        if self._bar is not None:
            self._bar.update(
                self._task, completed=self.done, rate=f"{self.rate:,.0f}", note=self.note
            )
            return
        now = time.monotonic()
        if force or now - self._last_line >= self.interval:
            self._last_line = now
            self.emit(self.line())

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done, rate=f"{self.rate:,.0f}")
                self._bar.stop()
                self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
