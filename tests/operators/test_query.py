"""QueryOperator: selecting a resource's rows into a staging-table population."""

from __future__ import annotations

import json

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowSkipException

from airflow_campaign.errors import CampaignError
from airflow_campaign.hooks.campaign import CampaignHook, staging_table_name
from airflow_campaign.operators.targeting import DeduplicationOperator, ExclusionOperator, QueryOperator
from airflow_campaign.population import Population
from tests.conftest import count, ids, rows, staged


@pytest.fixture(scope="module")
def orders(seeded):
    """A user table whose key (customer_id) repeats: qtest.orders."""
    with psycopg.connect(seeded, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS qtest CASCADE")
        conn.execute("CREATE SCHEMA qtest")
        conn.execute(
            "CREATE TABLE qtest.orders AS SELECT g AS order_id, 1 + g % 4 AS customer_id,"
            " (ARRAY['FR', 'DE'])[1 + g % 2] AS country, g * 10 AS amount FROM generate_series(1, 20) g"
        )
    yield "qtest.orders"
    with psycopg.connect(seeded, autocommit=True) as conn:
        conn.execute("DROP SCHEMA qtest CASCADE")


def test_where_and_columns_select_the_matching_profiles(db, context):
    out = QueryOperator(
        task_id="fr", where="country = 'FR' AND loyalty_points > 5000", columns=["email", "loyalty_points"]
    ).execute(context("fr"))
    expected = [
        r[0]
        for r in db.execute(
            "SELECT id FROM campaign.profiles WHERE country = 'FR' AND loyalty_points > 5000 ORDER BY id"
        )
    ]
    assert len(expected) > 50
    assert ids(db, out) == expected
    assert out["count"] == len(expected)
    assert out["columns"] == ["id", "email", "loyalty_points"]
    assert (out["kind"], out["key"], out["resource"]) == ("table", "id", "profiles")
    assert all(r["loyalty_points"] > 5000 for r in rows(db, out))


def test_no_where_selects_every_profile(db, context):
    out = QueryOperator(task_id="all").execute(context("all"))
    assert out["count"] == count(db, "SELECT count(*) FROM campaign.profiles") == 3000


def test_additional_adds_computed_columns(db, context):
    out = QueryOperator(
        task_id="add",
        where="id <= 50",
        additional="date_part('year', birth_date)::int AS birth_year, upper(country) AS cc",
    ).execute(context("add"))
    assert out["columns"] == ["id", "birth_year", "cc"]
    got = [(r["id"], r["birth_year"], r["cc"]) for r in rows(db, out)]
    assert (
        got
        == db.execute(
            "SELECT id, date_part('year', birth_date)::int, upper(country) FROM campaign.profiles"
            " WHERE id <= 50 ORDER BY id"
        ).fetchall()
    )


def test_limit_with_order_by_on_a_column_not_selected(db, context):
    out = QueryOperator(task_id="top", limit=7, order_by="loyalty_points DESC").execute(context("top"))
    expected = [
        r[0] for r in db.execute("SELECT id FROM campaign.profiles ORDER BY loyalty_points DESC, id LIMIT 7")
    ]
    assert out["count"] == 7
    assert sorted(ids(db, out)) == sorted(expected)


def test_limit_without_order_by_takes_the_lowest_keys(db, context):
    out = QueryOperator(task_id="low", where="country = 'DE'", limit=5).execute(context("low"))
    expected = [
        r[0] for r in db.execute("SELECT id FROM campaign.profiles WHERE country = 'DE' ORDER BY id LIMIT 5")
    ]
    assert ids(db, out) == expected


def test_limit_zero_is_an_empty_population(db, context):
    out = QueryOperator(task_id="zero", limit=0).execute(context("zero"))
    assert out["count"] == 0
    assert ids(db, out) == []


def test_where_with_parameters(db, context):
    out = QueryOperator(
        task_id="params",
        where="country = %(country)s AND loyalty_points >= %(points)s",
        parameters={"country": "JP", "points": 9000},
    ).execute(context("params"))
    expected = count(
        db, "SELECT count(*) FROM campaign.profiles WHERE country = 'JP' AND loyalty_points >= 9000"
    )
    assert out["count"] == expected > 0


def test_sql_with_parameters_is_distinct_by_default(db, context):
    query = (
        "SELECT s.profile_id AS id FROM campaign.subscriptions s JOIN campaign.services v ON v.id = s.service_id"
        " WHERE v.name = ANY(%(names)s)"
    )
    params = {"names": ["newsletter", "promotions"]}
    out = QueryOperator(task_id="subs", sql=query, parameters=params).execute(context("subs"))
    both = QueryOperator(task_id="subs_all", sql=query, parameters=params, distinct=False).execute(
        context("subs_all")
    )
    unique = count(
        db,
        "SELECT count(DISTINCT s.profile_id) FROM campaign.subscriptions s JOIN campaign.services v"
        " ON v.id = s.service_id WHERE v.name IN ('newsletter', 'promotions')",
    )
    total = count(
        db,
        "SELECT count(*) FROM campaign.subscriptions s JOIN campaign.services v"
        " ON v.id = s.service_id WHERE v.name IN ('newsletter', 'promotions')",
    )
    assert total > unique > 0
    assert (out["count"], both["count"]) == (unique, total)


def test_sql_with_limit_and_order_by(db, context):
    out = QueryOperator(
        task_id="sql_limit",
        sql="SELECT id, loyalty_points FROM campaign.profiles WHERE country = 'US';",
        limit=3,
        order_by="loyalty_points",
    ).execute(context("sql_limit"))
    expected = db.execute(
        "SELECT id FROM campaign.profiles WHERE country = 'US' ORDER BY loyalty_points, id LIMIT 3"
    ).fetchall()
    assert sorted(ids(db, out)) == sorted(r[0] for r in expected)


def test_user_table_resource_with_a_repeating_key(db, context, orders):
    out = QueryOperator(task_id="cust", resource=orders, key="customer_id", columns=["country"]).execute(
        context("cust")
    )
    assert (out["resource"], out["key"], out["columns"]) == (
        orders,
        "customer_id",
        ["customer_id", "country"],
    )
    assert out["count"] == count(
        db, "SELECT count(*) FROM (SELECT DISTINCT customer_id, country FROM qtest.orders) d"
    )
    every = QueryOperator(
        task_id="cust_all", resource=orders, key="customer_id", columns=["country"], distinct=False
    ).execute(context("cust_all"))
    assert every["count"] == 20


def test_user_table_resource_default_key(db, context, orders):
    db.execute("CREATE TABLE qtest.shops (id int PRIMARY KEY, city text)")
    db.execute("INSERT INTO qtest.shops VALUES (1, 'Lyon'), (2, 'Nantes'), (3, 'Lyon')")
    out = QueryOperator(
        task_id="shops", resource="qtest.shops", where="city = 'Lyon'", columns=["city"]
    ).execute(context("shops"))
    assert ids(db, out) == [1, 3]


def test_on_empty_continue_passes_an_empty_population(db, context):
    out = QueryOperator(task_id="none", where="false").execute(context("none"))
    assert out["count"] == 0
    assert ids(db, out) == []


def test_on_empty_skip_marks_the_task_skipped_and_writes_nothing(db, context):
    ctx = context("skip_me")
    with pytest.raises(AirflowSkipException, match="on_empty='skip'"):
        QueryOperator(task_id="skip_me", where="false", on_empty="skip").execute(ctx)
    assert staged(db, ctx) == []


def test_on_empty_fail_raises_and_writes_nothing(db, context):
    ctx = context("fail_me")
    with pytest.raises(CampaignError, match="fail_me: the result is empty and on_empty='fail'"):
        QueryOperator(task_id="fail_me", where="false", on_empty="fail").execute(ctx)
    assert staged(db, ctx) == []


def test_staged_helper_sees_what_a_successful_task_leaves(db, context):
    ctx = context("seen")
    out = QueryOperator(task_id="seen", where="id = 1").execute(ctx)
    assert staged(db, ctx) == [f"recorded {out['table']}", f"table {out['table']}"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"columns": ["email", "shoe_size"]},
            r"columns: unknown column\(s\) \['shoe_size'\] in resource 'profiles'; available: .*'email'",
        ),
        ({"resource": "nowhere.table"}, r"resource='nowhere.table': no table nowhere.table"),
        ({"resource": "profiles", "key": "uuid"}, r"resource='profiles' has no key column 'uuid'; pass key="),
        (
            {"where": "shoe_size > 40"},
            r"where='shoe_size > 40': the database rejected the SQL \(UndefinedColumn: column \"shoe_size\"",
        ),
        (
            {"where": "country = "},
            r"where='country = ': is not valid SQL here: it ends before the SQL is complete",
        ),
        ({"additional": "1/0 AS boom"}, r"additional='1/0 AS boom': the database rejected the SQL"),
        (
            {"sql": "SELECT email FROM campaign.profiles"},
            r"sql='SELECT email FROM campaign.profiles': the result has no key column 'id'",
        ),
    ],
)
def test_bad_inputs_name_the_option_and_leave_nothing(db, context, kwargs, message):
    ctx = context("bad_query")
    with pytest.raises(CampaignError, match=message):
        QueryOperator(task_id="bad_query", **kwargs).execute(ctx)
    assert staged(db, ctx) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sql": "SELECT 1 AS id", "where": "true"}, "do not combine it with where="),
        ({"limit": -1}, r"limit=-1: give a whole number >= 0"),
        (
            {"on_empty": "ignore"},
            r"on_empty='ignore' is not valid; use one of \['skip', 'continue', 'fail'\]",
        ),
    ],
)
def test_bad_options_fail_at_parse_time(kwargs, message):
    with pytest.raises(CampaignError, match=message):
        QueryOperator(task_id="parse", **kwargs)


def test_a_retry_replaces_the_staging_table(db, context):
    first = QueryOperator(task_id="retry", where="id <= 10").execute(context("retry", run_id="r_retry"))
    second = QueryOperator(task_id="retry", where="id BETWEEN 100 AND 104").execute(
        context("retry", run_id="r_retry")
    )
    assert first["table"] == second["table"]
    assert first["table"].endswith(staging_table_name("test_dag", "retry", "r_retry"))
    assert ids(db, second) == [100, 101, 102, 103, 104]
    recorded = db.execute(
        "SELECT table_name, row_count FROM campaign.staging_tables WHERE dag_id = 'test_dag' AND task_id = 'retry'"
    ).fetchall()
    assert recorded == [(second["table"], 5)]
    other_run = QueryOperator(task_id="retry", where="id <= 2").execute(context("retry", run_id="r_other"))
    assert other_run["table"] != first["table"]
    assert ids(db, second) == [100, 101, 102, 103, 104]


def test_a_retry_that_fails_in_the_select_keeps_the_first_tries_table(db, context):
    """The table is replaced (DROP, then CREATE ... AS SELECT) in one transaction: a try whose
    SELECT fails at run time leaves the previous try's table and its recorded count."""
    first = QueryOperator(task_id="retry_fail", where="id <= 3").execute(context("retry_fail", run_id="r"))
    with pytest.raises(CampaignError, match=r"where=.*the database rejected the SQL \(DivisionByZero"):
        QueryOperator(task_id="retry_fail", where="id / (id - id) > 0").execute(
            context("retry_fail", run_id="r")
        )
    assert ids(db, first) == [1, 2, 3]
    assert db.execute(
        "SELECT row_count FROM campaign.staging_tables WHERE table_name = %s", (first["table"],)
    ).fetchall() == [(3,)]


def test_where_and_columns_are_templated(db, context):
    op = QueryOperator(
        task_id="templated", where="country = '{{ params.country }}'", columns=["{{ params.column }}"]
    )
    op.render_template_fields({"params": {"country": "BR", "column": "locale"}})
    out = op.execute(context("templated"))
    assert out["columns"] == ["id", "locale"]
    assert {r["locale"] for r in rows(db, out)} == {"pt_BR"}
    assert out["count"] == count(db, "SELECT count(*) FROM campaign.profiles WHERE country = 'BR'")


def test_a_million_rows_pass_between_tasks_in_a_tiny_xcom(db, context):
    db.execute("DROP SCHEMA IF EXISTS t1m CASCADE")
    db.execute("CREATE SCHEMA t1m")
    made: list[str] = []
    try:
        db.execute(
            "CREATE TABLE t1m.big AS SELECT g AS id, 'user' || g || '@example.com' AS email"
            " FROM generate_series(1, 1000000) g"
        )
        db.execute("ALTER TABLE t1m.big ADD PRIMARY KEY (id)")
        big = QueryOperator(task_id="big", resource="t1m.big").execute(context("big"))
        made.append(big["table"])
        assert big["count"] == 1_000_000
        assert len(json.dumps(big)) < 1024
        assert count(db, f"SELECT count(*) FROM {big['table']}") == 1_000_000
        drop = Population.inline([{"id": 1}, {"id": 500_000}, {"id": 2_000_000}], resource="t1m.big")
        rest = ExclusionOperator(task_id="rest", primary=big, exclude=drop).execute(context("rest"))
        made.append(rest["table"])
        assert rest["count"] == 999_998
        assert len(json.dumps(rest)) < 1024
        assert count(db, f"SELECT count(*) FROM {rest['table']} WHERE id IN (1, 500000)") == 0
        dedup = DeduplicationOperator(task_id="dedup", population=Population.from_value(rest)).execute(
            context("dedup")
        )
        made.append(dedup["table"])
        assert dedup["count"] == 999_998
    finally:
        for table in made:
            CampaignHook.drop_staging(db, table)
        db.execute("DROP SCHEMA t1m CASCADE")


def test_distinct_is_kept_for_a_key_that_is_only_partially_unique(db, context, orders):
    db.execute("CREATE TABLE qtest.visits (visitor_id int, page text)")
    db.execute("CREATE UNIQUE INDEX ON qtest.visits (visitor_id) WHERE page = 'home'")
    db.execute("INSERT INTO qtest.visits VALUES (1, 'home'), (2, 'shop'), (2, 'shop'), (3, 'shop')")
    out = QueryOperator(
        task_id="visits", resource="qtest.visits", key="visitor_id", columns=["page"]
    ).execute(context("visits"))
    assert ids(db, out) == [1, 2, 3]
