"""Durations written the way people write them: 7d, 12h, 30m, 45s, or a timedelta."""

from __future__ import annotations

import datetime as dt
import re

from airflow_campaign.errors import CampaignError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(value: str | float | dt.timedelta, option: str) -> float:
    """Seconds in ``value`` ('7d', '12h', '30m', '45s', '2w', a number of seconds or a timedelta)."""
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _PATTERN.match(str(value))
    if not match:
        raise CampaignError(f"{option}={value!r} is not a duration; write e.g. '7d', '12h', '30m' or '45s'.")
    return float(match.group(1)) * _UNITS[match.group(2)]
