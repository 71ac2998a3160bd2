"""The state of one scheduled alert instance, as a value: the rules compute it (rules/), the
store keeps it (store/alert_states.py), and neither of them imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class InstanceState:
    """One (rule, group): its recent evaluations and whether it is firing."""

    history: str = ""
    firing: bool = False
    clear: int = 0
    instance: str | None = None
    since: datetime | None = None
    alert: dict[str, Any] | None = None

    @property
    def worth_keeping(self) -> bool:
        return self.firing or "1" in self.history
