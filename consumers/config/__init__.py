"""Configuration: one YAML file plus `RUNWATCH_SECTION__KEY` overrides, validated at start-up.

`settings` is the root and its loading; `service` the service's own sections (kafka, store,
endpoints, metrics, HTTP ingest, logging, evaluation); `receivers` SMTP, the receivers and
`notify:`; `noise` the `noise:` section; `base` what every section shares. Below every layer
that reads a setting, above `model/` only."""
