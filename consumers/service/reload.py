"""Changing rules without a restart: poll the directory, or send SIGHUP.

A reload validates the whole directory before swapping anything, so a half-saved or broken
file never leaves the service with no rules or half of them: the old set stays in force, the
error is logged with its file and line, and `runwatch_rules_reload_total{result="error"}`
counts it (alert on that, not on someone reading logs). The cause table (the shipped
`causes.yaml` and the user's beside their rules, consumers/model/causes.py) is part of the set:
validated with it, swapped with it, kept with it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from types import FrameType
from typing import Any

from consumers.model.causes import TABLE_FILE, CauseTable, read_causes, table_files
from consumers.model.errors import RuleError
from consumers.rules.engine import RuleSet
from consumers.rules.guard import RuleGuard
from consumers.rules.loader import read_rules, rule_files
from consumers.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

Snapshot = tuple[tuple[str, int, int], ...] | None


def snapshot(directory: Path, extra: tuple[Path, ...] = ()) -> Snapshot:
    """Names, mtimes and sizes of the rule files (and of `extra` files, when they exist):
    cheap to take every second, and any edit, addition, removal or rename changes it. None
    when the directory cannot be read."""
    try:
        entries = []
        for path in rule_files(directory):
            stat = path.stat()
            entries.append((path.name, stat.st_mtime_ns, stat.st_size))
        for path in extra:
            if path.is_file():
                stat = path.stat()
                entries.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(entries)
    except OSError:
        return None


class RuleWatcher:
    """Holds the rules in force (`current`) and replaces them when the directory changes.

    `current` starts empty: call `reload()` once at start-up and refuse to start if it
    returns False (`last_errors` says why). Readers just read `current`; a swap is one
    attribute assignment, so an evaluation sees the old set or the new one, never a mix.
    """

    def __init__(
        self,
        directory: Path,
        metrics: Metrics,
        receivers: Collection[str] | None = None,
        *,
        causes_dir: Path | None = None,
    ) -> None:
        """`causes_dir` holds the shipped cause table; without it, every failure's cause is
        `unknown`."""
        self.directory = Path(directory)
        self.causes_dir = Path(causes_dir) if causes_dir is not None else None
        self.causes = CauseTable.of(())
        self.metrics = metrics
        self.receivers = frozenset(receivers) if receivers is not None else None
        # One isolation boundary for every rule set loaded: counts and log rate survive a reload.
        self.guard = RuleGuard(lambda rule: metrics.rule_errors.labels(rule=rule).inc())
        self.current = RuleSet(guard=self.guard)
        self.last_errors: list[RuleError] = []
        self._signature: Snapshot = None
        self._lock = threading.Lock()  # one reload at a time (poller, SIGHUP, callers)
        self._hup = threading.Event()

    def reload(self) -> bool:
        """Load and validate everything, then swap; on any error keep the old rules."""
        with self._lock:
            signature = self._snapshot()  # before reading: a later edit reloads again
            rules, errors = read_rules(self.directory, self.receivers)
            causes = self.causes
            if self.causes_dir is not None:
                cause_rules, cause_errors = read_causes(*self._cause_files())
                errors = errors + cause_errors
                if not cause_errors:
                    causes = CauseTable.of(cause_rules)
            self._signature = signature  # a broken file is reported once, not every poll
            self.last_errors = errors
            if errors:
                self.metrics.rules_reloads.labels(result="error").inc()
                for error in errors:
                    log.error(
                        "alert rules not reloaded, keeping the %d in force: %s",
                        len(self.current),
                        error,
                        extra={"rule": error.rule},
                    )
                return False
            self.current = RuleSet(rules, guard=self.guard)
            self.causes = causes
            for name in causes.names:  # each cause's series from the first scrape
                self.metrics.run_failure_causes.labels(cause=name)
            self.metrics.rules_reloads.labels(result="ok").inc()
            self.metrics.rules_loaded.set(len(self.current))
            log.info(
                "loaded %d alert rules and %d failure causes from %s",
                len(self.current),
                len(self.causes.causes),
                self.directory,
            )
            return True

    def _cause_files(self) -> tuple[Path, Path | None]:
        assert self.causes_dir is not None
        return table_files(self.causes_dir, self.directory)

    def _snapshot(self) -> Snapshot:
        if self.causes_dir is None:
            return snapshot(self.directory)
        shipped, user = self._cause_files()
        return snapshot(self.directory, (shipped, user or self.directory / TABLE_FILE))

    def changed(self) -> bool:
        return self._snapshot() != self._signature

    def start(self, stop: threading.Event, interval: float = 1.0) -> threading.Thread:
        """Poll every `interval` seconds (and act on SIGHUP) until `stop` is set."""
        thread = threading.Thread(
            target=self._run, args=(stop, interval), name="runwatch-rules", daemon=True
        )
        thread.start()
        return thread

    def _run(self, stop: threading.Event, interval: float) -> None:
        while not stop.is_set():
            hup = self._hup.wait(interval)
            if stop.is_set():
                return
            try:
                if hup:
                    self._hup.clear()
                    log.info("SIGHUP: reloading alert rules")
                    self.reload()
                elif self.changed():
                    self.reload()
            except Exception:  # the watcher must outlive any surprise; the old rules stay
                log.exception("alert rules reload failed")

    def install_sighup(self) -> Callable[[int, FrameType | None], Any] | int | None:
        """Make SIGHUP reload the rules (through the thread of `start`). Python only lets the
        main thread install handlers. Returns the previous handler, to restore it."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("install_sighup must be called from the main thread")

        def handler(signum: int, frame: FrameType | None) -> None:
            self._hup.set()  # no I/O or locks in a signal handler: the thread does the work

        return signal.signal(signal.SIGHUP, handler)
