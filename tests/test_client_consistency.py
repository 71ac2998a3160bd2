"""Read-your-writes in the client library, against the real broker, consumer and store.

Every read the library offers, issued immediately after every kind of write, must show that
write (waiting for the consumer if need be), or raise StoreLagError once the workspace's
consistency_timeout runs out. Each pair is repeated REPEAT times: the consumer usually needs
a few milliseconds, so a read that does not wait loses the race most of the time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from consumers.client import Experiment, Run, Workspace
from consumers.model.errors import StoreLagError
from consumers.store import Store
from tests.conftest import RunningService, Topics, settings_for

REPEAT = 20
NOT_READ = object()  # a field a read does not show


@dataclass(frozen=True)
class Seen:
    """What a read showed of the written run (NOT_READ where the read has no such field)."""

    status: object = NOT_READ
    tags: object = NOT_READ
    properties: object = NOT_READ
    description: object = NOT_READ

    def differences(self, want: Seen) -> list[str]:
        return [
            f"{name}: {got!r}, expected {wanted!r}"
            for name in ("status", "tags", "properties", "description")
            if (got := getattr(self, name)) is not NOT_READ
            and got != (wanted := getattr(want, name))
        ]


@dataclass
class Written:
    """The run a write created or changed, where it sits, and what every read must show."""

    target: Run
    want: Seen
    root: Run | None = None  # the tree's root, when the target is a descendant
    parent: Run | None = None  # the target's parent, when it has one
    child: Run | None = None  # a child of the target made before the write (for `parent`)
    extra: dict[str, Any] = field(default_factory=dict)


def _tree(exp: Experiment) -> tuple[Run, Run]:
    root = exp.start_logging()
    return root, root.child_run()


def _on_grandchild(change: Callable[[Run, int], None], want: Callable[[int], Seen]) -> Any:
    """A write on an existing grandchild (root -> mid -> target), which has a child itself."""

    def write(exp: Experiment, i: int) -> Written:
        root, mid = _tree(exp)
        target = mid.child_run()
        child = target.child_run()
        change(target, i)
        return Written(target, want(i), root=root, parent=mid, child=child)

    return write


def write_start_logging(exp: Experiment, i: int) -> Written:
    run = exp.start_logging(tags={"k": f"v{i}"}, properties={"p": str(i)})
    return Written(run, Seen("Running", {"k": f"v{i}"}, {"p": str(i)}, None))


def write_child_run(exp: Experiment, i: int) -> Written:
    root, mid = _tree(exp)
    kid = mid.child_run(f"step {i}", tags={"k": f"v{i}"})
    return Written(kid, Seen("Running", {"k": f"v{i}"}, {}, f"step {i}"), root=root, parent=mid)


def write_create_children(exp: Experiment, i: int) -> Written:
    root, mid = _tree(exp)
    kids = mid.create_children(3, tag_key="fold", tag_values=["0", "1", str(i)])
    return Written(kids[2], Seen("Running", {"fold": str(i)}, {}, None), root=root, parent=mid)


def _fail(run: Run, i: int) -> None:
    run.fail(f"boom {i}")


WRITES: dict[str, Callable[[Experiment, int], Written]] = {
    "start_logging": write_start_logging,
    "child_run": write_child_run,
    "create_children": write_create_children,
    "tag": _on_grandchild(
        lambda run, i: run.tag("k", f"v{i}"), lambda i: Seen("Running", {"k": f"v{i}"}, {}, None)
    ),
    "add_properties": _on_grandchild(
        lambda run, i: run.add_properties({"p": i}),
        lambda i: Seen("Running", {}, {"p": str(i)}, None),
    ),
    "description": _on_grandchild(
        lambda run, i: run.set_description(f"d{i}"), lambda i: Seen("Running", {}, {}, f"d{i}")
    ),
    "complete": _on_grandchild(
        lambda run, i: run.complete(), lambda i: Seen("Completed", {}, {}, None)
    ),
    "fail": _on_grandchild(_fail, lambda i: Seen("Failed", {}, {}, None)),
    "cancel": _on_grandchild(lambda run, i: run.cancel(), lambda i: Seen("Canceled", {}, {}, None)),
}


def _cached(run: Run) -> Seen:
    """A Run found through a read carries the store's view of it."""
    return Seen(run.status, run.tags, run.properties)


def _among(runs: list[Run], target: Run) -> Seen | None:
    found = [run for run in runs if run.id == target.id]
    return _cached(found[0]) if found else None


def read_get_status(w: Written, exp: Experiment) -> Seen | None:
    return Seen(status=w.target.get_status())


def read_get_details(w: Written, exp: Experiment) -> Seen | None:
    details = w.target.get_details()
    return Seen(details["status"], details["tags"], details["properties"], details["description"])


def read_labels(w: Written, exp: Experiment) -> Seen | None:
    target = w.target
    return Seen(
        tags=target.get_tags(), properties=target.get_properties(), description=target.description
    )


def read_attach(w: Written, exp: Experiment) -> Seen | None:
    return _cached(Run.attach(exp.workspace, w.target.id))


def read_parent(w: Written, exp: Experiment) -> Seen | None:
    assert w.child is not None
    parent = Run.attach(exp.workspace, w.child.id).parent
    return None if parent is None or parent.id != w.target.id else _cached(parent)


def read_get_children(w: Written, exp: Experiment) -> Seen | None:
    assert w.parent is not None
    return _among(w.parent.get_children(), w.target)


def read_get_children_recursive(w: Written, exp: Experiment) -> Seen | None:
    assert w.root is not None
    return _among(w.root.get_children(recursive=True), w.target)


def read_get_runs(w: Written, exp: Experiment) -> Seen | None:
    return _among(exp.get_runs(include_children=w.parent is not None), w.target)


READS: dict[str, tuple[Callable[[Written, Experiment], Seen | None], Callable[[Written], bool]]] = {
    "get_status": (read_get_status, lambda w: True),
    "get_details": (read_get_details, lambda w: True),
    "tags/properties/description": (read_labels, lambda w: True),
    "Run.attach": (read_attach, lambda w: True),
    "parent": (read_parent, lambda w: w.child is not None),
    "get_children": (read_get_children, lambda w: w.parent is not None),
    "get_children(recursive)": (read_get_children_recursive, lambda w: w.root is not None),
    "get_runs": (read_get_runs, lambda w: True),
}


@pytest.fixture
def ws(
    service: Callable[..., RunningService], store: Store, topics: Topics, store_url: str
) -> Iterator[Workspace]:
    with (
        service(),
        Workspace("race", settings_for(topics, store_url), consistency_timeout=20) as opened,
    ):
        yield opened


def stale_reads(ws: Workspace, read: str, repeat: int) -> str:
    """Each write kind `repeat` times, each immediately followed by `read`: what came back
    stale ("" when nothing did)."""
    do_read, applies = READS[read]
    wrong: Counter[str] = Counter()
    tried: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for i in range(repeat):
        exp = Experiment(ws, f"race-{read}-{i}")
        for kind, write in WRITES.items():
            written = write(exp, i)
            if not applies(written):
                continue
            tried[kind] += 1
            seen = do_read(written, exp)
            problems = ["not found"] if seen is None else seen.differences(written.want)
            if problems:
                wrong[kind] += 1
                examples.setdefault(kind, "; ".join(problems))
    assert tried, f"no write applies to {read}"
    return ", ".join(f"{kind} {wrong[kind]}/{tried[kind]} ({examples[kind]})" for kind in wrong)


@pytest.mark.parametrize("read", list(READS))
def test_every_read_shows_every_write_made_just_before_it(ws: Workspace, read: str) -> None:
    stale = stale_reads(ws, read, REPEAT)
    assert not stale, f"{read} right after a write showed stale data: {stale}"


def test_every_read_after_every_write_on_postgresql(topics: Topics, pg_url: str) -> None:
    """The same on PostgreSQL (its timestamps, its transactions), fewer times each."""
    settings = settings_for(topics, pg_url)
    with (
        RunningService(settings),
        Workspace("race-pg", settings, consistency_timeout=20) as ws,
    ):
        stale = {read: stale_reads(ws, read, 3) for read in READS}
    assert not any(stale.values()), f"stale reads on PostgreSQL: {stale}"


@pytest.fixture
def idle_ws(store: Store, topics: Topics, store_url: str) -> Iterator[Workspace]:
    """Nothing consumes the topic: every read of something published here must give up."""
    with Workspace("idle", settings_for(topics, store_url), consistency_timeout=0.3) as opened:
        yield opened


@pytest.mark.parametrize("read", list(READS))
def test_a_read_that_cannot_catch_up_raises_store_lag(idle_ws: Workspace, read: str) -> None:
    do_read, applies = READS[read]
    exp = Experiment(idle_ws, "idle")
    written = next(w for w in (WRITES["tag"](exp, 0),) if applies(w))
    with pytest.raises(StoreLagError, match="not caught up"):
        do_read(written, exp)
