"""One validation layer for operator options: types, ranges and shapes.

Each operator declares ``options = {name: check}``; :class:`~airflow_campaign.operators.base.
CampaignBaseOperator` runs the checks when the operator is built (DAG-parse time), skipping a
templated value, and again on the rendered values just before ``execute``. A check returns the
value it accepts (possibly normalised, e.g. a tuple made a list) or raises a
:class:`~airflow_campaign.errors.CampaignError` that names the option, shows the value cut to
about 200 characters and says the fix.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from airflow_campaign.durations import parse_duration
from airflow_campaign.errors import CampaignError, shown

Check = Callable[[str, Any], Any]
MAX_NAME = 63  # PostgreSQL's identifier length
MAX_INTEGER = 2**63 - 1  # PostgreSQL's bigint: a whole-number option ends up in SQL or in a count


def templated(value: Any) -> bool:
    """Whether ``value`` is only known at run time: an XComArg, or a Jinja template (or holds one)."""
    from airflow.sdk.definitions._internal.mixins import ResolveMixin

    if isinstance(value, ResolveMixin):
        return True
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(templated(k) or templated(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(templated(v) for v in value)
    return False


def unless_templated(value: Any, convert: Callable[[Any], Any]) -> Any:
    """``convert(value)``, or ``value`` as given when it is only known at run time.

    A constructor converts an option (a tuple made a list, None made ``[]``) only when the value
    is known: a template or an XComArg is kept for Airflow to render, and the option's check
    converts the rendered value before execute.
    """
    return value if templated(value) else convert(value)


def _fail(option: str, value: Any, expected: str) -> CampaignError:
    return CampaignError(f"{option}={shown(value)}: {expected}.")


def optional(check: Check) -> Check:
    """``check``, or None accepted as "not given"."""

    def run(option: str, value: Any) -> Any:
        return None if value is None else check(option, value)

    return run


def defaulted(check: Check, default: Callable[[], Any]) -> Check:
    """``check``, or None read as ``default()`` (e.g. ``list``: not given means empty)."""

    def run(option: str, value: Any) -> Any:
        return default() if value is None else check(option, value)

    return run


def name(option: str, value: Any) -> str:
    """One column, table or key name: a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise _fail(option, value, "give a name (a non-empty string), e.g. 'email'")
    if "\x00" in value:
        raise _fail(option, value, "a name cannot contain a NUL character")
    return value


def names(option: str, value: Any) -> list[str]:
    """A list of names. A bare string is refused rather than read as its characters."""
    if isinstance(value, str):
        raise _fail(
            option,
            value,
            f"give a list of names, e.g. [{value!r}] for one" if len(value) < 64 else "give a list of names",
        )
    if not isinstance(value, (list, tuple)):
        raise _fail(
            option,
            value,
            f"give a list of names, e.g. ['email', 'first_name'] (got a {type(value).__name__})",
        )
    out = [name(f"{option}[{i}]", v) for i, v in enumerate(value)]
    dupes = sorted({n for n in out if out.count(n) > 1})
    if dupes:
        raise _fail(option, value, f"{dupes} named more than once; name each once")
    return out


def names_or_mapping(option: str, value: Any) -> list[str] | dict[str, str]:
    """A list of names, or ``{name: name}`` (a renaming)."""
    if isinstance(value, Mapping):
        return string_mapping(option, value)
    return names(option, value)


def string_mapping(option: str, value: Any) -> dict[str, str]:
    """``{name: string}`` with non-empty string keys and string values."""
    if not isinstance(value, Mapping):
        raise _fail(option, value, f"give a dict of {{name: value}} (got a {type(value).__name__})")
    out = {}
    for key, item in value.items():
        name(f"{option} key", key)
        if not isinstance(item, str):
            raise _fail(f"{option}[{key!r}]", item, f"give a string (got a {type(item).__name__})")
        out[key] = item
    return out


def mapping(option: str, value: Any) -> dict[str, Any]:
    """A dict with string keys."""
    if not isinstance(value, Mapping):
        raise _fail(option, value, f"give a dict (got a {type(value).__name__})")
    for key in value:
        name(f"{option} key", key)
    return dict(value)


def list_of_mappings(option: str, value: Any) -> list[dict[str, Any]]:
    if isinstance(value, Mapping) or not isinstance(value, (list, tuple)):
        raise _fail(
            option, value, f"give a list of dicts (got a {type(value).__name__}); wrap one dict in [...]"
        )
    return [mapping(f"{option}[{i}]", v) for i, v in enumerate(value)]


def text(option: str, value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise _fail(option, value, "give a non-empty string")
    return value


def flag(option: str, value: Any) -> bool:
    """True or False (not 1, 'yes' or 'false')."""
    if not isinstance(value, bool):
        raise _fail(option, value, "give True or False")
    return value


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    """A whole number within bounds (a bool or a numeric string is refused)."""

    def run(option: str, value: Any) -> int:
        bounds = _bounds(minimum, maximum)
        if isinstance(value, bool) or not isinstance(value, int):
            hint = (
                f"; write {value.strip()} without quotes"
                if isinstance(value, str) and value.strip().isdigit()
                else ""
            )
            raise _fail(option, value, f"give a whole number{bounds}{hint}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise _fail(option, value, f"give a whole number{bounds}")
        if not -MAX_INTEGER - 1 <= value <= MAX_INTEGER:
            raise _fail(
                option, value, f"give a whole number{bounds} that fits in 64 bits (at most {MAX_INTEGER})"
            )
        return value

    return run


def number(
    minimum: float | None = None, maximum: float | None = None, *, above: float | None = None
) -> Check:
    """A finite number within bounds (``above``: strictly greater than)."""

    def run(option: str, value: Any) -> float:
        bounds = _bounds(minimum, maximum) if above is None else f" greater than {above:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(option, value, f"give a number{bounds}")
        if not _finite(value):
            too_large = isinstance(value, int)  # beyond what a float holds
            raise _fail(
                option,
                value,
                f"give a number{bounds}" + (f", at most {sys.float_info.max:g}" if too_large else ""),
            )
        if (
            (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)
            or (above is not None and value <= above)
        ):
            raise _fail(option, value, f"give a number{bounds}")
        return value

    return run


def duration(option: str, value: Any) -> Any:
    """A positive duration: '7d', '12h', '30m', '45s', seconds, or a timedelta."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float, dt.timedelta)):
        raise _fail(option, value, "give a duration such as '7d', '12h', '30m' or a timedelta")
    seconds = parse_duration(value, option)
    if seconds <= 0:
        raise _fail(option, value, "give a positive duration such as '7d', '12h' or '30m'")
    return value


def choice(choices: Sequence[Any]) -> Check:
    def run(option: str, value: Any) -> Any:
        if not isinstance(value, (str, int, bool, type(None))) or value not in choices:
            raise CampaignError(f"{option}={shown(value)} is not valid; use one of {list(choices)}.")
        return value

    return run


def _finite(value: int | float) -> bool:
    """Whether ``value`` is a float that is not inf or NaN, or an int a float can hold."""
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond about 1.8e308
        return False


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum:g} to {maximum:g}"
    if minimum is not None:
        return f" >= {minimum:g}"
    if maximum is not None:
        return f" <= {maximum:g}"
    return ""


def run_checks(
    values: Mapping[str, Any],
    checks: Mapping[str, Check],
    *,
    rendered: bool,
    template_fields: Collection[str],
) -> dict[str, Any]:
    """Check each option given in ``values``; before rendering, a templated value waits.

    Returns the options whose check returned another object (a normalised value).
    """
    changed = {}
    for option, check in checks.items():
        if option not in values:
            continue
        value = values[option]
        if not rendered and option in template_fields and templated(value):
            continue
        accepted = check(option, value)
        if accepted is not value:
            changed[option] = accepted
    return changed


def items(option: str, value: Any) -> list[Any]:
    """A list of values (populations, for example): not a string or a dict."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise _fail(
            option, value, f"give a list, e.g. [task_a.output, task_b.output] (got a {type(value).__name__})"
        )
    if not value:
        raise _fail(option, value, "give at least one item")
    return list(value)


def name_or_mapping(option: str, value: Any) -> str | dict[str, str]:
    """One name, or ``{name: name}``."""
    if isinstance(value, Mapping):
        return string_mapping(option, value)
    if not isinstance(value, str):
        raise _fail(option, value, "give a column name, or {file_column: resource_column}")
    return name(option, value)


def timestamp(option: str, value: Any) -> Any:
    """An ISO 8601 date or timestamp ('2026-01-31', '2026-01-31T08:00:00+00:00'), a date or a datetime."""
    if isinstance(value, (dt.date, dt.datetime)):
        return value
    if isinstance(value, str):
        try:
            dt.datetime.fromisoformat(value.strip())
            return value
        except ValueError:
            pass
    raise _fail(
        option, value, "give an ISO 8601 timestamp such as '2026-01-31' or '2026-01-31T08:00:00+00:00'"
    )


def delimiter(option: str, value: Any) -> str:
    """One character, not a quote or a line end."""
    if not isinstance(value, str) or len(value) != 1 or value in '\r\n"':
        raise _fail(
            option, value, "give one character other than a quote or a line end, e.g. ',', ';', '|' or '\\t'"
        )
    return value


def one_of(*checks: Check) -> Check:
    """The first check that accepts the value; the last one's error otherwise."""

    def run(option: str, value: Any) -> Any:
        for check in checks[:-1]:
            try:
                return check(option, value)
            except CampaignError:
                continue
        return checks[-1](option, value)

    return run


def population(option: str, value: Any) -> Any:
    """What a population option takes: an upstream task's output (an XComArg, checked when it
    arrives), a Population, its dict, a list of row dicts, or a pandas DataFrame."""
    if isinstance(value, (Mapping, list, tuple)) or hasattr(value, "to_dict"):
        return value
    raise _fail(
        option,
        value,
        "give an upstream task's output (task.output or the XComArg a @task returns), a population dict, "
        f"a list of row dicts or a DataFrame (got a {type(value).__name__})",
    )
