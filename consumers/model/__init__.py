"""The domain words every layer shares: notification states, receiver names, label aliases,
silences and notification groups as values. It imports nothing of runwatch, so any layer may
import it (the future home of events, alerts and the rest of the model; issue 13)."""
