"""Silences as a stage: alerts whose labels match every matcher of an active silence are
recorded `silenced` (reason `silence:<id>`) and counted, but not sent. The silences
themselves are rows in the store (consumers/store/silences.py: add, list, expire), so every
replica and the CLI see the same ones; the state port hands the active ones in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from consumers.model.matchers import Matcher, match_all, parse_all
from consumers.model.notifications import NotificationState, silence_reason
from consumers.model.silences import Silence
from consumers.noise.decision import Candidate, Decision
from consumers.noise.state import NoiseState


class Silencer:
    """The silences active at one instant, parsed once (per batch, per digest)."""

    def __init__(self, silences: Sequence[Silence]) -> None:
        parsed: list[tuple[str, tuple[Matcher, ...]]] = []
        for silence in silences:
            try:
                parsed.append((silence.id, parse_all(silence.matchers)))
            except ValueError:  # written by hand into the table; cannot match anything
                continue
        self._silences = tuple(parsed)

    @classmethod
    def load(cls, state: NoiseState, now: datetime) -> Silencer:
        return cls(state.active_silences(now))

    def __bool__(self) -> bool:
        return bool(self._silences)

    def check(self, labels: dict[str, str]) -> Decision | None:
        for silence_id, matchers in self._silences:
            if match_all(matchers, labels):
                return Decision(NotificationState.SILENCED, silence_reason(silence_id))
        return None

    def decide(self, candidate: Candidate, state: NoiseState, now: datetime) -> Decision | None:
        return self.check(candidate.labels)
