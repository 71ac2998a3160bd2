"""The connection a training script's runs share: where to publish and where to read.

Publishing goes to Kafka (the same topic `runwatch serve` consumes), reading goes to the
store `runwatch serve` writes; both are opened on first use, so a script that only publishes
never needs the database and one that only queries never connects to Kafka.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consumers.decoding import EventFormat
from consumers.encoding import encode_many
from consumers.events import RunStatusEvent
from consumers.producer import EventPublisher
from consumers.settings import Settings, load_settings
from consumers.store import Store, open_store
from consumers.updates import RunUpdate

ENV_WORKSPACE = "RUNWATCH_RUN_WORKSPACE"
DEFAULT_WORKSPACE = "default"


@dataclass
class _Links:
    """The Kafka producer and the store, opened on first use and shared by siblings."""

    publisher: EventPublisher | None = None
    store: Store | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Workspace:
    """A named workspace plus the runwatch settings to reach Kafka and the store.

    `consistency_timeout` bounds how long a read waits for the store to show what this
    process published (the consumer stores events within milliseconds when it is running).
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
        self.name = name
        self.settings = settings if settings is not None else load_settings(None)
        self.clock = clock
        self.consistency_timeout = consistency_timeout
        self.poll_interval = poll_interval
        self._links = _Links()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Workspace:
        """The workspace of the run a parent process started (see `Run.environment`);
        Kafka and store come from the `RUNWATCH_*` settings variables."""
        env = os.environ if environ is None else environ
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

    @property
    def store(self) -> Store:
        links = self._links
        with links.lock:
            if links.store is None:
                links.store = open_store(self.settings.store.url)
            return links.store

    def _producer(self) -> EventPublisher:
        links = self._links
        with links.lock:
            if links.publisher is None:
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
            value = encode_many(events, EventFormat.RESOURCE_LOG)
            publisher.publish_raw(value, key=events[0].root_run_id.encode())
        publisher.flush()

    def publish_update(self, update: RunUpdate) -> None:
        """A tag/property/description change, keyed like the run's status events."""
        publisher = self._producer()
        publisher.publish_raw(update.to_json(), key=update.root_run_id.encode())
        publisher.flush()

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

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workspace({self.name!r})"
