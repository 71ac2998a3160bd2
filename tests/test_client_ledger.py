"""The read-your-writes bookkeeping on its own (pure logic: no broker, no store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consumers.client.ledger import Ledger, Mark, Placement, Progress, ledger_for

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def placed(parent: str | None, tree: str, experiment: str = "e") -> Placement:
    return Placement(parent, tree, "ws", experiment)


def test_a_mark_is_shown_once_the_store_reaches_both_its_times() -> None:
    mark = Mark(status_time=at(1), update_time=at(2))
    assert not mark.shown_by(None)  # not stored at all
    assert not mark.shown_by(Progress(at(1), None))  # the update is not applied yet
    assert not mark.shown_by(Progress(at(0.5), at(2)))  # the status event is not
    assert mark.shown_by(Progress(at(1), at(2)))
    assert mark.shown_by(Progress(at(3), at(4)))  # later changes from elsewhere: still shown
    assert Mark(status_time=at(1)).shown_by(Progress(at(1), None))


def test_settle_keeps_what_the_store_does_not_show_and_a_change_published_meanwhile() -> None:
    ledger = Ledger()
    ledger.published("a", placed(None, "a"), Mark(status_time=at(1)))
    ledger.published("b", placed(None, "b"), Mark(status_time=at(1)))
    marks = ledger.pending_experiment("ws", "e", roots_only=False)
    ledger.published("a", placed(None, "a"), Mark(update_time=at(2)))  # while the read polls
    behind = ledger.settle(marks, {"a": Progress(at(1), None)})
    assert behind == {"b": Mark(status_time=at(1))}
    # "a"'s status event is shown, its newer tag is not: the next read still waits for it.
    assert ledger.pending_run("a") == {"a": Mark(status_time=at(1), update_time=at(2))}
    assert ledger.settle(ledger.pending_run("a"), {"a": Progress(at(1), at(2))}) == {}
    assert ledger.pending_run("a") == {}
    assert ledger.latest("a") == at(2)


def test_descendants_follow_parents_and_count_in_runs_below_an_unknown_ancestor() -> None:
    ledger = Ledger()
    mark = Mark(status_time=at(1))
    ledger.published("root", placed(None, "root"), mark)
    ledger.published("mid", placed("root", "root"), mark)
    ledger.published("leaf", placed("mid", "root"), mark)
    ledger.published("aunt", placed("root", "root"), mark)
    ledger.published("cousin", placed("aunt", "root"), mark)
    # Published under "attached", a run this process found in the store but never published.
    ledger.published("stray", placed("attached", "root"), mark)
    ledger.published("other", placed(None, "other"), mark)
    assert set(ledger.pending_children("root")) == {"mid", "aunt"}
    assert set(ledger.pending_descendants("mid", "root")) == {"leaf", "stray"}
    assert set(ledger.pending_descendants("root", "root")) == {
        "mid",
        "leaf",
        "aunt",
        "cousin",
        "stray",
    }
    assert ledger.pending_descendants("leaf", "root") == {"stray": mark}
    # A known chain counts whatever tree its runs name; an unknown one only in the same tree.
    ledger.published("grafted", placed("leaf", "elsewhere"), mark)
    ledger.published("foreign", placed("unknown", "elsewhere"), mark)
    assert set(ledger.pending_descendants("mid", "root")) == {"leaf", "stray", "grafted"}


def test_an_experiment_read_waits_for_its_own_runs_only() -> None:
    ledger = Ledger()
    mark = Mark(status_time=at(1))
    ledger.published("r1", placed(None, "r1"), mark)
    ledger.published("k1", placed("r1", "r1"), mark)
    ledger.published("x1", placed(None, "x1", experiment="other"), mark)
    ledger.published("w1", Placement(None, "w1", "elsewhere", "e"), mark)
    assert set(ledger.pending_experiment("ws", "e", roots_only=True)) == {"r1"}
    assert set(ledger.pending_experiment("ws", "e", roots_only=False)) == {"r1", "k1"}


def test_one_ledger_per_destination() -> None:
    first = ledger_for(("broker:9092", "topic-a", "sqlite:///a.db"))
    assert ledger_for(("broker:9092", "topic-a", "sqlite:///a.db")) is first
    assert ledger_for(("broker:9092", "topic-b", "sqlite:///a.db")) is not first
