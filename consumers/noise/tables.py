"""Noise-control tables (migration 0006_noise), on the store's one MetaData."""

from __future__ import annotations

from sqlalchemy import JSON, Column, Index, String, Table, Text

from consumers.store.schema import Time, metadata

# `runwatch silence add`: alerts whose labels match every matcher are not sent while
# starts_at <= now < ends_at; `expire` sets ends_at to now.
silences = Table(
    "silences",
    metadata,
    Column("id", String(), primary_key=True),
    Column("matchers", JSON, nullable=False),
    Column("starts_at", Time, nullable=False),
    Column("ends_at", Time, nullable=False),
    Column("created_by", String(), nullable=False),
    Column("comment", Text, nullable=False),
    Column("created_at", Time, nullable=False),
    Index("ix_silences_ends", "ends_at"),
)

# One row per (route, receiver, group_by values): when its next digest goes out and when the
# last one did (for group_interval and repeat_interval).
notification_groups = Table(
    "notification_groups",
    metadata,
    Column("key", String(), primary_key=True),
    Column("receiver", String(), nullable=False),
    Column("route", String(), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("next_flush_at", Time),
    Column("last_flush_at", Time),
)

# Source alerts of inhibition rules, by (rule name, values of the `equal` labels): targets
# with the same values are inhibited until `until`.
inhibitions = Table(
    "inhibitions",
    metadata,
    Column("name", String(), primary_key=True),
    Column("equal_key", String(), primary_key=True),
    Column("fingerprint", String(), nullable=False),
    Column("until", Time, nullable=False),
)
