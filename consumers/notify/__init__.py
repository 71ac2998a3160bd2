"""Receiver integrations, the last stop of an event: `templating` renders a notification
(Jinja2 sandbox), then one module per kind (email, webhook, Alertmanager, PagerDuty, Azure
action groups) sends it with one `send` coroutine that raises SendError with a reason and
whether retrying can help."""
