"""Ingest: Kafka messages in, run events and dead letters stored, offsets committed.

The first stop of an event: `kafka_loop` polls a batch, `decoding` finds each message's
shape and turns it into run events (`azure` maps Azure's shapes to the model's columns,
`log_analytics` and `cloudevents_binding` read their envelopes, `admission` checks the
limits), `ingestor` writes the batch in one store transaction, `producer` copies dead
letters to their topic. `http` and `http_batch` take Event Grid pushes and publish them to
the same topic; `encoding` is decoding's inverse, for `runwatch emit`, the simulator and the
run library."""
