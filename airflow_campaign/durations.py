"""Durations written the way people write them: 7d, 12h, 30m, 45s, or a timedelta."""

from __future__ import annotations

import datetime as dt
import math
import re

from airflow_campaign.errors import CampaignError, shown

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
#: The longest duration taken: what a timedelta holds (about 2.7 million years).
MAX_SECONDS = dt.timedelta.max.total_seconds()


def parse_duration(value: str | float | dt.timedelta, option: str) -> float:
    """Seconds in ``value`` ('7d', '12h', '30m', '45s', '2w', a number of seconds or a timedelta).

    A duration longer than a timedelta holds (:data:`MAX_SECONDS`), or not finite, is refused.
    """
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond what a float holds
            seconds = math.inf
    else:
        match = _PATTERN.match(str(value))
        if not match:
            raise CampaignError(
                f"{option}={shown(value)} is not a duration; write e.g. '7d', '12h', '30m' or '45s'."
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or abs(seconds) > MAX_SECONDS:
        raise CampaignError(
            f"{option}={shown(value)}: give a duration of at most {MAX_SECONDS:.0f} seconds "
            "(999999999 days), e.g. '7d', '12h' or '30m'."
        )
    return seconds
