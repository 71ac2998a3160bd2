"""Sent marks on SQLite go to a journal file beside the store (consumers/store/sent_marks.py):
a mark journaled by a process that died before folding it in is still a sent notification."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consumers.store import Store
from consumers.store.outbox import Outbox
from consumers.store.sent_marks import SentJournal, journal_path, sent_marks
from tests.conftest import wait_for
from tests.servers import HttpServer, SmtpServer
from tests.test_dispatcher import Running, alert, event, settings_with, states, write


def test_a_journaled_mark_is_applied_at_start_and_never_sent_again(
    store: Store, http: HttpServer, smtp: SmtpServer
) -> None:
    write(store, alert(event("journaled"), "ok"))
    outbox = Outbox(store)
    past = datetime.now(UTC) - timedelta(minutes=5)
    (claimed,) = outbox.claim(datetime.now(UTC), 10, lease_s=0.001)  # expires at once
    journal = sent_marks(store, outbox)
    assert isinstance(journal, SentJournal) and journal.path == journal_path(store)
    journal.record([claimed.id], past)  # accepted and marked; then the process died
    journal.close()
    assert states(store)["ok"][0] == "sending"

    with Running(store, settings_with(http, smtp.port)):
        wait_for(lambda: states(store)["ok"][0] == "sent")
    assert http.on("/ok") == []  # released as a lost send, it would have gone out again
    (row,) = outbox.list()
    assert row.sent_at == past
    assert journal.pending() == 0


def test_marks_are_folded_in_right_after_a_send(
    store: Store, http: HttpServer, smtp: SmtpServer
) -> None:
    write(store, alert(event("folded"), "ok", "mail"))
    with Running(store, settings_with(http, smtp.port)):
        wait_for(lambda: [s for s, _, _ in states(store).values()] == ["sent", "sent"])
    journal = sent_marks(store, Outbox(store))
    assert isinstance(journal, SentJournal)
    assert journal.pending() == 0
    assert len(http.on("/ok")) == 1 and len(smtp.mails) == 1
