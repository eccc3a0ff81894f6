"""UnionOperator, IntersectionOperator and ExclusionOperator, by key or by columns."""

from __future__ import annotations

import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowSkipException
from psycopg import sql

from airflow_campaign.errors import CampaignError
from airflow_campaign.hooks.campaign import CampaignHook
from airflow_campaign.operators.targeting import (
    ExclusionOperator,
    IntersectionOperator,
    QueryOperator,
    UnionOperator,
)
from airflow_campaign.population import Population
from tests.conftest import ids, rows, staged


def select(db, where):
    return [
        r[0]
        for r in db.execute(
            sql.SQL("SELECT id FROM campaign.profiles WHERE {} ORDER BY id").format(sql.SQL(where))
        )
    ]


@pytest.fixture
def fr_and_news(context):
    fr = QueryOperator(task_id="fr", where="country = 'FR'", columns=["email", "country"]).execute(
        context("fr")
    )
    news = QueryOperator(
        task_id="news",
        sql="SELECT s.profile_id AS id FROM campaign.subscriptions s JOIN campaign.services v"
        " ON v.id = s.service_id WHERE v.name = 'newsletter'",
    ).execute(context("news"))
    return fr, news


NEWS = "id IN (SELECT profile_id FROM campaign.subscriptions s JOIN campaign.services v ON v.id = s.service_id WHERE v.name = 'newsletter')"


def test_union_by_key(db, context, fr_and_news):
    fr, news = fr_and_news
    out = UnionOperator(task_id="u", populations=[fr, news]).execute(context("u"))
    assert ids(db, out) == select(db, f"country = 'FR' OR {NEWS}")
    assert out["columns"] == ["id"]  # the columns common to every input
    assert (out["resource"], out["key"]) == ("profiles", "id")


def test_union_keeps_the_first_inputs_values(db, context):
    a = Population.inline([{"id": 1, "tag": "first"}, {"id": 2, "tag": "first"}])
    b = Population.inline([{"id": 2, "tag": "second"}, {"id": 3, "tag": "second"}])
    out = UnionOperator(task_id="u_first", populations=[a, b]).execute(context("u_first"))
    assert [(r["id"], r["tag"]) for r in rows(db, out)] == [(1, "first"), (2, "first"), (3, "second")]


def test_union_limit_caps_the_size(db, context, fr_and_news):
    fr, news = fr_and_news
    out = UnionOperator(task_id="u_cap", populations=[fr, news], limit=25).execute(context("u_cap"))
    assert out["count"] == 25
    assert ids(db, out) == select(db, f"country = 'FR' OR {NEWS}")[:25]


def test_intersection_by_key(db, context, fr_and_news):
    fr, news = fr_and_news
    out = IntersectionOperator(task_id="i", populations=[fr, news]).execute(context("i"))
    expected = select(db, f"country = 'FR' AND {NEWS}")
    assert len(expected) > 20
    assert ids(db, out) == expected
    assert out["columns"] == ["id", "email", "country"]  # the first input's columns


def test_exclusion_by_key_of_several_inputs(db, context, fr_and_news):
    fr, news = fr_and_news
    dnc = Population.inline([{"id": i} for i in select(db, "country = 'FR'")[:5]])
    out = ExclusionOperator(task_id="x", primary=fr, exclude=[news, dnc.to_dict()]).execute(context("x"))
    expected = [
        i for i in select(db, f"country = 'FR' AND NOT {NEWS}") if i not in select(db, "country = 'FR'")[:5]
    ]
    assert ids(db, out) == expected


def test_exclusion_takes_a_list_of_rows_and_a_dataframe(db, context, fr_and_news):
    fr, _ = fr_and_news
    first = select(db, "country = 'FR'")[:3]
    out = ExclusionOperator(task_id="x_rows", primary=fr, exclude=[{"id": i} for i in first]).execute(
        context("x_rows")
    )
    assert ids(db, out) == select(db, "country = 'FR'")[3:]
    frame = pd.DataFrame({"id": first[:1]})
    out = ExclusionOperator(task_id="x_df", primary=fr, exclude=frame).execute(context("x_df"))
    assert ids(db, out) == select(db, "country = 'FR'")[1:]


def test_exclusion_by_email_across_resources(db, context, fr_and_news):
    fr, _ = fr_and_news
    emails = [
        r[0]
        for r in db.execute(
            "SELECT email FROM campaign.profiles WHERE country = 'FR' AND email IS NOT NULL ORDER BY id LIMIT 4"
        )
    ]
    db.execute("DROP TABLE IF EXISTS public.optouts")
    db.execute("CREATE TABLE public.optouts (optout_id int PRIMARY KEY, email text)")
    try:
        db.execute(
            "INSERT INTO public.optouts SELECT row_number() OVER (), e FROM unnest(%s::text[]) e", (emails,)
        )
        optouts = QueryOperator(
            task_id="optouts", resource="optouts", key="optout_id", columns=["email"]
        ).execute(context("optouts"))
        assert optouts["resource"] == "optouts"
        out = ExclusionOperator(task_id="x_email", primary=fr, exclude=optouts, on=["email"]).execute(
            context("x_email")
        )
        expected = [
            r[0]
            for r in db.execute(
                "SELECT id FROM campaign.profiles WHERE country = 'FR' AND (email IS NULL OR NOT email = ANY(%s))"
                " ORDER BY id",
                (emails,),
            )
        ]
        assert ids(db, out) == expected
        assert out["resource"] == "profiles"
    finally:
        db.execute("DROP TABLE public.optouts")


def test_intersection_and_union_by_columns(db, context):
    a = Population.inline([{"id": 1, "email": "x@example.com"}, {"id": 2, "email": "y@example.com"}])
    b = Population.inline(
        [{"id": 10, "email": "y@example.com"}, {"id": 11, "email": "z@example.com"}], resource=None
    )
    inter = IntersectionOperator(task_id="i_on", populations=[a, b], on=["email"]).execute(context("i_on"))
    assert [(r["id"], r["email"]) for r in rows(db, inter)] == [(2, "y@example.com")]
    union = UnionOperator(task_id="u_on", populations=[a, b], on=["email"]).execute(context("u_on"))
    assert [(r["id"], r["email"]) for r in rows(db, union)] == [
        (1, "x@example.com"),
        (2, "y@example.com"),
        (11, "z@example.com"),
    ]


def test_a_population_of_another_resource_is_refused(db, context, fr_and_news):
    fr, _ = fr_and_news
    other = Population.inline([{"id": 1}], resource="public.customers")
    ctx = context("mixed")
    with pytest.raises(
        CampaignError,
        match=r"populations\[1\] is a population of resource 'public.customers' .* not 'profiles' .* like populations\[0\].*on=\[\.\.\.\]",
    ):
        UnionOperator(task_id="mixed", populations=[fr, other]).execute(ctx)
    with pytest.raises(
        CampaignError, match=r"^exclude\[1\] is a population of resource 'public.customers'.* like primary"
    ):
        ExclusionOperator(task_id="mixed", primary=fr, exclude=[fr, other]).execute(ctx)
    with pytest.raises(CampaignError, match=r"^exclude is a population of resource 'public.customers'"):
        ExclusionOperator(task_id="mixed", primary=fr, exclude=other).execute(ctx)
    assert staged(db, ctx) == []


def test_unknown_compare_column_names_the_input(db, context, fr_and_news):
    fr, news = fr_and_news
    ctx = context("bad_on")
    with pytest.raises(
        CampaignError, match=r"on=\['email'\] \(in populations\[1\]\): unknown column\(s\) \['email'\]"
    ):
        IntersectionOperator(task_id="bad_on", populations=[fr, news], on=["email"]).execute(ctx)
    assert staged(db, ctx) == []


def test_a_pruned_input_is_a_clear_error(db, context, fr_and_news):
    fr, news = fr_and_news
    CampaignHook.drop_staging(db, news["table"])
    ctx = context("after_prune")
    with pytest.raises(
        CampaignError,
        match=r"populations\[1\]: staging table campaign_staging\.\S+ no longer exists .*re-run the upstream task",
    ):
        UnionOperator(task_id="after_prune", populations=[fr, news]).execute(ctx)
    with pytest.raises(CampaignError, match=r"exclude: staging table .* no longer exists"):
        ExclusionOperator(task_id="after_prune", primary=fr, exclude=news).execute(ctx)
    assert staged(db, ctx) == []


def test_an_empty_result_follows_on_empty(db, context, fr_and_news):
    fr, _ = fr_and_news
    ctx = context("empty_x")
    with pytest.raises(AirflowSkipException):
        ExclusionOperator(task_id="empty_x", primary=fr, exclude=fr, on_empty="skip").execute(ctx)
    with pytest.raises(CampaignError, match="empty_x: the result is empty and on_empty='fail'"):
        ExclusionOperator(task_id="empty_x", primary=fr, exclude=fr, on_empty="fail").execute(ctx)
    assert staged(db, ctx) == []
    out = ExclusionOperator(task_id="empty_x", primary=fr, exclude=fr).execute(ctx)
    assert out["count"] == 0


def test_inputs_that_are_not_populations(db, context):
    ctx = context("not_pop")
    with pytest.raises(CampaignError, match=r"populations\[1\]: expected a Population.*got int"):
        UnionOperator(task_id="not_pop", populations=[[{"id": 1}], 42]).execute(ctx)
    assert staged(db, ctx) == []


def test_union_by_columns_never_merges_nulls(db, context):
    a = Population.inline(
        [{"id": 1, "email": None}, {"id": 2, "email": "y@example.com"}, {"id": 3, "email": None}]
    )
    b = Population.inline(
        [{"id": 1, "email": None}, {"id": 4, "email": None}, {"id": 5, "email": "y@example.com"}]
    )
    union = UnionOperator(task_id="u_null", populations=[a, b], on=["email"]).execute(context("u_null"))
    # the NULL-email rows 3 and 4 stay (NULL matches nothing); row 1, in both inputs, is kept once
    assert sorted(r["id"] for r in rows(db, union)) == [1, 2, 3, 4]
    inter = IntersectionOperator(task_id="i_null", populations=[a, b], on=["email"]).execute(
        context("i_null")
    )
    assert [r["id"] for r in rows(db, inter)] == [2]


@pytest.mark.parametrize("operator", [UnionOperator, IntersectionOperator])
def test_fewer_than_two_inputs_is_an_error(db, context, operator):
    one = Population.inline([{"id": 1}])
    with pytest.raises(
        CampaignError, match=rf"populations: {operator.__name__} needs two or more populations, got 1"
    ):
        operator(task_id="one_input", populations=[one])
    # an XComArg list is only known at run time: the same check then, before any write
    op = operator(task_id="one_input", populations=[one, one])
    op.populations = [one]
    ctx = context("one_input")
    with pytest.raises(CampaignError, match="needs two or more populations, got 1"):
        op.execute(ctx)
    assert staged(db, ctx) == []


def test_exclusion_with_nothing_to_exclude_is_an_error(db, context):
    one = Population.inline([{"id": 1}])
    with pytest.raises(CampaignError, match=r"exclude: give one or more populations to remove \(got none\)"):
        ExclusionOperator(task_id="x_none", primary=one, exclude=[])
