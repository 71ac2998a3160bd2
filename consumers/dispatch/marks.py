"""Marking notifications sent, promptly: the stage after a receiver accepted a send.

The only duplicate possible is a process dying between the receiver's acceptance and the
mark (the lease then expires and another attempt sends again), so the mark must not wait.
On SQLite it goes into a journal file of its own (consumers/store/sent_marks.py), so it
never waits for an ingest transaction; without a backlog on the event loop itself (no
thread hop), otherwise, and on PostgreSQL, on a thread that does nothing else. A mark is
committed within a few milliseconds; marks that finish together, or while a commit is in
progress, go in one transaction (group commit only under backlog).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from consumers.store.sent_marks import SentMarks

log = logging.getLogger(__name__)

# Under backlog, journaled marks are folded into the outbox at most this often: each fold is
# a transaction on the store (waiting for its write lock), and folding after every group of
# marks took a thread as long as the sends themselves. The marks are durable in the journal
# meanwhile; only `runwatch notifications list` shows them as sent this much later.
APPLY_GAP_S = 0.25


class MarkStage:
    """Runs on the dispatcher's event loop; `open` before the first mark, `close` after the
    last send (applies whatever the journal still holds)."""

    def __init__(
        self, marks: SentMarks, clock: Callable[[], datetime], backlog: Callable[[], bool]
    ) -> None:
        self._marks = marks
        self._clock = clock
        self._backlog = backlog  # claimed notifications wait for a worker
        # Marks that are not made on the loop (PostgreSQL) get a thread of their own: in the
        # shared pool they queued behind context reads and claims waiting for the store.
        self._thread: ThreadPoolExecutor | None = None
        self._to_mark: list[tuple[str, asyncio.Future[None]]] = []
        self._marker: asyncio.Task[None] | None = None
        self._applier: asyncio.Task[None] | None = None
        self._apply_again = False

    def open(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="dispatch-mark")

    async def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._applier is not None:
            await asyncio.gather(self._applier, return_exceptions=True)
        await asyncio.to_thread(self._marks.apply)  # a clean stop leaves none behind
        self._marks.close()

    async def apply(self) -> None:
        """Journaled marks into the outbox now (before expired claims are released: a send
        that was accepted is never taken for a lost one)."""
        await asyncio.to_thread(self._marks.apply)

    async def mark(self, notification_id: str) -> None:
        """Group commit only under backlog: without one, a mark is committed on the next turn
        of the loop (with the others that finished on this turn); with one, on the mark
        thread, and marks arriving while it commits go together in the next transaction.
        No send waits for a timer."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_mark.append((notification_id, future))
        if self._marker is None or self._marker.done():
            self._marker = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._to_mark:
            batch, self._to_mark = self._to_mark, []
            ids = [i for i, _ in batch]
            try:
                if self._marks.journaled and not self._backlog():
                    # well under a millisecond, at once: a thread hop would cost more
                    self._marks.record(ids, self._clock())
                else:  # on the mark thread, the loop sending on: marks group meanwhile
                    await loop.run_in_executor(self._thread, self._marks.record, ids, self._clock())
            except Exception as exc:  # the lease brings them back: the documented window
                for _, future in batch:
                    future.set_exception(exc)
            else:
                for _, future in batch:
                    future.set_result(None)
                self._apply_soon()

    def _apply_soon(self) -> None:
        """Journaled marks into the outbox soon (one applier at a time; it runs again if
        more came meanwhile). Durability does not wait for this."""
        if not self._marks.journaled:
            return
        self._apply_again = True
        if self._applier is None or self._applier.done():
            self._applier = asyncio.create_task(self._run_applier())

    async def _run_applier(self) -> None:
        while self._apply_again:
            self._apply_again = False
            try:
                await asyncio.to_thread(self._marks.apply)
            except Exception:  # the journal keeps them: applied at the next release
                log.exception("applying sent marks failed")
                return
            if self._backlog():
                await asyncio.sleep(APPLY_GAP_S)  # more marks meanwhile: folded in together
