"""Initial schema: events, runs (current state), dead_letters.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("TimeGenerated", Time, nullable=False),
        sa.Column("RunId", sa.String(), nullable=False),
        sa.Column("Status", sa.String(), nullable=False),
        sa.Column("ParentRunId", sa.String()),
        sa.Column("RootRunId", sa.String()),
        sa.Column("ExperimentName", sa.String()),
        sa.Column("ExperimentId", sa.String()),
        sa.Column("WorkspaceName", sa.String()),
        sa.Column("WorkspaceId", sa.String()),
        sa.Column("Message", sa.Text),
        sa.Column("Level", sa.String(), nullable=False),
        sa.Column("OperationName", sa.String()),
        sa.Column("CorrelationId", sa.String()),
        sa.Column("Identity", sa.Text),
        sa.Column("TriggeringUserName", sa.String()),
        sa.Column("CallerIpAddress", sa.String()),
        sa.Column("DurationMs", sa.BigInteger),
        sa.Column("Location", sa.String()),
        sa.Column("ResultType", sa.String()),
        sa.Column("ResultSignature", sa.String()),
        sa.Column("ResultDescription", sa.Text),
        sa.Column("RunType", sa.String()),
        sa.Column("Tags", sa.JSON, nullable=False),
        sa.Column("Properties", sa.JSON, nullable=False),
        sa.Column("IngestedAt", Time, nullable=False),
        sa.UniqueConstraint("RunId", "TimeGenerated", "Status", name="uq_events_natural"),
    )
    op.create_index("ix_events_time", "events", ["TimeGenerated"])
    op.create_index("ix_events_status_time", "events", ["Status", "TimeGenerated"])

    op.create_table(
        "runs",
        sa.Column("RunId", sa.String(), primary_key=True),
        sa.Column("ParentRunId", sa.String()),
        sa.Column("RootRunId", sa.String()),
        sa.Column("ExperimentName", sa.String()),
        sa.Column("ExperimentId", sa.String()),
        sa.Column("WorkspaceName", sa.String()),
        sa.Column("WorkspaceId", sa.String()),
        sa.Column("RunType", sa.String()),
        sa.Column("TriggeringUserName", sa.String()),
        sa.Column("Status", sa.String(), nullable=False),
        sa.Column("StatusTime", Time, nullable=False),
        sa.Column("StatusRank", sa.Integer, nullable=False),
        sa.Column("Message", sa.Text),
        sa.Column("Tags", sa.JSON, nullable=False),
        sa.Column("Properties", sa.JSON, nullable=False),
        sa.Column("FirstSeen", Time, nullable=False),
        sa.Column("LastSeen", Time, nullable=False),
        sa.Column("StartTime", Time),
        sa.Column("EndTime", Time),
    )
    op.create_index("ix_runs_experiment_last", "runs", ["ExperimentName", "LastSeen"])
    op.create_index("ix_runs_status_last", "runs", ["Status", "LastSeen"])
    op.create_index("ix_runs_last", "runs", ["LastSeen"])
    op.create_index("ix_runs_parent", "runs", ["ParentRunId"])
    op.create_index("ix_runs_root", "runs", ["RootRunId"])

    op.create_table(
        "dead_letters",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("SourceTopic", sa.String(), nullable=False),
        sa.Column("SourcePartition", sa.Integer, nullable=False),
        sa.Column("SourceOffset", sa.BigInteger, nullable=False),
        sa.Column("Reason", sa.String(), nullable=False),
        sa.Column("Error", sa.Text, nullable=False),
        sa.Column("MessageKey", sa.LargeBinary),
        sa.Column("Payload", sa.LargeBinary),
        sa.Column("PayloadBytes", sa.Integer, nullable=False),
        sa.Column("ReceivedAt", Time, nullable=False),
        sa.UniqueConstraint(
            "SourceTopic", "SourcePartition", "SourceOffset", name="uq_dead_letters_source"
        ),
    )
    op.create_index("ix_dead_letters_received", "dead_letters", ["ReceivedAt"])


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_table("runs")
    op.drop_table("events")
