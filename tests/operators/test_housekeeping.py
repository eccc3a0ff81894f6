"""Pruning staging tables: PruneStagingOperator and `airflow-campaign staging prune`."""

from __future__ import annotations

import datetime as dt

import pytest

from airflow_campaign import cli
from airflow_campaign.errors import CampaignError
from airflow_campaign.hooks.campaign import CampaignHook
from airflow_campaign.operators.housekeeping import PruneStagingOperator
from airflow_campaign.operators.targeting import DeduplicationOperator, QueryOperator
from tests.conftest import orphans, staged


def exists(db, table):
    return db.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None


def age(db, table, days):
    db.execute(
        "UPDATE campaign.staging_tables SET updated_at = now() - make_interval(days => %s) WHERE table_name = %s",
        (days, table),
    )


@pytest.fixture
def populations(db, context):
    """Three fresh populations (named old, older and new); dropped afterwards."""
    made = {
        name: QueryOperator(task_id=f"prune_{name}", where="id <= 3").execute(context(f"prune_{name}"))
        for name in ("old", "older", "new")
    }
    yield made
    for pop in made.values():
        CampaignHook.drop_staging(db, pop["table"])


def test_operator_drops_what_is_older_than_the_retention(db, populations):
    age(db, populations["old"]["table"], 10)
    age(db, populations["older"]["table"], 30)
    dropped = PruneStagingOperator(task_id="prune", older_than="7d").execute({})
    assert {populations["old"]["table"], populations["older"]["table"]} <= set(dropped)
    assert populations["new"]["table"] not in dropped
    assert not exists(db, populations["old"]["table"])
    assert not exists(db, populations["older"]["table"])
    assert exists(db, populations["new"]["table"])
    recorded = {r[0] for r in db.execute("SELECT table_name FROM campaign.staging_tables")}
    assert populations["old"]["table"] not in recorded
    assert populations["new"]["table"] in recorded
    assert orphans(db) == []


def test_operator_takes_a_timedelta(db, populations):
    age(db, populations["older"]["table"], 30)
    age(db, populations["old"]["table"], 10)
    dropped = PruneStagingOperator(task_id="prune", older_than=dt.timedelta(days=20)).execute({})
    assert populations["older"]["table"] in dropped
    assert exists(db, populations["old"]["table"])


def test_a_downstream_task_reading_a_pruned_population_fails_clearly(db, context, populations):
    age(db, populations["old"]["table"], 10)
    PruneStagingOperator(task_id="prune", older_than="1d").execute({})
    ctx = context("after_prune")
    with pytest.raises(CampaignError, match=r"population: staging table .* no longer exists \(pruned"):
        DeduplicationOperator(task_id="after_prune", population=populations["old"]).execute(ctx)
    assert staged(db, ctx) == []


@pytest.mark.parametrize("value", ["7 days", "-1d", "d7", ""])
def test_bad_retention_fails_at_parse_time(value):
    with pytest.raises(CampaignError, match=r"older_than=.* is not a duration; write e.g. '7d'"):
        PruneStagingOperator(task_id="prune", older_than=value)


def test_cli_prune_dry_run_then_prune(db, seeded, populations, capsys):
    age(db, populations["old"]["table"], 10)
    capsys.readouterr()
    assert cli.main(["staging", "prune", "--older-than", "5d", "--dry-run", "--url", seeded]) == 0
    out = capsys.readouterr().out
    assert f"would drop {populations['old']['table']}" in out
    assert populations["new"]["table"] not in out
    assert exists(db, populations["old"]["table"])

    assert cli.main(["staging", "prune", "--older-than", "120h", "--url", seeded]) == 0
    out = capsys.readouterr().out
    assert f"dropped {populations['old']['table']}" in out
    assert "staging table(s) older than 120h" in out
    assert not exists(db, populations["old"]["table"])
    assert exists(db, populations["new"]["table"])


def test_cli_prune_refuses_a_bad_duration(db, seeded, populations, capsys):
    age(db, populations["old"]["table"], 10)
    assert cli.main(["staging", "prune", "--older-than", "a week", "--url", seeded]) == 1
    assert "--older-than='a week' is not a duration" in capsys.readouterr().err
    assert exists(db, populations["old"]["table"])


def test_a_templated_retention_is_checked_when_rendered(db, populations):
    age(db, populations["older"]["table"], 30)
    age(db, populations["old"]["table"], 10)
    op = PruneStagingOperator(task_id="prune", older_than="{{ params.keep }}")  # no parse-time error
    op.render_template_fields({"params": {"keep": "20d"}})
    assert op.older_than == "20d"
    dropped = op.execute({})
    assert populations["older"]["table"] in dropped
    assert exists(db, populations["old"]["table"])

    bad = PruneStagingOperator(task_id="prune", older_than="{{ params.keep }}")
    bad.render_template_fields({"params": {"keep": "twenty days"}})
    with pytest.raises(CampaignError, match=r"older_than='twenty days' is not a duration"):
        bad.execute({})
    assert exists(db, populations["old"]["table"])
