"""The one recorder: alerts in, notification rows out, for the ingest path (per-event rules,
in the ingest transaction) and the scheduler (threshold, absence, flatline, duration, tree)
alike, with the same noise policy. It decides each (alert, receiver) row's state -- stale,
unknown receiver, throttled, then noise control -- and builds the row; the reads and the
insert go through a state port that the store implements in SQL (consumers/store/
outbox_state.py), so every decision here is a function of values.
"""
