"""The connection a training script's runs share: where to publish, where to read, and how long
a read waits for the store to show what this process published.

Publishing goes to Kafka (the same topic `runwatch serve` consumes), reading goes to the store
`runwatch serve` writes; both are opened, and their libraries imported, on first use, so a
script that only publishes never loads SQLAlchemy and one that only queries never loads
kafka-python. Every read goes through `caught_up` (read-your-writes, see `ledger`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from consumers.client.env import ENV_CONFIG, ENV_WORKSPACE
from consumers.client.ledger import Ledger, Mark, Placement, ledger_for
from consumers.model.errors import RunNotFoundError, StoreLagError

if TYPE_CHECKING:
    from consumers.client.reads import StoredRun, StoreReads
    from consumers.config.settings import Settings
    from consumers.ingest.producer import EventPublisher
    from consumers.model.events import RunStatusEvent
    from consumers.model.updates import RunUpdate
    from consumers.store.engine import Store

__all__ = ["DEFAULT_WORKSPACE", "ENV_WORKSPACE", "Workspace"]

DEFAULT_WORKSPACE = "default"
_SHOWN = 5  # run ids named in a StoreLagError


@dataclass
class _Links:
    """The Kafka producer and the store reader, opened on first use and shared by siblings."""

    publisher: EventPublisher | None = None
    store: Store | None = None
    reads: StoreReads | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Workspace:
    """A named workspace plus the runwatch settings to reach Kafka and the store.

    `consistency_timeout` bounds how long a read waits for the store to show what this
    process published (the consumer stores events within milliseconds when it is running).
    Without `settings`, they come from the `RUNWATCH_*` environment variables.
    """

    def __init__(
        self,
        name: str = DEFAULT_WORKSPACE,
        settings: Settings | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        consistency_timeout: float = 10.0,
        poll_interval: float = 0.005,
    ) -> None:
        if not name:
            raise ValueError("a workspace needs a name")
        if settings is None:
            from consumers.config.settings import load_settings

            settings = load_settings(None)
        self.name = name
        self.settings = settings
        self.clock = clock
        self.consistency_timeout = consistency_timeout
        self.poll_interval = poll_interval
        self._links = _Links()
        # What this process published to this topic, read back from this store.
        kafka = settings.kafka
        self.ledger: Ledger = ledger_for((kafka.bootstrap_servers, kafka.topic, settings.store.url))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Workspace:
        """The workspace of the run a parent process started (see `Run.environment`);
        Kafka and store come from the `RUNWATCH_*` settings variables, over the config file
        the parent was given (RUNWATCH_RUN_CONFIG, set by `runwatch run exec --config`)."""
        env = os.environ if environ is None else environ
        if env.get(ENV_CONFIG) and "settings" not in options:
            from consumers.config.settings import load_settings

            options["settings"] = load_settings(env[ENV_CONFIG])
        return cls(env.get(ENV_WORKSPACE) or DEFAULT_WORKSPACE, **options)

    def environment(self) -> dict[str, str]:
        """Variables that let a child process reach the same Kafka topic and store.
        Secrets (SASL and SMTP passwords) are not copied: a child inherits them from the
        parent's own environment or reads the same secret file."""
        kafka = self.settings.kafka
        env = {
            ENV_WORKSPACE: self.name,
            "RUNWATCH_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "RUNWATCH_KAFKA__TOPIC": kafka.topic,
            "RUNWATCH_KAFKA__SECURITY_PROTOCOL": kafka.security_protocol,
            "RUNWATCH_STORE__URL": self.settings.store.url,
        }
        if kafka.sasl_mechanism:
            env["RUNWATCH_KAFKA__SASL_MECHANISM"] = kafka.sasl_mechanism
        if kafka.sasl_username:
            env["RUNWATCH_KAFKA__SASL_USERNAME"] = kafka.sasl_username
        if kafka.sasl_password_file:
            env["RUNWATCH_KAFKA__SASL_PASSWORD_FILE"] = str(kafka.sasl_password_file)
        return env

    def sibling(self, name: str) -> Workspace:
        """Another workspace over the same connections (a run found in the store may
        belong to another workspace); closing either closes both."""
        other = Workspace(
            name,
            self.settings,
            clock=self.clock,
            consistency_timeout=self.consistency_timeout,
            poll_interval=self.poll_interval,
        )
        other._links = self._links
        return other

    # ---- publishing -----------------------------------------------------------------
    def _producer(self) -> EventPublisher:
        links = self._links
        with links.lock:
            if links.publisher is None:
                from consumers.ingest.producer import EventPublisher

                links.publisher = EventPublisher(self.settings.kafka)
            return links.publisher

    def publish(self, events: Sequence[RunStatusEvent]) -> None:
        """Status changes, on the broker when this returns. Several go as one resource-log
        envelope: one message, so they are stored together or not at all."""
        if not events:
            return
        publisher = self._producer()
        if len(events) == 1:
            publisher.publish(events[0])
        else:
            from consumers.ingest.decoding import EventFormat
            from consumers.ingest.encoding import encode_many

            value = encode_many(events, EventFormat.RESOURCE_LOG)
            publisher.publish_raw(value, key=events[0].root_run_id.encode())
        publisher.flush()
        for event in events:
            placement = Placement(
                event.ParentRunId, event.root_run_id, event.WorkspaceName, event.ExperimentName
            )
            self.ledger.published(event.RunId, placement, Mark(status_time=event.TimeGenerated))

    def publish_update(self, update: RunUpdate) -> None:
        """A tag/property/description change, keyed like the run's status events."""
        publisher = self._producer()
        publisher.publish_raw(update.to_json(), key=update.root_run_id.encode())
        publisher.flush()
        placement = Placement(
            update.ParentRunId, update.root_run_id, update.WorkspaceName, update.ExperimentName
        )
        self.ledger.published(update.RunId, placement, Mark(update_time=update.TimeGenerated))

    # ---- reading --------------------------------------------------------------------
    @property
    def store(self) -> Store:
        links = self._links
        with links.lock:
            if links.store is None:
                from consumers.store.engine import open_reader

                links.store = open_reader(self.settings.store.url)
            return links.store

    @property
    def reads(self) -> StoreReads:
        store = self.store
        links = self._links
        with links.lock:
            if links.reads is None:
                from consumers.client.reads import StoreReads

                links.reads = StoreReads(store)
            return links.reads

    def _poll(self, done: Callable[[], bool]) -> bool:
        """`done()` until it is true, for at most consistency_timeout."""
        deadline = time.monotonic() + self.consistency_timeout
        while not done():
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_interval)
        return True

    def _where(self) -> str:
        return f"topic {self.settings.kafka.topic} -> {self.store.url}"

    def caught_up(self, marks: Mapping[str, Mark]) -> StoreReads:
        """The store reader, once the store shows every change in `marks` (what this process
        published about the runs a read could return); StoreLagError (retriable) when it
        does not within consistency_timeout."""
        reads = self.reads
        behind = dict(marks)

        def settled() -> bool:
            nonlocal behind
            if behind:
                behind = self.ledger.settle(behind, reads.progress(behind))
            return not behind

        if not self._poll(settled):
            named = ", ".join(sorted(behind)[:_SHOWN]) + (", ..." if len(behind) > _SHOWN else "")
            raise StoreLagError(
                f"the store has not caught up within {self.consistency_timeout:g}s with what "
                f"this process published about {len(behind)} run(s) ({named}): is "
                f"`runwatch serve` consuming {self._where()}?"
            )
        return reads

    def find(self, run_id: str) -> StoredRun:
        """A run's stored state, showing every change this process published about it. A run
        published elsewhere is waited for (up to consistency_timeout) and RunNotFoundError
        raised when it does not appear."""
        reads = self.caught_up(self.ledger.pending_run(run_id))
        found: StoredRun | None = None

        def stored() -> bool:
            nonlocal found
            found = reads.load(run_id)
            return found is not None

        if not self._poll(stored) or found is None:
            raise RunNotFoundError(f"run {run_id} is not in the store ({self._where()})")
        return found

    def close(self) -> None:
        links = self._links
        with links.lock:
            if links.publisher is not None:
                links.publisher.flush()
                links.publisher.close()
                links.publisher = None
            if links.store is not None:
                links.store.dispose()
                links.store = None
                links.reads = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workspace({self.name!r})"
