"""Configuration: one YAML file plus `RUNWATCH_SECTION__KEY` overrides, validated at start-up.

`settings` holds every section; `noise` the `noise:` section's schema. Below every layer that
reads a setting, above `model/` only."""
