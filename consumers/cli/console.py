"""What reaches a terminal: one sanitiser for every CLI output, and credentials masked.

Run ids, experiment names, tags, messages and error texts come from producers and
receivers, and a terminal obeys the control sequences in them: `\\x1b]0;PWNED\\x07` retitles
the window, `\\x1b[2J` clears it, CR rewrites a line, U+202E reverses what follows. Every
such character is shown escaped instead (`\\u001b`): the JSON escape form, so a JSON output
passing through the same stream still decodes to exactly the stored value (orjson already
escapes C0 controls; DEL, C1 controls and bidi/format characters it leaves raw).

`guarded_output()` wraps sys.stdout and sys.stderr for the length of a CLI command, so that
every print of every sub-command, argparse's messages and the log handler go through
`sanitize` and consumers.model.redact without each call site having to remember it; table cells
use `sanitize(..., cell=True)`, which also turns line breaks and tabs into spaces.
"""

from __future__ import annotations

import io
import re
import sys
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from consumers.model.redact import redact

# Line breaks and tabs: kept in text (a message's lines), spaces in a table cell.
_LAYOUT = frozenset("\n\t")
_CELL_SPACE = frozenset("\n\t\r\v\f\x1c\x1d\x1e\x1f\x85\u2028\u2029")
# Candidates (C0, DEL, C1, and every format/separator character); each is then checked by
# its Unicode category so that new format characters are covered too.
_SUSPECT = re.compile(r"[\x00-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u08ff"
                      r"\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb"
                      r"\U000110bd\U000110cd\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
                      r"\U000e0001-\U000e007f]")  # fmt: skip


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def sanitize(text: str, *, cell: bool = False) -> str:
    """Control and format characters shown escaped; line breaks and tabs kept (or, in a
    table cell, turned into spaces)."""
    if not _SUSPECT.search(text):
        return text

    def one(match: re.Match[str]) -> str:
        char = match.group(0)
        if cell and char in _CELL_SPACE:
            return " "
        if not cell and char in _LAYOUT:
            return char
        if unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}:
            return _escape(char)
        return char

    return _SUSPECT.sub(one, text)


def safe(text: str) -> str:
    """What the CLI writes: credentials masked, then controls escaped."""
    return sanitize(redact(text))


class SafeStream(io.TextIOBase):
    """A text stream that passes everything written through `safe` to the stream below."""

    def __init__(self, inner: TextIO) -> None:
        super().__init__()
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(safe(text))
        return len(text)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return self._inner.isatty()

    def fileno(self) -> int:
        return self._inner.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._inner, "encoding", "utf-8")

    @property
    def inner(self) -> TextIO:
        return self._inner


@contextmanager
def guarded_output() -> Iterator[None]:
    """sys.stdout and sys.stderr through `safe` until the block ends (nested: once)."""
    out, err = sys.stdout, sys.stderr
    if isinstance(out, SafeStream):
        yield
        return
    sys.stdout, sys.stderr = SafeStream(out), SafeStream(err)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = out, err
