"""Run keys, reporting periods and backfill detection from an Airflow context."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

from airflow_campaign.delivery.recurrence import period_key, run_info

UTC = dt.timezone.utc
START = dt.datetime(2026, 3, 14, tzinfo=UTC)
END = START + dt.timedelta(days=1)


def ctx(run_type="scheduled", start=START, end=END, logical=START, run_id="scheduled__2026-03-14"):
    dag_run = SimpleNamespace(run_type=run_type, run_id=run_id)
    return {
        "dag_run": dag_run,
        "run_id": run_id,
        "data_interval_start": start,
        "data_interval_end": end,
        "logical_date": logical,
    }


def test_the_run_key_is_the_data_interval_whoever_runs_it():
    scheduled = run_info(ctx())
    backfill = run_info(ctx(run_type="backfill", run_id="backfill__2026-03-14"))
    assert scheduled.run_key == backfill.run_key == "2026-03-14T00:00:00Z/2026-03-15T00:00:00Z"
    assert not scheduled.backfill and backfill.backfill


def test_without_an_interval_the_logical_date_then_the_run_id():
    assert run_info(ctx(start=None, end=None)).run_key == "2026-03-14T00:00:00Z"
    manual = run_info(ctx(run_type="manual", start=None, end=None, logical=None, run_id="manual__x"))
    assert manual.run_key == "run:manual__x"


def test_stale_scheduled_runs_count_as_backfill():
    now = END + dt.timedelta(days=3)
    assert run_info(ctx(), stale_after=dt.timedelta(days=2), now=now).backfill
    assert not run_info(ctx(), stale_after=dt.timedelta(days=4), now=now).backfill
    assert not run_info(ctx(run_type="manual"), stale_after=dt.timedelta(days=2), now=now).backfill


def test_periods():
    assert period_key(START, "day", "k") == "2026-03-14"
    assert period_key(START, "week", "k") == "2026-W11"
    assert period_key(START, "month", "k") == "2026-03"
    assert period_key(START, "year", "k") == "2026"
    assert period_key(START, "none", "k") == "k"
    assert run_info(ctx(), "week").period_key == "2026-W11"
