"""Ingest: Kafka messages in, run events and dead letters stored, offsets committed.

The first stop of an event: `kafka_loop` polls a batch, `decoding` turns each message into
run events (one module per wire format: `log_analytics`, `cloudevents_binding`), `ingestor`
writes the batch in one store transaction, `producer` copies dead letters to their topic.
`http` and `http_batch` take Event Grid pushes and publish them to the same topic; `encoding`
is decoding's inverse, for `runwatch emit`, the simulator and the run library."""
