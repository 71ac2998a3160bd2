"""What runwatch tells its operators: Prometheus metrics (`metrics`, one object per service,
on the registry it is given) and log records (`logs`, plain or JSON lines, redacted).

A layer of its own, below ingest and dispatch, which count what they do; the service
(`consumers/service/`) only wires it up and serves `/metrics`."""
