"""EnrichmentOperator: columns from the resource and from related tables."""

from __future__ import annotations

import pytest

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.targeting import EnrichmentOperator, QueryOperator
from airflow_campaign.population import Population
from tests.conftest import rows, staged

APP = {"table": "campaign.app_subscriptions", "alias": "a", "on": "a.profile_id = p.id"}


@pytest.fixture
def first_200(context):
    return QueryOperator(task_id="base", where="id <= 200", columns=["country"]).execute(context("base"))


def test_columns_over_the_resource(db, context, first_200):
    out = EnrichmentOperator(
        task_id="enrich",
        population=first_200,
        columns={"email": "r.email", "is_fr": "r.country = 'FR'", "points_k": "r.loyalty_points / 1000"},
    ).execute(context("enrich"))
    assert out["columns"] == ["id", "country", "email", "is_fr", "points_k"]
    assert out["count"] == 200
    got = [(r["id"], r["email"], r["is_fr"], r["points_k"]) for r in rows(db, out)]
    assert (
        got
        == db.execute(
            "SELECT id, email, country = 'FR', loyalty_points / 1000 FROM campaign.profiles WHERE id <= 200 ORDER BY id"
        ).fetchall()
    )


def test_one_join_drops_rows_without_a_match(db, context, first_200):
    out = EnrichmentOperator(
        task_id="enrich_one",
        population=first_200,
        joins=[{**APP, "kind": "one", "columns": {"platform": "a.platform"}}],
    ).execute(context("enrich_one"))
    expected = db.execute(
        "SELECT profile_id, platform FROM campaign.app_subscriptions WHERE profile_id <= 200 ORDER BY 1"
    ).fetchall()
    assert 0 < len(expected) < 200
    assert [(r["id"], r["platform"]) for r in rows(db, out)] == expected


def test_optional_join_keeps_every_row(db, context, first_200):
    out = EnrichmentOperator(
        task_id="enrich_opt",
        population=first_200,
        joins=[{**APP, "columns": {"platform": "a.platform"}}],
    ).execute(context("enrich_opt"))
    assert out["count"] == 200
    got = [(r["id"], r["platform"]) for r in rows(db, out)]
    assert (
        got
        == db.execute(
            "SELECT p.id, a.platform FROM campaign.profiles p LEFT JOIN campaign.app_subscriptions a"
            " ON a.profile_id = p.id WHERE p.id <= 200 ORDER BY 1"
        ).fetchall()
    )


def test_optional_join_on_a_resource_column(db, context, first_200):
    out = EnrichmentOperator(
        task_id="enrich_q",
        population=first_200,
        joins=[
            {
                "table": "campaign.quarantine",
                "alias": "q",
                "on": "q.channel = 'email' AND q.address = lower(r.email)",
                "columns": {"quarantine_reason": "q.reason"},
            }
        ],
    ).execute(context("enrich_q"))
    got = {r["id"]: r["quarantine_reason"] for r in rows(db, out) if r["quarantine_reason"]}
    expected = dict(
        db.execute(
            "SELECT p.id, q.reason FROM campaign.profiles p JOIN campaign.quarantine q ON q.channel = 'email'"
            " AND q.address = lower(p.email) WHERE p.id <= 200"
        ).fetchall()
    )
    assert got == expected


def test_many_join_with_aggregates(db, context, first_200):
    out = EnrichmentOperator(
        task_id="enrich_many",
        population=first_200,
        columns={"email": "r.email"},
        joins=[
            {
                "table": "campaign.subscriptions",
                "alias": "s",
                "on": "s.profile_id = p.id",
                "kind": "many",
                "columns": {"n_subs": "count(*)", "first_sub": "min(s.subscribed_at)"},
            }
        ],
    ).execute(context("enrich_many"))
    assert out["columns"] == ["id", "country", "email", "n_subs", "first_sub"]
    got = [(r["id"], r["n_subs"], r["first_sub"]) for r in rows(db, out)]
    assert (
        got
        == db.execute(
            "SELECT p.id, count(s.profile_id), min(s.subscribed_at) FROM campaign.profiles p"
            " LEFT JOIN campaign.subscriptions s ON s.profile_id = p.id WHERE p.id <= 200 GROUP BY p.id ORDER BY 1"
        ).fetchall()
    )
    assert {n for _, n, _ in got} >= {0, 1, 2}


@pytest.mark.parametrize("with_one_join", [False, True])
def test_many_join_without_aggregates_is_an_error(db, context, first_200, with_one_join):
    ctx = context("enrich_many_bad")
    joins = [
        {
            "table": "campaign.subscriptions",
            "alias": "s",
            "on": "s.profile_id = p.id",
            "kind": "many",
            "columns": {"since": "s.subscribed_at"},
        }
    ]
    if with_one_join:  # a `one` join drops rows, so the output count alone cannot tell
        joins.insert(0, {"table": "campaign.profiles", "alias": "q", "on": "q.id = p.id", "kind": "one"})
    with pytest.raises(CampaignError, match=r"joins\[\d\] \(kind 'many'\): the columns must be aggregates"):
        EnrichmentOperator(task_id="enrich_many_bad", population=first_200, joins=joins).execute(ctx)
    assert staged(db, ctx) == []


def test_inline_population_without_a_resource(db, context):
    pop = Population.inline([{"code": "a", "n": 2}, {"code": "b", "n": 5}], key="code", resource=None)
    out = EnrichmentOperator(task_id="enrich_inline", population=pop, columns={"double": "p.n * 2"}).execute(
        context("enrich_inline")
    )
    assert [(r["code"], r["double"]) for r in rows(db, out)] == [("a", 4), ("b", 10)]


def test_one_or_optional_join_matching_several_rows_is_an_error(db, context, first_200):
    ctx = context("enrich_dup")
    subs = {"table": "campaign.subscriptions", "alias": "s", "on": "s.profile_id = p.id"}
    for kind in ("one", "optional"):
        with pytest.raises(
            CampaignError,
            match=rf"joins\[0\] \(campaign.subscriptions as s, kind '{kind}'\) matches several rows .*kind='many'",
        ):
            EnrichmentOperator(
                task_id="enrich_dup",
                population=first_200,
                joins=[{**subs, "kind": kind, "columns": {"since": "s.subscribed_at"}}],
            ).execute(ctx)
    assert staged(db, ctx) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"columns": {"country": "r.country"}}, r"columns: column name\(s\) \['country'\] already exist"),
        (
            {
                "columns": {"platform": "r.locale"},
                "joins": [{**APP, "columns": {"platform": "a.platform"}}],
            },
            r"joins\[0\].columns: column name\(s\) \['platform'\] already exist",
        ),
        (
            {"joins": [{**APP, "table": "campaign.apps", "columns": {"x": "a.x"}}]},
            r"joins\[0\].table='campaign.apps': no such table",
        ),
        (
            {"joins": [{**APP, "on": "a.owner = p.id", "columns": {"x": "a.app"}}]},
            r"joins\[0\].on='a.owner = p.id': the database rejected the SQL \(UndefinedColumn",
        ),
        (
            {"columns": {"bad": "r.nothing"}},
            r"columns/joins: the database rejected the SQL \(UndefinedColumn",
        ),
    ],
)
def test_bad_inputs_name_the_option_and_leave_nothing(db, context, first_200, kwargs, message):
    ctx = context("enrich_bad")
    with pytest.raises(CampaignError, match=message):
        EnrichmentOperator(task_id="enrich_bad", population=first_200, **kwargs).execute(ctx)
    assert staged(db, ctx) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "columns/joins: give at least one column to add"),
        ({"joins": [{"table": "t", "columns": {"x": "1"}}]}, r"joins\[0\]: missing \['alias', 'on'\]"),
        (
            {"joins": [{**APP, "kind": "several", "columns": {"x": "1"}}]},
            r"joins\[0\].kind='several' is not valid",
        ),
    ],
)
def test_bad_options_fail_at_parse_time(kwargs, message):
    with pytest.raises(CampaignError, match=message):
        EnrichmentOperator(task_id="parse", population=[{"id": 1}], **kwargs)
