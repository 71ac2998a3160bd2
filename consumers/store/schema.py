"""Tables. Event columns keep the log-analytics names so queries read the same as KQL's."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL wants 64 bits.
Id = BigInteger().with_variant(Integer(), "sqlite")
Time = DateTime(timezone=True)

events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("TimeGenerated", Time, nullable=False),
    Column("RunId", String(), nullable=False),
    Column("Status", String(), nullable=False),
    Column("ParentRunId", String()),
    Column("RootRunId", String()),
    Column("ExperimentName", String()),
    Column("ExperimentId", String()),
    Column("WorkspaceName", String()),
    Column("WorkspaceId", String()),
    Column("Message", Text),
    Column("Level", String(), nullable=False),
    Column("OperationName", String()),
    Column("CorrelationId", String()),
    Column("Identity", Text),
    Column("TriggeringUserName", String()),
    Column("CallerIpAddress", String()),
    Column("DurationMs", BigInteger),
    Column("Location", String()),
    Column("ResultType", String()),
    Column("ResultSignature", String()),
    Column("ResultDescription", Text),
    Column("RunType", String()),
    Column("Tags", JSON, nullable=False),
    Column("Properties", JSON, nullable=False),
    Column("IngestedAt", Time, nullable=False),
    # Migration 0007_causes: the workspace's ARM ID, and why a failed run failed.
    Column("ResourceId", String()),
    Column("cause", String()),
    Column("cause_detail", Text),
    # The natural key: a redelivered or re-published event is the same row.
    UniqueConstraint("RunId", "TimeGenerated", "Status", name="uq_events_natural"),
    Index("ix_events_time", "TimeGenerated"),
    Index("ix_events_status_time", "Status", "TimeGenerated"),
)

# One row per run: its current state, merged from events in whatever order they arrive.
runs = Table(
    "runs",
    metadata,
    Column("RunId", String(), primary_key=True),
    Column("ParentRunId", String()),
    Column("RootRunId", String()),
    Column("ExperimentName", String()),
    Column("ExperimentId", String()),
    Column("WorkspaceName", String()),
    Column("WorkspaceId", String()),
    Column("RunType", String()),
    Column("TriggeringUserName", String()),
    Column("Status", String(), nullable=False),
    Column("StatusTime", Time, nullable=False),
    Column("StatusRank", Integer, nullable=False),
    Column("Message", Text),
    Column("Tags", JSON, nullable=False),
    Column("Properties", JSON, nullable=False),
    Column("FirstSeen", Time, nullable=False),
    Column("LastSeen", Time, nullable=False),
    Column("StartTime", Time),
    Column("EndTime", Time),
    # Set by run-update records (consumers.model.updates), never by status events.
    Column("Description", Text),
    Column("UpdatedTime", Time),
    Column("cause", String()),  # the latest event's: a failed run's cause (0007_causes)
    Index("ix_runs_experiment_last", "ExperimentName", "LastSeen"),
    Index("ix_runs_status_last", "Status", "LastSeen"),
    Index("ix_runs_last", "LastSeen"),
    Index("ix_runs_parent", "ParentRunId"),
    Index("ix_runs_root", "RootRunId"),
    Index("ix_runs_cause_last", "cause", "LastSeen"),
    # Duration baselines: an experiment's last completed runs, read in index order without
    # statistics too (consumers.store.feed.baseline_loader). Partial (WHERE "Status" =
    # 'Completed') as migration 0011_baseline_index creates it; the predicate stays out of
    # this definition because SQLAlchemy imports every dialect named in an index's
    # arguments to check them, and a SQLite serve must not load PostgreSQL's
    # (tests/test_footprint.py).
    Index("ix_runs_completed", "ExperimentName", "EndTime", "RunId"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("SourceTopic", String(), nullable=False),
    Column("SourcePartition", Integer, nullable=False),
    Column("SourceOffset", BigInteger, nullable=False),
    Column("Reason", String(), nullable=False),
    Column("Error", Text, nullable=False),
    Column("MessageKey", LargeBinary),
    Column("Payload", LargeBinary),
    Column("PayloadBytes", Integer, nullable=False),
    Column("ReceivedAt", Time, nullable=False),
    UniqueConstraint(
        "SourceTopic", "SourcePartition", "SourceOffset", name="uq_dead_letters_source"
    ),
    Index("ix_dead_letters_received", "ReceivedAt"),
)

# The outbox: written in the ingest transaction, drained by the dispatcher. One row per
# (alert, receiver); dedup_key makes a Kafka replay insert nothing.
notifications = Table(
    "notifications",
    metadata,
    Column("id", String(), primary_key=True),
    Column("dedup_key", String(), nullable=False),
    Column("rule", String(), nullable=False),
    Column("severity", Integer, nullable=False),
    Column("fingerprint", String(), nullable=False),
    Column("throttle_key", String(), nullable=False),
    Column("receiver", String(), nullable=False),
    Column("receiver_type", String(), nullable=False),
    Column("followup", Boolean, nullable=False),
    # consumers.model.notifications.NotificationState: pending -> sending -> sent |
    # pending (retry) | dead; the not-sent states are recorded, never sent
    Column("state", String(), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("run_id", String(), nullable=False),
    Column("status", String(), nullable=False),
    Column("event_time", Time, nullable=False),
    Column("alert", JSON, nullable=False),
    Column("created_at", Time, nullable=False),
    Column("next_attempt_at", Time, nullable=False),
    Column("lease_until", Time),
    Column("claim", String()),  # which dispatcher claim holds it (several replicas)
    Column("sent_at", Time),
    Column("reason", String()),
    Column("last_error", Text),
    # noise control (consumers/noise): kind "alert", or "storm" (a storm summary); grouped rows
    # share a group_key and are sent together as one digest
    Column("kind", String(), nullable=False, server_default="alert"),
    Column("group_key", String()),
    UniqueConstraint("dedup_key", name="uq_notifications_dedup"),
    Index("ix_notifications_due", "state", "next_attempt_at"),
    Index("ix_notifications_throttle", "rule", "throttle_key", "receiver", "created_at"),
    Index("ix_notifications_fingerprint", "fingerprint"),
    Index("ix_notifications_group", "group_key", "fingerprint", "created_at"),
    Index("ix_notifications_storm", "kind", "receiver", "created_at"),  # leads with kind: the
    # per-receiver follow-up lookup must keep using the fingerprint index
    # the web console (0008_console): a run's notifications, the newest ones (in one state)
    Index("ix_notifications_run", "run_id", "created_at", "id"),
    Index("ix_notifications_created", "created_at", "id"),
    Index("ix_notifications_state_created", "state", "created_at", "id"),
)

# Noise control's state (migration 0006_noise; consumers/store/outbox_state.py reads and
# writes it for consumers/noise).

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

# Stateful alert instances of the scheduled rule kinds (threshold, absence, flatline,
# duration): one row per (rule, group) that is firing or has breached lately, so that another
# replica taking over the evaluation lease neither fires twice nor forgets to resolve.
alert_states = Table(
    "alert_states",
    metadata,
    Column("rule", String(), primary_key=True),
    Column("group_key", String(), primary_key=True),
    Column("firing", Boolean, nullable=False),
    Column("history", String(), nullable=False),  # last M evaluations, "1" = breached
    Column("clear", Integer, nullable=False),  # clear evaluations in a row while firing
    Column("instance", String()),  # the firing episode
    Column("since", Time),
    Column("alert", JSON),  # the firing alert, to build its resolution from
    Column("updated_at", Time, nullable=False),
)

# Named leases with expiry: one holder at a time for work that must run on one replica (the
# scheduled rules). Times are the holders' clocks in epoch seconds; `generation` grows on
# every change of holder, a fencing token for whoever needs one.
leases = Table(
    "leases",
    metadata,
    Column("name", String(), primary_key=True),
    Column("holder", String(), nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("acquired_at", Double, nullable=False),
    Column("generation", BigInteger, nullable=False),
)

# `kafka.assignment: store` (migration 0010_partition_leases; consumers/store/partition_leases.py):
# replicas share a topic's partitions through these instead of the broker's consumer group. One row
# per live replica, renewed every heartbeat (a replica counts towards the fair share while it renews
# it, see PartitionLeases' stale_after), and one lease per partition, taken, renewed and given back
# with the same conditional upsert as `leases`. A given-back lease keeps its row (expired), so that
# the generation only grows.
assignment_members = Table(
    "assignment_members",
    metadata,
    Column("consumer_group", String(), primary_key=True),
    Column("topic", String(), primary_key=True),
    Column("member", String(), primary_key=True),
    Column("renewed_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
)

partition_leases = Table(
    "partition_leases",
    metadata,
    Column("consumer_group", String(), primary_key=True),
    Column("topic", String(), primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("holder", String(), nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("acquired_at", Double, nullable=False),
    Column("generation", BigInteger, nullable=False),
)

# Scheduled rules' window state (migration 0009_rule_windows; consumers/store/rule_windows.py):
# written by the evaluation lease's holder in each tick's transaction, so that a replica that
# starts, takes the lease over or reloads the rules loads it instead of replaying the window.
# One row per rule that counts events (threshold, flatline): the fingerprint of the parts of
# its definition that shape the state, and the state as JSON text (parsed per row, so that a
# damaged row costs that rule a replay, not the warm-up).
rule_windows = Table(
    "rule_windows",
    metadata,
    Column("rule", String(), primary_key=True),
    Column("fingerprint", String(), nullable=False),
    Column("state", Text, nullable=False),
    Column("updated_at", Time, nullable=False),
)

# Where the rows of rule_windows stand in the events table: the last events.id read, and as
# JSON text the ids below it not yet seen (PostgreSQL commits ids out of order) with when
# they were first missed (epoch seconds), and the rows written at an earlier position (each
# tick writes a bounded share of the changed rows) with theirs. One row per evaluation lease.
rule_feed = Table(
    "rule_feed",
    metadata,
    Column("name", String(), primary_key=True),
    Column("cursor", BigInteger, nullable=False),
    Column("positions", Text, nullable=False),
    Column("updated_at", Time, nullable=False),
)
