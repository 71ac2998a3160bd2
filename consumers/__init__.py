"""runwatch: Kafka -> run events -> store -> alert rules -> email/webhook notifications."""

__version__ = "0.1.0"
