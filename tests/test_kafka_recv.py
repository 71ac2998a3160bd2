"""kafka-python's transports read 64 KiB per recv in runwatch (consumers.ingest.kafka_clients):
the replacement is installed on both transports, kafka-python's own is still the loop it
copies (an upgrade that changes it fails here, to be looked at), and records of several MB
in one fetch arrive whole through a real broker."""

from __future__ import annotations

import inspect
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.net.transport import KafkaSSLTransport, KafkaTCPTransport

from consumers.ingest import kafka_clients
from consumers.ingest.kafka_clients import ORIGINAL_READERS, RECV_BYTES
from tests.conftest import Topics


def test_both_transports_read_in_large_chunks() -> None:
    for transport in (KafkaTCPTransport, KafkaSSLTransport):
        reader = transport.__dict__["_sock_recv"]
        assert reader is not ORIGINAL_READERS[transport]
        assert reader.__module__ == kafka_clients.__name__
    assert RECV_BYTES >= 65_536


def test_kafka_pythons_reader_is_still_the_one_replaced() -> None:
    """The replacement copies kafka-python 3.0's loop; if this fails, compare them again."""
    for transport, reader in ORIGINAL_READERS.items():
        source = inspect.getsource(reader)
        assert "self._sock.recv(4096)" in source, transport
        assert "b''.join(recvd)" in source and "return recvd_data, err" in source, transport
        assert "socket disconnected" in source and "KafkaConnectionError(e)" in source
    assert "SSLWantReadError" in inspect.getsource(ORIGINAL_READERS[KafkaSSLTransport])


def test_megabytes_in_one_fetch_arrive_whole(topics: Topics) -> None:
    values = [uuid.uuid4().bytes * (30_000 + index) for index in range(12)]  # 5.8 MB
    producer = KafkaProducer(
        bootstrap_servers=topics.bootstrap, acks="all", max_request_size=2_000_000
    )
    for value in values:
        producer.send(topics.topic, value=value, partition=0)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        bootstrap_servers=topics.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8_000_000,
        fetch_max_bytes=8_000_000,
    )
    consumer.assign([TopicPartition(topics.topic, 0)])
    got: list[bytes] = []
    for _ in range(100):
        for batch in consumer.poll(timeout_ms=200).values():
            got.extend(record.value for record in batch)
        if len(got) >= len(values):
            break
    consumer.close()
    assert got == values
