"""The `runwatch` command line: `main` parses and dispatches, one module per command group
(`run` and `run_exec` for the run lifecycle, `silence`, `up` for the demo, `dryrun` for
`runwatch rules test`); `options` holds the shared flags, `reports` the tables and JSON it
prints, `console` the one sanitiser every terminal line passes. Only `consumers/entry.py`
imports this package."""
