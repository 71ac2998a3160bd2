"""Dispatch: from a notification row in the outbox to a receiver that accepted it.

The stages, in the order a notification passes them: `claims` (the claim loop: due rows out
of the outbox into a queue, a group's rows bundled into one digest by `digests`),
`delivery` (one notification: limits, re-check, context, send, outcome), `send` (render and
hand to the email, webhook or Alertmanager sender), `marks` (sent marks, committed
promptly). The decisions are pure and apart: `retry` (a failure -> the next attempt's time,
or dead) and `context` (what templates see, defined once). `runs` is the short-lived cache
of run reads the contexts share; `dispatcher` wires the stages to a thread and its loop.
"""
