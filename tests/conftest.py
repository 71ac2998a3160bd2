"""Real servers for the tests: one bundled Kafka-protocol broker per session, a fresh topic
per test, a fresh SQLite store per test."""

from __future__ import annotations

import itertools
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer
from psycopg import sql

from consumers.config.service import KafkaSettings, MetricsSettings, StoreSettings
from consumers.config.settings import Settings
from consumers.demo.broker import EmbeddedBroker, create_topics
from consumers.service.app import Service
from consumers.store import Store, open_store
from tests.servers import HttpServer, SmtpServer

RUNWATCH = str(Path(sys.executable).parent / "runwatch")
# `make soak` (RUNWATCH_TEST_FULL=1): the long versions of the scale and outage tests, which
# `make test` runs at a size that checks the same things in seconds (docs/development.md).
FULL = os.environ.get("RUNWATCH_TEST_FULL") == "1"
PG_ADMIN = "postgresql://postgres@127.0.0.1/postgres"


def wait_for(
    predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s: {predicate}")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    bootstrap = os.environ.get("RUNWATCH_TEST_BOOTSTRAP")
    if bootstrap:  # the same tests against a real Apache Kafka
        _, _, port = bootstrap.rpartition(":")
        external = EmbeddedBroker(int(port))
        yield external
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


_counter = itertools.count()


@dataclass(frozen=True)
class Topics:
    bootstrap: str
    topic: str
    dead_letter_topic: str
    group_id: str

    def kafka_settings(self, **overrides: object) -> KafkaSettings:
        values: dict[str, object] = {
            "bootstrap_servers": self.bootstrap,
            "topic": self.topic,
            "dead_letter_topic": self.dead_letter_topic,
            "group_id": self.group_id,
            "session_timeout_ms": 2000,
            "heartbeat_interval_ms": 300,
        }
        values.update(overrides)
        return KafkaSettings.model_validate(values)

    def produce(
        self, values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None
    ) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        for index, value in enumerate(values):
            key = keys[index] if keys is not None else None
            producer.send(self.topic, value=value, key=key)
        producer.flush()
        producer.close()

    def read(self, topic: str, count: int, timeout: float = 20.0) -> list[object]:
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            consumer_timeout_ms=int(timeout * 1000),
        )
        out: list[object] = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < count and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=200).values():
                    out.extend(batch)
        finally:
            consumer.close()
        return out


@pytest.fixture
def topics(broker: EmbeddedBroker) -> Topics:
    suffix = f"{next(_counter)}-{uuid.uuid4().hex[:6]}"
    made = Topics(
        bootstrap=broker.bootstrap,
        topic=f"runs-{suffix}",
        dead_letter_topic=f"dead-{suffix}",
        group_id=f"group-{suffix}",
    )
    create_topics(broker.bootstrap, {made.topic: 3, made.dead_letter_topic: 1})
    return made


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runwatch.db'}"


@contextmanager
def _throwaway_pg(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database, dropped after; skips the test when PostgreSQL does not
    answer at PG_ADMIN."""
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {exc}")
    name = f"{prefix}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgresql://postgres@127.0.0.1/{name}"
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for one test module."""
    with _throwaway_pg("runwatch_t") as url:
        yield url


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    """Like pg_url, but a database per test (for tests that need it empty or migrate it)."""
    with _throwaway_pg("runwatch_f") as url:
        yield url


@pytest.fixture
def http() -> Iterator[HttpServer]:
    server = HttpServer().start()
    yield server
    server.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url, migrate=True)
    yield opened
    opened.dispose()


def settings_for(topics: Topics, store_url: str, **kafka: object) -> Settings:
    return Settings(
        kafka=topics.kafka_settings(**kafka),
        store=StoreSettings(url=store_url),
        metrics=MetricsSettings(listen="127.0.0.1:0"),
    )


class RunningService:
    """`Service` in a thread of this process: metrics readable, stop on demand."""

    def __init__(self, settings: Settings) -> None:
        self.service = Service(settings)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.service.run, args=(self.stop,))

    def __enter__(self) -> RunningService:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "service did not stop"

    def metric(self, name: str, **labels: str) -> float:
        value = self.service.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def service(topics: Topics, store_url: str) -> Callable[..., RunningService]:
    def start(**kafka: object) -> RunningService:
        return RunningService(settings_for(topics, store_url, **kafka))

    return start


def write_config(path: Path, topics: Topics, store_url: str, **kafka: object) -> Path:
    settings = settings_for(topics, store_url, **kafka)
    data = settings.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(data))
    return path


def serve(config: Path) -> subprocess.Popen[bytes]:
    """`runwatch serve` as its own process; its log goes to serve.log beside the config."""
    with (config.parent / "serve.log").open("ab") as log:
        return subprocess.Popen(
            [RUNWATCH, "serve", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
