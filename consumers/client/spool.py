"""The local spool of `runwatch run exec`: status events and run updates the broker has not
acknowledged yet, on disk, so that a broker that is away loses none of them.

Every record exec publishes (heartbeats aside: a late one says nothing) is appended to the
exec's own spool file before it is sent, and an acknowledgement line is appended once the
broker has it; the file goes when every record in it is acknowledged. What a file still holds
when its exec ends (the broker was away longer than exec waited, exec was killed) is sent by
the next `runwatch run exec` on the machine (in the background) or by `runwatch run flush`.

Layout: `<spool>/<destination>/<run>.<pid>.jsonl`, a destination being one bootstrap list and
topic (named in its `destination.json`). A live exec holds an exclusive flock on its file, so
flushers leave it alone. Bounded: past `MAX_BYTES` in the whole spool, new records are not
kept on disk (exec says so when one of them is then not delivered).

The spool directory: `--spool`, else `$RUNWATCH_SPOOL_DIR`, else
`$XDG_STATE_HOME/runwatch/spool` (`~/.local/state/runwatch/spool`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ENV_SPOOL = "RUNWATCH_SPOOL_DIR"
MAX_BYTES = 64 * 1024 * 1024
_DESTINATION = "destination.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def spool_root(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    if explicit:
        return Path(explicit)
    if environ.get(ENV_SPOOL):
        return Path(environ[ENV_SPOOL])
    state = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "runwatch" / "spool"


@dataclass(frozen=True, slots=True)
class Destination:
    """Where the records of a spool directory go."""

    bootstrap_servers: str
    topic: str

    @property
    def folder(self) -> str:
        digest = hashlib.sha256(f"{self.bootstrap_servers}\n{self.topic}".encode()).hexdigest()
        return f"{_UNSAFE.sub('_', self.topic)[:40]}-{digest[:12]}"


@dataclass(frozen=True, slots=True)
class Record:
    number: int
    key: bytes
    value: bytes


def spool_size(root: Path) -> int:
    total = 0
    for path in root.glob("*/*.jsonl"):
        try:
            total += path.stat().st_size
        except OSError:
            continue
    return total


def _line(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def _read(handle: IO[bytes]) -> list[Record]:
    """Records not acknowledged, in order. A torn last line (a crash mid-write) is skipped."""
    handle.seek(0)
    records: dict[int, Record] = {}
    for raw in handle.read().splitlines():
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        if "ack" in doc:
            records.pop(int(doc["ack"]), None)
        elif "n" in doc:
            number = int(doc["n"])
            records[number] = Record(number, doc["key"].encode(), doc["value"].encode())
    return [records[n] for n in sorted(records)]


class SpoolFile:
    """One exec's spool file, created (and locked) on the first record."""

    def __init__(
        self, root: Path, destination: Destination, name: str, *, max_bytes: int = MAX_BYTES
    ) -> None:
        self.root = root
        self.destination = destination
        self.path = root / destination.folder / f"{_UNSAFE.sub('_', name)[:100]}.jsonl"
        self.max_bytes = max_bytes
        self.problem: str | None = None  # why records are not kept on disk
        self._handle: IO[bytes] | None = None
        self._next = 0
        self._open: set[int] = set()

    def _opened(self) -> IO[bytes] | None:
        if self._handle is not None or self.problem is not None:
            return self._handle
        try:
            if spool_size(self.root) >= self.max_bytes:
                self.problem = f"the spool {self.root} is full ({self.max_bytes} bytes)"
                return None
            folder = self.path.parent
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            marker = folder / _DESTINATION
            if not marker.exists():
                tmp = folder / f".{_DESTINATION}.{os.getpid()}"
                tmp.write_text(json.dumps(_as_dict(self.destination)))
                tmp.replace(marker)
            handle = self.path.open("ab+")
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self.problem = f"cannot write the spool {self.path}: {exc.strerror or exc}"
            return None
        self._handle = handle
        return handle

    def add(self, key: bytes, value: bytes) -> int | None:
        """Kept on disk: its number, to acknowledge it by. None: not kept (see `problem`)."""
        handle = self._opened()
        if handle is None:
            return None
        number = self._next
        self._next += 1
        try:
            handle.write(_line({"n": number, "key": key.decode(), "value": value.decode()}))
            handle.flush()
        except OSError as exc:
            self.problem = f"cannot write the spool {self.path}: {exc.strerror or exc}"
            return None
        self._open.add(number)
        return number

    def delivered(self, number: int) -> None:
        if number not in self._open or self._handle is None:
            return
        self._open.discard(number)
        try:
            self._handle.write(_line({"ack": number}))
            self._handle.flush()
        except OSError:
            pass  # sent again by a flush: the store takes it as a duplicate

    @property
    def kept(self) -> int:
        """Records on disk the broker has not acknowledged."""
        return len(self._open)

    def close(self) -> None:
        """Removes the file when everything in it was delivered; unlocks it either way."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        if not self._open:
            self.path.unlink(missing_ok=True)
        handle.close()


def _as_dict(destination: Destination) -> dict[str, str]:
    return {"bootstrap_servers": destination.bootstrap_servers, "topic": destination.topic}


class Leftover:
    """A spool file no live exec holds, claimed (locked) by a flusher."""

    def __init__(self, path: Path, destination: Destination, handle: IO[bytes]) -> None:
        self.path = path
        self.destination = destination
        self._handle = handle
        self.records = _read(handle)
        self._open = {r.number for r in self.records}

    def delivered(self, number: int) -> None:
        self._open.discard(number)
        self._handle.seek(0, os.SEEK_END)
        self._handle.write(_line({"ack": number}))
        self._handle.flush()

    def release(self) -> None:
        if not self._open:
            self.path.unlink(missing_ok=True)
        self._handle.close()


def destinations(root: Path) -> list[Destination]:
    """The destinations that have a folder in the spool."""
    found: list[Destination] = []
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            doc = json.loads((folder / _DESTINATION).read_text())
            destination = Destination(str(doc["bootstrap_servers"]), str(doc["topic"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if destination.folder == folder.name:
            found.append(destination)
    return found


def leftovers(root: Path, only: Destination) -> Iterator[Leftover]:
    """The spool files of one destination that no live exec holds, each locked while it is
    handled (the caller releases it). A file another flusher holds is skipped."""
    folder = root / only.folder
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl")):
        try:
            handle = path.open("rb+")
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        if not path.exists():  # removed by the flusher that held it before us
            handle.close()
            continue
        yield Leftover(path, only, handle)
