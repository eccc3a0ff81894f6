"""What a user reads when the database rejects their SQL: one period, and their own terms."""

from __future__ import annotations

import pytest

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.base import sql_errors
from airflow_campaign.operators.targeting import EnrichmentOperator, QueryOperator, SegmentationOperator
from airflow_campaign.operators.update_data import UpdateDataOperator
from airflow_campaign.population import Population
from tests.conftest import staged

TAIL = " Nothing was written; fix the option and clear the task."


def rejected(run, *args, **kwargs) -> str:
    with pytest.raises(CampaignError) as info:
        run(*args, **kwargs)
    message = str(info.value)
    assert ".." not in message
    return message


def query(context, **kwargs):
    ctx = context("bad_sql")
    try:
        return QueryOperator(task_id="bad_sql", **kwargs).execute(ctx)
    finally:
        assert ctx["ti"].xcoms == {}


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (  # the resource's alias r is ours: the user wrote the column alone
            "loyalty_point > 40",
            "where='loyalty_point > 40': the database rejected the SQL (UndefinedColumn: column \"loyalty_point\""
            ' does not exist). Hint: Perhaps you meant to reference the column "loyalty_points".',
        ),
        (  # the user qualifies with r: their terms are kept
            "r.loyalty_point > 40",
            "where='r.loyalty_point > 40': the database rejected the SQL (UndefinedColumn: column r.loyalty_point"
            ' does not exist). Hint: Perhaps you meant to reference the column "r.loyalty_points".',
        ),
        (  # the database's hint ends with a period: one is shown
            "email > 3",
            "where='email > 3': the database rejected the SQL (UndefinedFunction: operator does not exist: text >"
            " integer). Hint: No operator matches the given name and argument types. You might need to add"
            " explicit type casts.",
        ),
        (  # an alias that is no table of the query is the user's text, unchanged
            "w.score > 40",
            "where='w.score > 40': the database rejected the SQL (UndefinedTable: missing FROM-clause entry for"
            ' table "w").',
        ),
    ],
)
def test_query_where(db, context, where, message):
    assert rejected(query, context, where=where) == message + TAIL
    assert staged(db, context("bad_sql")) == []


def test_segmentation_where_speaks_of_the_population_columns(db, context):
    base = QueryOperator(task_id="base", where="id <= 300", columns=["loyalty_points"]).execute(
        context("base")
    )
    ctx = context("seg_bad")
    segments = [{"code": "rich", "where": "loyalty_point >= 8000", "percent": 10}]
    message = rejected(
        SegmentationOperator(task_id="seg_bad", population=base, segments=segments).execute, ctx
    )
    assert message == (
        'segments[0]: the database rejected the SQL (UndefinedColumn: column "loyalty_point" does not exist).'
        ' Hint: Perhaps you meant to reference the column "loyalty_points".' + TAIL
    )
    assert staged(db, ctx, suffixes=("rich", "others")) == []


@pytest.mark.parametrize(
    ("fields", "detail", "suggested"),
    [
        ({"loyalty_points": "point + 1"}, 'column "point" does not exist', '"points"'),
        (  # the condition is over the existing row: it needs no dest. the user did not write
            {"loyalty_points": {"value": "points", "when": "loyalty_point > 1"}},
            'column "loyalty_point" does not exist',
            '"loyalty_points"',
        ),
        # the user writes src. and dest. (documented): kept as written
        ({"loyalty_points": "src.point + 1"}, "column src.point does not exist", '"src.points"'),
        (
            {"loyalty_points": "dest.loyalty_point + 1"},
            "column dest.loyalty_point does not exist",
            '"dest.loyalty_points"',
        ),
    ],
)
def test_update_data_fields(scratch, context, fields, detail, suggested):
    row = "SELECT loyalty_points, updated_at FROM campaign.profiles WHERE id = 16"
    before = scratch.db.execute(row).fetchone()
    op = UpdateDataOperator(
        task_id="upd_bad",
        campaign_conn_id=scratch.conn_id,
        population=Population.inline([{"id": 16, "points": 7}]),
        fields=fields,
    )
    assert rejected(op.execute, context("upd_bad")) == (
        f"fields: the database rejected the SQL (UndefinedColumn: {detail}). Hint: Perhaps you meant to"
        f" reference the column {suggested}." + TAIL
    )
    assert scratch.db.execute(row).fetchone() == before


def test_enrichment_keeps_the_aliases_it_documents(db, context):
    base = QueryOperator(task_id="base", where="id <= 50", columns=["email"]).execute(context("base"))

    def enrich(columns):
        return EnrichmentOperator(task_id="enr_bad", population=base, columns=columns).execute(
            context("enr_bad")
        )

    # two suggestions that differ only by alias: the alias is what tells them apart
    assert rejected(enrich, {"x": "mail"}) == (
        'columns/joins: the database rejected the SQL (UndefinedColumn: column "mail" does not exist). Hint:'
        ' Perhaps you meant to reference the column "p.email" or the column "r.email".' + TAIL
    )
    assert "column r.mail does not exist" in rejected(enrich, {"x": "r.mail"})


def test_a_qualified_name_the_user_did_not_write_loses_our_alias(db):
    with pytest.raises(CampaignError) as info, sql_errors("where='score > 1'"):
        db.execute("SELECT w.score FROM (SELECT 1 AS id) w")
    assert str(info.value) == (
        "where='score > 1': the database rejected the SQL (UndefinedColumn: column \"score\" does not exist)."
        + TAIL
    )
    with pytest.raises(CampaignError) as info, sql_errors("where='w.score > 1'"):
        db.execute("SELECT w.score FROM (SELECT 1 AS id) w")
    assert "(UndefinedColumn: column w.score does not exist)." in str(info.value)
    # a quoted identifier holding a dot is the user's own name
    with pytest.raises(CampaignError) as info, sql_errors("where='\"w.score\" > 1'"):
        db.execute('SELECT "w.score" FROM (SELECT 1 AS id) w')
    assert '(UndefinedColumn: column "w.score" does not exist).' in str(info.value)
