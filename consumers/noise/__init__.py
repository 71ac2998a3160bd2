"""Noise control: what happens to an alert between a rule matching and a notification being
sent. Routing picks the receivers; inhibition, silences and time intervals suppress; grouping
batches alerts into digests; storm control caps a receiver's rate. See alert_rules/README.md.

A pure stage: values in, a Decision out. What it must remember (silences, inhibition
sources, groups, what was already notified) it reads and writes through the state port it
declares (state.py), which the store implements in SQL; nothing here imports the store or
SQLAlchemy. consumers/outbox is its one caller on the write path.
"""
