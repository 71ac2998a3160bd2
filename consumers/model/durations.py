"""Durations as people write them ("90s", "30m", "1h30m"), read in one place: rule files, the
`noise:` config and `runwatch silence add` all mean the same thing by "2h"."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
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


# (experiments, n) -> per experiment its last n completed runs as (run id, seconds), oldest
# first; one call for many experiments (one query, not one each)
BaselineLoader = Callable[[Collection[str], int], Mapping[str, list[tuple[str, float]]]]
