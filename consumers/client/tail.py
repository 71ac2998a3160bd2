"""The end of a command's stderr, kept while it passes through, and the failure text made of
it: what a failed run's Message (and so the failure mail) shows.

A Python traceback is kept whole, chained exceptions included, as long as it fits the bound;
otherwise its first and last lines (where the call and the exception are) with a line saying
how much was cut. Anything else: its last lines. Progress bars rewrite their line with CR;
each line is taken as the terminal would show it (the text after its last CR).

Pure, apart from the lock: `StderrTail.add` runs on the relay thread, `text` on the main one.
"""

from __future__ import annotations

import threading

TAIL_BYTES = 64 * 1024  # stderr kept: a traceback longer than this loses its start
MESSAGE_CHARS = 8000  # a failed run's Message at most (ingest refuses over 65,536)
LAST_LINES = 20  # without a traceback

TRACEBACK = "Traceback (most recent call last):"
_CHAINED = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)


class StderrTail:
    """The last `size` bytes written to it; `text()` drops a first line cut in the middle."""

    def __init__(self, size: int = TAIL_BYTES) -> None:
        self._size = size
        self._data = bytearray()
        self._wrapped = False
        self._lock = threading.Lock()

    def add(self, chunk: bytes) -> None:
        with self._lock:
            self._data += chunk
            extra = len(self._data) - self._size
            if extra > 0:
                del self._data[:extra]
                self._wrapped = True

    def text(self) -> str:
        with self._lock:
            data, wrapped = bytes(self._data), self._wrapped
        text = data.decode("utf-8", "replace")
        if wrapped:
            text = text.partition("\n")[2]
        return text


def screen_lines(text: str) -> list[str]:
    """Lines as a terminal shows them: CRLF ends a line, a lone CR rewrites it."""
    return [line.rstrip("\r").rpartition("\r")[2] for line in text.split("\n")]


def _traceback_start(lines: list[str]) -> int | None:
    """Where the last traceback (with the ones chained before it) begins."""
    starts = [i for i, line in enumerate(lines) if TRACEBACK in line]
    if not starts:
        return None
    start = starts[-1]
    while True:
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        if before < 0 or lines[before].strip() not in _CHAINED:
            return start
        earlier = [i for i in starts if i < before]
        if not earlier:
            return start
        start = earlier[-1]


def _fit(lines: list[str], limit: int) -> str:
    """The lines, or their head and tail around a line saying how many were cut."""
    text = "\n".join(lines)
    if len(text) <= limit:
        return text
    head: list[str] = []
    size = 0
    for line in lines:
        if size + len(line) + 1 > limit // 4:
            break
        head.append(line)
        size += len(line) + 1
    tail: list[str] = []
    room = limit - size - 40  # the marker line
    for line in reversed(lines[len(head) :]):
        if len(line) + 1 > room:
            break
        tail.append(line)
        room -= len(line) + 1
    tail.reverse()
    cut = len(lines) - len(head) - len(tail)
    if not tail:  # one enormous last line: its end is what matters
        return f"[... {cut} lines cut ...]\n" + lines[-1][-(limit - size - 40) :]
    return "\n".join([*head, f"[... {cut} lines cut ...]", *tail])


def failure_text(text: str, *, limit: int = MESSAGE_CHARS, last_lines: int = LAST_LINES) -> str:
    """The part of a failed command's stderr worth mailing, at most `limit` characters."""
    lines = screen_lines(text)
    while lines and not lines[-1].strip():
        lines.pop()
    start = _traceback_start(lines)
    kept = lines[start:] if start is not None else lines[-last_lines:]
    while kept and not kept[0].strip():
        kept.pop(0)
    return _fit(kept, limit)


def exception_name(text: str) -> str | None:
    """`ValueError` from a traceback's last line `ValueError: bad shape`, else None."""
    lines = [line for line in screen_lines(text) if line.strip()]
    start = _traceback_start(lines)
    if start is None:
        return None
    for line in reversed(lines[start:]):
        if line[:1].isspace():
            continue
        name = line.partition(":")[0].strip()
        if name and all(part.isidentifier() for part in name.split(".")):
            return name
        return None
    return None
