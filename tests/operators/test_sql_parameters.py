"""parameters=: values from a dict reach each operator's SQL options as values, never as SQL."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

from airflow_campaign.operators.extract_file import ExtractFileOperator
from airflow_campaign.operators.targeting import (
    DeduplicationOperator,
    EnrichmentOperator,
    IncrementalQueryOperator,
    QueryOperator,
    SegmentationOperator,
)
from airflow_campaign.operators.update_data import UpdateDataOperator
from tests.conftest import count, ids, rows

# a value that would be SQL if it were pasted in: as a parameter it is only a string
HOSTILE = "FR') OR true --"


def test_query_operator_binds_one_dict_in_sql_where_additional_and_order_by(db, context):
    params = {"country": "FR", "points": 5000, "bonus": 7, "target": 6000, "hostile": HOSTILE}
    out = QueryOperator(
        task_id="params_where",
        where="country = %(country)s AND loyalty_points > %(points)s AND country <> %(hostile)s",
        additional="%(bonus)s::int AS bonus, email LIKE '%%@%%' AS has_at",
        order_by="abs(loyalty_points - %(target)s)",
        limit=3,
        parameters=params,
    ).execute(context("params_where"))
    closest = [
        r[0]
        for r in db.execute(
            "SELECT id FROM campaign.profiles WHERE country = 'FR' AND loyalty_points > 5000"
            " ORDER BY abs(loyalty_points - 6000), id LIMIT 3"
        )
    ]
    assert ids(db, out) == sorted(closest)
    assert {r["bonus"] for r in rows(db, out)} == {7}
    # the same placeholders in a whole SELECT, values in the subquery too
    out = QueryOperator(
        task_id="params_sql",
        sql="SELECT id FROM campaign.profiles WHERE country = %(country)s AND loyalty_points > %(points)s",
        parameters=params,
    ).execute(context("params_sql"))
    assert out["count"] == count(
        db, "SELECT count(*) FROM campaign.profiles WHERE country = 'FR' AND loyalty_points > 5000"
    )


def test_templated_parameters_are_rendered_then_bound(db, context):
    op = QueryOperator(
        task_id="params_conf",
        where="country = %(country)s",
        parameters={"country": "{{ dag_run.conf['country'] }}"},
    )
    ctx = context("params_conf")
    op.render_template_fields({**ctx, "dag_run": SimpleNamespace(conf={"country": "JP"})})
    out = op.execute(ctx)
    assert out["count"] == count(db, "SELECT count(*) FROM campaign.profiles WHERE country = 'JP'")
    # the hostile value selects nobody: it is compared, not run
    op.parameters = {"country": HOSTILE}
    assert op.execute(context("params_conf_hostile"))["count"] == 0


def test_incremental_query_operator_binds_parameters(db, context):
    out = IncrementalQueryOperator(
        task_id="params_incr", where="country = %(country)s", parameters={"country": "DE"}
    ).execute(context("params_incr"))
    assert out["count"] == count(db, "SELECT count(*) FROM campaign.profiles WHERE country = 'DE'")


def test_deduplication_operator_binds_parameters_in_prefer(db, context):
    population = [
        {"id": 1, "email": "a@x.org", "points": 10},
        {"id": 2, "email": "a@x.org", "points": 55},
        {"id": 3, "email": "a@x.org", "points": 90},
    ]
    out = DeduplicationOperator(
        task_id="params_dedup",
        population=population,
        on=["email"],
        prefer="abs(points - %(target)s)",
        parameters={"target": 60},
    ).execute(context("params_dedup"))
    assert ids(db, out) == [2]


def test_enrichment_operator_binds_one_dict_in_columns_and_joins(db, context):
    population = [{"id": i} for i in (1, 2, 3)]
    out = EnrichmentOperator(
        task_id="params_enrich",
        population=population,
        columns={"tag": "%(tag)s::text", "scaled": "p.id * %(factor)s"},
        joins=[
            {
                "table": "campaign.profiles",
                "alias": "q",
                "on": "q.id = p.id AND q.country <> %(hostile)s",
                "kind": "optional",
                "columns": {"email_domain": "split_part(q.email, %(at)s, 2)"},
            }
        ],
        parameters={"tag": HOSTILE, "factor": 10, "at": "@", "hostile": HOSTILE},
    ).execute(context("params_enrich"))
    got = rows(db, out)
    assert [(r["id"], r["tag"], r["scaled"]) for r in got] == [(i, HOSTILE, i * 10) for i in (1, 2, 3)]
    domains = [
        r[0]
        for r in db.execute(
            "SELECT split_part(email, '@', 2) FROM campaign.profiles WHERE id <= 3 ORDER BY id"
        )
    ]
    assert [r["email_domain"] for r in got] == domains


def test_segmentation_operator_binds_parameters_in_where_and_order_by(db, context):
    population = [{"id": i, "points": i * 10} for i in range(1, 11)]
    out = SegmentationOperator(
        task_id="params_seg",
        population=population,
        segments=[
            {"code": "high", "where": "points >= %(min)s", "order_by": "abs(points - %(mid)s)", "limit": 2},
        ],
        parameters={"min": 50, "mid": 80},
    ).execute(context("params_seg"))
    # points >= 50 are ids 5..10; the closest to 80 are 80 (id 8), then 70 and 90 tied: the key breaks it
    assert ids(db, out["high"]) == [7, 8]


def test_update_data_operator_binds_parameters_in_fields_and_when(scratch, context):
    db = scratch.db
    before = {
        r[0]: r[1:]
        for r in db.execute("SELECT id, loyalty_points, last_name FROM campaign.profiles WHERE id <= 2")
    }
    out = UpdateDataOperator(
        task_id="params_update",
        campaign_conn_id=scratch.conn_id,
        population=[{"id": 1}, {"id": 2}],
        resource="profiles",
        operation="update",
        fields={
            "loyalty_points": {"value": "%(points)s", "when": "dest.id = %(only)s"},
            "last_name": "%(name)s || '%%'",
        },
        parameters={"points": 1234, "only": 1, "name": HOSTILE},
    ).execute(context("params_update"))
    assert out["updated"] == 2
    after = {
        r[0]: r[1:]
        for r in db.execute("SELECT id, loyalty_points, last_name FROM campaign.profiles WHERE id <= 2")
    }
    assert after == {1: (1234, HOSTILE + "%"), 2: (before[2][0], HOSTILE + "%")}
    assert count(db, "SELECT count(*) FROM campaign.profiles WHERE last_name = %s", HOSTILE + "%") == 2


def test_extract_file_operator_binds_parameters_in_sql_and_column_expressions(db, context, tmp_path: Path):
    path = tmp_path / "fr.csv"
    out = ExtractFileOperator(
        task_id="params_extract",
        path=str(path),
        sql="SELECT id FROM campaign.profiles WHERE country = %(country)s AND email LIKE '%%@%%' ORDER BY id LIMIT 3",
        columns=["id", {"name": "label", "expr": "%(prefix)s || p.id"}],
        sort=["id"],
        timestamp_in_name=False,
        parameters={"country": "FR", "prefix": HOSTILE},
    ).execute(context("params_extract"))
    expected = [
        r[0]
        for r in db.execute(
            "SELECT id FROM campaign.profiles WHERE country = 'FR' AND email LIKE '%@%' ORDER BY id LIMIT 3"
        )
    ]
    with open(path, newline="") as handle:
        got = list(csv.DictReader(handle))
    assert out["rows"] == 3
    assert [(int(r["id"]), r["label"]) for r in got] == [(i, f"{HOSTILE}{i}") for i in expected]
