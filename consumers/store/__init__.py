"""The store: every state change goes through one transaction here."""

from consumers.store.engine import Store, open_reader, open_store

__all__ = ["Store", "open_reader", "open_store"]
