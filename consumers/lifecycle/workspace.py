"""The connection a training script's runs share: where to publish and where to read.

Publishing goes to Kafka (the same topic `runwatch serve` consumes), reading goes to the
store `runwatch serve` writes; both are opened on first use, so a script that only publishes
never needs the database and one that only queries never connects to Kafka.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
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
        poll_interval: float = 0.02,
    ) -> None:
        if not name:
            raise ValueError("a workspace needs a name")
        self.name = name
        self.settings = settings if settings is not None else load_settings(None)
        self.clock = clock
        self.consistency_timeout = consistency_timeout
        self.poll_interval = poll_interval
        self._publisher: EventPublisher | None = None
        self._store: Store | None = None
        self._lock = threading.Lock()

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

    @property
    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = open_store(self.settings.store.url)
            return self._store

    def _producer(self) -> EventPublisher:
        with self._lock:
            if self._publisher is None:
                self._publisher = EventPublisher(self.settings.kafka)
            return self._publisher

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
        with self._lock:
            if self._publisher is not None:
                self._publisher.flush()
                self._publisher.close()
                self._publisher = None
            if self._store is not None:
                self._store.dispose()
                self._store = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workspace({self.name!r})"
