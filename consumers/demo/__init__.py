"""Demo tooling, apart from the product code: the bundled Kafka-protocol broker, a mail
catcher and a webhook catcher standing in for receivers, and simulated training runs.
`runwatch up` (consumers/cli/up.py), the tests and the benchmarks use them; no layer of the
service does."""
