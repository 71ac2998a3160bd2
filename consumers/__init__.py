"""runwatch: Kafka -> run events -> store -> alert rules -> email/webhook notifications.

The sub-packages follow an event: ingest/ (decode, store the batch) -> rules/ (alerts) ->
outbox/ + noise/ (the notification rows and their state) -> store/ (SQL) -> dispatcher ->
notify/ (render, send). model/ and config/ sit below them all; service/, cli/, client/ and
demo/ on top. docs/development.md lists them and the import rules `make lint` enforces."""

__version__ = "0.1.0"
