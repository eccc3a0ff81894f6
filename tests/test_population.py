"""The Population contract: forms accepted, the XCom form, and binding rows into SQL."""

from __future__ import annotations

import datetime as dt
import decimal
import json

import pandas as pd
import pytest
from psycopg import sql

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.targeting import QueryOperator
from airflow_campaign.population import Population, coerce


def test_inline_rows_take_columns_from_every_row_in_first_seen_order():
    pop = Population.inline([{"id": 1, "a": "x"}, {"id": 2, "b": True}])
    assert pop.kind == "inline"
    assert pop.columns == ["id", "a", "b"]
    assert pop.count == 2
    assert (pop.key, pop.resource) == ("id", "profiles")


def test_inline_rows_without_the_key_name_the_key_and_the_fix():
    with pytest.raises(CampaignError, match=r"no key column 'id'.*key='<column>'"):
        Population.inline([{"email": "a@example.com"}])


def test_empty_inline_population_has_only_the_key():
    pop = Population.inline([], key="code", resource=None)
    assert (pop.columns, pop.count, pop.resource) == (["code"], 0, None)


def test_dict_form_round_trips_and_table_form_is_small():
    table = Population(
        kind="table", key="id", resource="profiles", columns=["id"], count=10**9, table="campaign_staging.t"
    )
    form = table.to_dict()
    assert "rows" not in form
    assert len(json.dumps(form)) < 200
    assert coerce(form) == table
    inline = Population.inline([{"id": 1}, {"id": 2}])
    assert coerce(inline.to_dict()).rows == [{"id": 1}, {"id": 2}]
    assert coerce(inline) is inline


def test_list_of_dicts_and_dataframe_become_inline_populations():
    assert coerce([{"id": 3}, {"id": 4}]).count == 2
    frame = pd.DataFrame({"id": [1, 2], "score": [1.5, float("nan")], "name": ["a", None]})
    pop = coerce(frame)
    assert pop.kind == "inline"
    assert pop.rows == [{"id": 1, "score": 1.5, "name": "a"}, {"id": 2, "score": None, "name": None}]
    assert all(type(r["id"]) is int for r in pop.rows or [])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"table": "x"}, r"population: a dict must be a population's dict form.*got keys \['table'\]"),
        ({"kind": "table", "key": "id"}, r"population: the population dict lacks \['table'\]"),
        ("campaign_staging.t", r"population: expected a Population.*got str"),
        ([{"id": 1}, 2], r"population: expected a Population.*got list"),
    ],
)
def test_other_values_are_refused_naming_the_option(value, message):
    with pytest.raises(CampaignError, match=message):
        Population.from_value(value, "population")


def test_inline_rows_bind_as_typed_temporary_table(db):
    rows = [
        {
            "id": 1,
            "flag": True,
            "amount": decimal.Decimal("1.25"),
            "ratio": 0.5,
            "at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
            "day": dt.date(2026, 1, 2),
            "extra": {"k": [1, 2]},
            "name": "Zoë",
            "mixed": 7,
        },
        {"id": 2, "flag": None, "name": None, "mixed": None},
    ]
    pop = Population.inline(rows)
    with db.transaction():
        rel = pop.bind(db)
        types = dict(
            db.execute(
                sql.SQL(
                    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
                    " WHERE a.attrelid = {}::regclass AND a.attnum > 0"
                ).format(sql.Literal(rel.as_string(db)))
            ).fetchall()
        )
        got = db.execute(
            sql.SQL("SELECT id, flag, amount, at, day, extra->'k'->>1, name FROM {} ORDER BY id").format(rel)
        ).fetchall()
    assert types == {
        "id": "bigint",
        "flag": "boolean",
        "amount": "numeric",
        "ratio": "numeric",
        "at": "timestamp with time zone",
        "day": "date",
        "extra": "jsonb",
        "name": "text",
        "mixed": "bigint",
    }
    assert got[0] == (1, True, decimal.Decimal("1.25"), rows[0]["at"], dt.date(2026, 1, 2), "2", "Zoë")
    assert got[1] == (2, None, None, None, None, None, None)
    # ON COMMIT DROP: nothing outlives the transaction
    assert db.execute("SELECT to_regclass(%s)", (rel.as_string(db),)).fetchone()[0] is None


def test_binding_a_dropped_staging_table_says_to_rerun_upstream(db, context):
    out = QueryOperator(task_id="gone", where="id <= 3").execute(context("gone"))
    pop = coerce(out)
    schema, table = out["table"].split(".")
    db.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, table)))
    with pytest.raises(
        CampaignError, match=r"upstream: staging table .* no longer exists.*re-run the upstream"
    ):
        with db.transaction():
            pop.bind(db, "upstream")


def test_binding_an_emptied_staging_table_says_why(db, context):
    # what PostgreSQL leaves of an UNLOGGED table after a crash: the table, without its rows
    out = QueryOperator(task_id="emptied", where="id <= 3").execute(context("emptied"))
    schema, table = out["table"].split(".")
    db.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(schema, table)))
    with pytest.raises(
        CampaignError, match=r"upstream: staging table .* is empty, but .* wrote 3 row\(s\).*crash"
    ):
        with db.transaction():
            coerce(out).bind(db, "upstream")


def test_from_table_declares_a_table_whose_columns_and_count_are_read_later():
    pop = Population.from_table("crm.customers", key="customer_no", resource="crm.customers", trusted=True)
    assert (pop.kind, pop.table, pop.key, pop.resource, pop.trusted) == (
        "table",
        "crm.customers",
        "customer_no",
        "crm.customers",
        True,
    )
    assert "trusted" not in pop.to_dict()
    assert not coerce(pop.to_dict()).trusted
    assert coerce(pop) is pop  # the object passed in the DAG file keeps its trust
    assert not Population.from_table("campaign_staging.t").trusted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"table": ""}, r"Population.from_table: table='': give a name"),
        ({"table": "t", "key": 3}, r"Population.from_table: key=3: give a column name"),
        ({"table": "t", "count": "9"}, r"Population.from_table: count='9': give the row count"),
    ],
)
def test_from_table_checks_its_arguments(kwargs, message):
    with pytest.raises(CampaignError, match=message):
        Population.from_table(**kwargs)
