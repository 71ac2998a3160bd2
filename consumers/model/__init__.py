"""The words every layer shares, as values: run events and updates, alerts, notification
states, receivers, labels, matchers, silences, durations, time intervals, instance states,
ingest limits, errors, and `redact` for every text that leaves. It imports nothing of
runwatch, so any layer may import it (`make lint` holds it to that)."""
