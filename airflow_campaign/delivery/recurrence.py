"""Recurring deliveries: the run key of a DAG run, its reporting period, and backfill handling."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

AggregationPeriod = Literal["none", "day", "week", "month", "year"]
OnBackfill = Literal["simulate", "skip", "send"]


@dataclass(frozen=True)
class RunInfo:
    """What the engine needs to know about the DAG run a delivery task belongs to."""

    run_key: str
    run_id: str
    run_type: str
    period_key: str
    interval_start: dt.datetime | None
    interval_end: dt.datetime | None
    backfill: bool  # a backfill run, or a scheduled run staler than stale_after

    @property
    def label(self) -> str:
        return "backfill" if self.backfill else self.run_type


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def run_info(
    context: Any,
    aggregation_period: AggregationPeriod = "none",
    stale_after: dt.timedelta | None = None,
    now: dt.datetime | None = None,
) -> RunInfo:
    """The run key: the data interval (``start/end``), else the logical date, else the run id.

    The same interval always gives the same key, whichever run (scheduled, manual, backfill,
    cleared and re-run) processes it, so the ledger sends each recipient once per interval.
    """
    dag_run = context.get("dag_run")
    run_id = str(context.get("run_id") or _get(dag_run, "run_id") or "")
    start = context.get("data_interval_start") or _get(dag_run, "data_interval_start")
    end = context.get("data_interval_end") or _get(dag_run, "data_interval_end")
    logical = context.get("logical_date") or _get(dag_run, "logical_date")
    run_type = str(_get(dag_run, "run_type") or "manual")
    run_type = run_type.split(".")[-1].lower()  # DagRunType.BACKFILL_JOB -> backfill_job
    if start is not None and end is not None:
        key = f"{_iso(start)}/{_iso(end)}"
    elif logical is not None:
        key = _iso(logical)
    else:
        key = f"run:{run_id}"
    anchor = start or logical
    backfill = run_type.startswith("backfill")
    if not backfill and stale_after is not None and end is not None and run_type == "scheduled":
        backfill = (now or dt.datetime.now(dt.timezone.utc)) - end > stale_after
    return RunInfo(
        run_key=key,
        run_id=run_id,
        run_type=run_type,
        period_key=period_key(anchor, aggregation_period, key),
        interval_start=start,
        interval_end=end,
        backfill=backfill,
    )


def period_key(anchor: dt.datetime | None, period: AggregationPeriod, run_key: str) -> str:
    """The reporting period an occurrence belongs to (``2026-03-14``, ``2026-W11``, ``2026-03``, ``2026``)."""
    if period == "none" or anchor is None:
        return run_key
    day = anchor.astimezone(dt.timezone.utc) if anchor.tzinfo else anchor
    if period == "day":
        return day.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return day.strftime("%Y-%m")
    return day.strftime("%Y")


def _iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ" if value.tzinfo else "%Y-%m-%dT%H:%M:%S")
    return str(value)
