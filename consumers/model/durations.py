"""Durations as people write them ("90s", "30m", "1h30m"), read in one place: rule files, the
`noise:` config and `runwatch silence add` all mean the same thing by "2h"."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds in "90s", "30m", "2h", "1d" or "1h30m". Units are required: a bare number
    could mean seconds or minutes, and a throttle off by 60x is not noticed until 3 a.m."""
    if not isinstance(value, str):
        raise ValueError(f'expected a duration such as "30m", "2h" or "1d", got {value!r}')
    text = value.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f'expected a duration such as "30m", "2h" or "1d", got {value!r}')
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


Duration = Annotated[float, BeforeValidator(parse_duration)]


# (experiments, n) -> per experiment its last n completed runs by completion time as (run id,
# completion time, seconds), oldest first; one call for many experiments (one query, not one
# each). The completion time orders a baseline, whichever order the runs arrived in.
BaselineRun = tuple[str, datetime, float]
BaselineLoader = Callable[[Collection[str], int], Mapping[str, list[BaselineRun]]]


# A run that ended as the store has it, for a replica that did not see it end (it warmed
# up after): (experiment, completion time, first Running) for a completed run, else None.
EndedRun = tuple[str | None, datetime, datetime | None] | None
# run ids -> those of them whose end was stored before the caller's feed begins
EndedLoader = Callable[[Collection[str]], Mapping[str, EndedRun]]
