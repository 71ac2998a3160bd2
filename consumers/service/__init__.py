"""The running service: `app` wires every layer together and runs it until told to stop,
`scheduler` evaluates the scheduled rule kinds on a clock, `reload` keeps the rules in force
current, `endpoints` serves /metrics, /healthz and /readyz. Nothing imports this package but
the command line and the demo."""
