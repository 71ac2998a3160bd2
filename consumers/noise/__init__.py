"""Noise control: what happens to an alert between a rule matching and a notification being
sent. Routing picks the receivers; inhibition, silences and time intervals suppress; grouping
batches alerts into digests; storm control caps a receiver's rate. See alert_rules/README.md.
"""
