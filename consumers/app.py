"""Composition root: builds the service from settings and runs it until told to stop.

The path of one event, in order: kafka_loop.KafkaLoop polls -> ingest.Ingestor.handle decodes
(decoding.decode) -> store.Store.write_batch commits -> producer.DeadLetterPublisher flushes
what could not be decoded -> KafkaLoop commits the offsets.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector

from consumers.errors import RunwatchError
from consumers.ingest import Ingestor
from consumers.kafka_loop import KafkaLoop
from consumers.metrics import Metrics
from consumers.producer import DeadLetterPublisher
from consumers.settings import Settings
from consumers.store import Store, open_store

log = logging.getLogger(__name__)


def new_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class Service:
    """Everything `runwatch serve` runs; `run()` blocks until `stop` is set."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or new_registry()
        self.metrics = Metrics(self.registry)
        self.store: Store = open_store(settings.store.url, migrate=settings.store.migrate_on_start)
        self._http: Any = None
        self._failure: BaseException | None = None

    def _start_metrics(self) -> None:
        if not self.settings.metrics.enabled:
            return
        host, port = self.settings.metrics.address
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, self._http.server_port)

    @property
    def metrics_port(self) -> int | None:
        return None if self._http is None else int(self._http.server_port)

    def _retention(self, stop: threading.Event) -> None:
        days = self.settings.store.retention_days
        if days is None:
            return
        interval = self.settings.store.retention_interval_s
        while not stop.wait(interval):
            cutoff = datetime.now(UTC) - timedelta(days=days)
            try:
                deleted = self.store.delete_older_than(cutoff, self.settings.store.retention_batch)
            except RunwatchError as exc:
                log.warning("retention failed, will retry: %s", exc)
                continue
            if deleted:
                self.metrics.retention_deleted.inc(deleted)
                log.info("retention deleted %d rows older than %s", deleted, cutoff)

    def run(self, stop: threading.Event) -> None:
        kafka = self.settings.kafka
        dead_letters = DeadLetterPublisher(kafka)
        ingestor = Ingestor(
            self.store, dead_letters, self.metrics, max_bytes=kafka.max_message_bytes
        )
        loop = KafkaLoop(kafka, ingestor.prepare, ingestor.write, self.metrics)
        self._start_metrics()
        consumer = threading.Thread(
            target=self._consume, args=(loop, stop), name="kafka-loop", daemon=True
        )
        retention = threading.Thread(
            target=self._retention, args=(stop,), name="retention", daemon=True
        )
        consumer.start()
        retention.start()
        log.info(
            "consuming %s as group %s from %s", kafka.topic, kafka.group_id, kafka.bootstrap_servers
        )
        try:
            while consumer.is_alive() and not stop.wait(0.5):
                pass
        finally:
            stop.set()
            consumer.join()
            retention.join(timeout=5)
            dead_letters.close()
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
            self.store.dispose()
        if self._failure is not None:
            raise self._failure
        log.info("stopped")

    def _consume(self, loop: KafkaLoop[Any], stop: threading.Event) -> None:
        try:
            loop.run(stop)
        except BaseException as exc:  # re-raised by run() in the main thread
            self._failure = exc
            stop.set()
