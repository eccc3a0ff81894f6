"""SubscriptionServicesOperator: subscriptions and their events, on a private copy of the seeded database."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import psycopg
import pytest
from airflow.sdk.exceptions import AirflowSkipException

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.subscription_services import SubscriptionServicesOperator
from airflow_campaign.operators.targeting import QueryOperator
from airflow_campaign.population import Population
from tests.conftest import count, rows, staged

UTC = dt.timezone.utc
SUBSCRIPTIONS = (
    "SELECT service_id, profile_id, subscribed_at, origin, created_at, updated_at"
    " FROM campaign.subscriptions ORDER BY service_id, profile_id"
)
EVENTS = "SELECT * FROM campaign.subscription_events ORDER BY id"


def state(db: psycopg.Connection) -> dict[str, Any]:
    """Every row of subscriptions, subscription_events and subscription_runs, and the staging bookkeeping."""
    return {
        "subscriptions": db.execute(SUBSCRIPTIONS).fetchall(),
        "events": db.execute(EVENTS).fetchall(),
        "runs": db.execute("SELECT * FROM campaign.subscription_runs ORDER BY 1, 2, 3, 4").fetchall(),
        "staging": db.execute(
            "SELECT table_name, row_count FROM campaign.staging_tables ORDER BY 1"
        ).fetchall(),
    }


def subscribers(db: psycopg.Connection, service: str) -> set[int]:
    return {
        r[0]
        for r in db.execute(
            "SELECT s.profile_id FROM campaign.subscriptions s JOIN campaign.services v ON v.id = s.service_id"
            " WHERE v.name = %s",
            (service,),
        )
    }


def subscription(db: psycopg.Connection, service: str, profile_id: int) -> tuple | None:
    return db.execute(
        "SELECT s.subscribed_at, s.origin FROM campaign.subscriptions s JOIN campaign.services v"
        " ON v.id = s.service_id WHERE v.name = %s AND s.profile_id = %s",
        (service, profile_id),
    ).fetchone()


def last_event_id(db: psycopg.Connection) -> int:
    return count(db, "SELECT coalesce(max(id), 0) FROM campaign.subscription_events")


def events_since(db: psycopg.Connection, after: int) -> list[tuple]:
    """(profile_id, service, operation, event_at, origin, dag_id, run_id, task_id, map_index) after an id."""
    return db.execute(
        "SELECT e.profile_id, v.name, e.operation, e.event_at, e.origin, e.dag_id, e.run_id, e.task_id,"
        " e.map_index FROM campaign.subscription_events e JOIN campaign.services v ON v.id = e.service_id"
        " WHERE e.id > %s ORDER BY v.name, e.profile_id, e.id",
        (after,),
    ).fetchall()


def apply(
    scratch: Any, context: Any, task_id: str = "subscriptions", run_id: str | None = None, **kwargs: Any
):
    """Run the operator on the scratch database; return (counts, changed population, context)."""
    ctx = context(task_id, run_id=run_id)
    op = SubscriptionServicesOperator(task_id=task_id, campaign_conn_id=scratch.conn_id, **kwargs)
    counts = op.execute(ctx)
    return counts, ctx["ti"].xcoms["changed"], ctx


def changed_rows(db: psycopg.Connection, changed: dict[str, Any]) -> list[tuple]:
    return [(r["id"], r["service"], r["operation"]) for r in rows(db, changed, order_by="id")]


def not_subscribed(db: psycopg.Connection, service: str, n: int, after: int = 0) -> list[int]:
    taken = subscribers(db, service)
    return [i for i in range(after + 1, 3001) if i not in taken][:n]


def subscribed_ids(db: psycopg.Connection, service: str, n: int, after: int = 0) -> list[int]:
    return sorted(i for i in subscribers(db, service) if i > after)[:n]


# ---- fixed service and operation ---------------------------------------------------------


def test_subscribe_a_table_population_writes_one_event_per_new_subscriber(scratch, context):
    db = scratch.db
    before = subscribers(db, "newsletter")
    already = sorted(before & set(range(1, 201)))
    kept = {i: subscription(db, "newsletter", i) for i in already}
    mark = last_event_id(db)
    pop = QueryOperator(task_id="first_200", campaign_conn_id=scratch.conn_id, where="id <= 200").execute(
        context("first_200")
    )
    counts, changed, ctx = apply(
        scratch, context, population=pop, service="newsletter", operation="subscribe", origin="web form"
    )
    new = sorted(set(range(1, 201)) - before)
    assert 0 < len(new) < 200
    assert counts == {
        "rows": 200,
        "subscribed": len(new),
        "unsubscribed": 0,
        "unchanged": len(already),
        "rejected": 0,
        "duplicates": 0,
    }
    assert subscribers(db, "newsletter") == before | set(new)
    # subscribing a subscriber changes nothing, not even its date or origin
    assert {i: subscription(db, "newsletter", i) for i in already} == kept
    now = db.execute(
        "SELECT DISTINCT subscribed_at FROM campaign.subscriptions WHERE origin = 'web form'"
    ).fetchall()
    assert len(now) == 1
    events = events_since(db, mark)
    assert [e[:3] for e in events] == [(i, "newsletter", "subscribe") for i in new]
    assert {e[3:] for e in events} == {
        (now[0][0], "web form", "test_dag", ctx["run_id"], "subscriptions", -1)
    }
    assert (changed["resource"], changed["key"], changed["columns"]) == (
        "profiles",
        "id",
        ["id", "service", "operation", "event_at"],
    )
    assert changed["count"] == len(new)
    assert changed_rows(db, changed) == [(i, "newsletter", "subscribe") for i in new]


def test_unsubscribe_inline_rows_and_a_non_subscriber_is_a_no_op(scratch, context):
    db = scratch.db
    members = subscribed_ids(db, "promotions", 3)
    outsider = not_subscribed(db, "promotions", 1)[0]
    mark = last_event_id(db)
    counts, changed, _ = apply(
        scratch,
        context,
        population=[{"id": i} for i in [*members, outsider]],
        service="promotions",
        operation="unsubscribe",
        origin="complaint desk",
    )
    assert counts == {
        "rows": 4,
        "subscribed": 0,
        "unsubscribed": 3,
        "unchanged": 1,
        "rejected": 0,
        "duplicates": 0,
    }
    assert not subscribers(db, "promotions") & {*members, outsider}
    assert [e[:3] + (e[4],) for e in events_since(db, mark)] == [
        (i, "promotions", "unsubscribe", "complaint desk") for i in members
    ]
    assert changed_rows(db, changed) == [(i, "promotions", "unsubscribe") for i in members]


def test_the_default_origin_is_the_dag_and_task(scratch, context):
    db = scratch.db
    new = not_subscribed(db, "sms_alerts", 2)
    mark = last_event_id(db)
    apply(
        scratch,
        context,
        task_id="alerts",
        population=[{"id": i} for i in new],
        service="sms_alerts",
        operation="subscribe",
    )
    assert {e[4] for e in events_since(db, mark)} == {"test_dag.alerts"}
    assert {subscription(db, "sms_alerts", i)[1] for i in new} == {"test_dag.alerts"}


def test_a_dataframe_population_is_accepted(scratch, context):
    db = scratch.db
    new = not_subscribed(db, "app_news", 2)
    frame = pd.DataFrame({"id": new, "consent": [1, 0]})
    counts, _, _ = apply(scratch, context, population=frame, service="app_news", operation_column="consent")
    assert (counts["subscribed"], counts["unchanged"]) == (1, 1)
    assert subscribers(db, "app_news") & set(new) == {new[0]}


# ---- per-row service, operation, date and origin ------------------------------------------


def test_per_row_service_operation_date_and_origin(scratch, context):
    db = scratch.db
    join_news = not_subscribed(db, "newsletter", 1)[0]
    leave_news = subscribed_ids(db, "newsletter", 1)[0]
    join_sms = not_subscribed(db, "sms_alerts", 1)[0]
    already_sms = subscribed_ids(db, "sms_alerts", 1)[0]
    kept = subscription(db, "sms_alerts", already_sms)
    mark = last_event_id(db)
    at = dt.datetime(2025, 6, 1, 9, 30, tzinfo=UTC)
    data = [
        {"id": join_news, "svc": "newsletter", "opt_in": True, "at": at, "source": "shop"},
        {
            "id": leave_news,
            "svc": "newsletter",
            "opt_in": False,
            "at": at + dt.timedelta(hours=1),
            "source": "app",
        },
        {
            "id": join_sms,
            "svc": "sms_alerts",
            "opt_in": True,
            "at": at + dt.timedelta(hours=2),
            "source": None,
        },
        {"id": already_sms, "svc": "sms_alerts", "opt_in": True, "at": at, "source": "shop"},
    ]
    counts, changed, _ = apply(
        scratch,
        context,
        population=data,
        service_column="svc",
        operation_column="opt_in",
        date_column="at",
        origin_column="source",
    )
    assert counts == {
        "rows": 4,
        "subscribed": 2,
        "unsubscribed": 1,
        "unchanged": 1,
        "rejected": 0,
        "duplicates": 0,
    }
    assert subscription(db, "newsletter", join_news) == (at, "shop")
    assert subscription(db, "newsletter", leave_news) is None
    assert subscription(db, "sms_alerts", join_sms) == (at + dt.timedelta(hours=2), None)
    assert subscription(db, "sms_alerts", already_sms) == kept
    assert [e[:5] for e in events_since(db, mark)] == sorted(
        [
            (join_news, "newsletter", "subscribe", at, "shop"),
            (leave_news, "newsletter", "unsubscribe", at + dt.timedelta(hours=1), "app"),
            (join_sms, "sms_alerts", "subscribe", at + dt.timedelta(hours=2), None),
        ],
        key=lambda e: (e[1], e[0]),
    )
    assert sorted(changed_rows(db, changed)) == sorted(
        [
            (join_news, "newsletter", "subscribe"),
            (leave_news, "newsletter", "unsubscribe"),
            (join_sms, "sms_alerts", "subscribe"),
        ]
    )


@pytest.mark.parametrize(
    ("subscribe", "unsubscribe"),
    [(1, 0), ("1", "0"), ("true", "false"), (" TRUE", "False "), (1.0, 0.0)],
    ids=["integer", "digits", "words", "words-any-case", "numeric"],
)
def test_operation_column_values(scratch, context, subscribe, unsubscribe):
    db = scratch.db
    join = not_subscribed(db, "newsletter", 1)[0]
    leave = subscribed_ids(db, "newsletter", 1)[0]
    data = [{"id": join, "op": subscribe}, {"id": leave, "op": unsubscribe}]
    counts, _, _ = apply(scratch, context, population=data, service="newsletter", operation_column="op")
    assert (counts["subscribed"], counts["unsubscribed"]) == (1, 1)
    assert join in subscribers(db, "newsletter")
    assert leave not in subscribers(db, "newsletter")


def test_date_column_as_text_and_null_dates(scratch, context):
    db = scratch.db
    a, b = not_subscribed(db, "promotions", 2)
    data = [{"id": a, "on": "2025-03-04T05:06:07+00:00"}, {"id": b, "on": None}]
    apply(scratch, context, population=data, service="promotions", operation="subscribe", date_column="on")
    assert subscription(db, "promotions", a)[0] == dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    # NULL: the time of the task's transaction
    assert subscription(db, "promotions", b)[0] > dt.datetime.now(UTC) - dt.timedelta(minutes=5)


# ---- duplicates and rejected rows ----------------------------------------------------------


def test_duplicates_the_latest_row_wins_and_unsubscribe_wins_a_tie(scratch, context):
    db = scratch.db
    late_join, tie = not_subscribed(db, "newsletter", 2)
    t = dt.datetime(2025, 1, 1, tzinfo=UTC)
    data = [
        {"id": late_join, "op": False, "at": t, "src": "a"},
        {"id": late_join, "op": True, "at": t + dt.timedelta(days=1), "src": "b"},
        {"id": late_join, "op": True, "at": t + dt.timedelta(days=1), "src": "a"},
        {"id": tie, "op": True, "at": t, "src": "a"},
        {"id": tie, "op": False, "at": t, "src": "b"},
    ]
    mark = last_event_id(db)
    counts, _, _ = apply(
        scratch,
        context,
        population=data,
        service="newsletter",
        operation_column="op",
        date_column="at",
        origin_column="src",
    )
    assert counts == {
        "rows": 5,
        "subscribed": 1,
        "unsubscribed": 0,
        "unchanged": 1,
        "rejected": 0,
        "duplicates": 3,
    }
    # latest date wins; between equal rows, the smallest origin
    assert subscription(db, "newsletter", late_join) == (t + dt.timedelta(days=1), "a")
    # same date, opposite operations: the unsubscribe wins (tie was not subscribed: unchanged)
    assert subscription(db, "newsletter", tie) is None
    assert [e[:5] for e in events_since(db, mark)] == [
        (late_join, "newsletter", "subscribe", t + dt.timedelta(days=1), "a")
    ]


def test_duplicates_without_dates_unsubscribe_wins(scratch, context):
    db = scratch.db
    member = subscribed_ids(db, "newsletter", 1)[0]
    data = [{"id": member, "op": 1}, {"id": member, "op": 0}, {"id": member, "op": 1}]
    counts, _, _ = apply(scratch, context, population=data, service="newsletter", operation_column="op")
    assert (counts["unsubscribed"], counts["duplicates"]) == (1, 2)
    assert member not in subscribers(db, "newsletter")


def test_the_same_profile_for_two_services_is_no_duplicate(scratch, context):
    db = scratch.db
    p = count(
        db,
        "SELECT min(id) FROM campaign.profiles p WHERE NOT EXISTS (SELECT 1 FROM campaign.subscriptions s"
        " JOIN campaign.services v ON v.id = s.service_id WHERE s.profile_id = p.id"
        " AND v.name IN ('newsletter', 'promotions'))",
    )
    data = [{"id": p, "svc": "newsletter"}, {"id": p, "svc": "promotions"}]
    counts, _, _ = apply(scratch, context, population=data, service_column="svc", operation="subscribe")
    assert (counts["subscribed"], counts["duplicates"]) == (2, 0)
    assert p in subscribers(db, "newsletter") & subscribers(db, "promotions")


def test_duplicates_fail_names_the_profile_and_writes_nothing(scratch, context):
    db = scratch.db
    before = state(db)
    data = [{"id": 7}, {"id": 8}, {"id": 7}]
    message = r"1 profile\(s\) appear more than once.*id 7 2 times for 'newsletter'.*duplicates='fail'"
    with pytest.raises(CampaignError, match=message):
        apply(
            scratch,
            context,
            population=data,
            service="newsletter",
            operation="subscribe",
            duplicates="fail",
        )
    assert state(db) == before


def test_unknown_and_null_profile_ids_are_rejected(scratch, context):
    db = scratch.db
    new = not_subscribed(db, "newsletter", 1)[0]
    mark = last_event_id(db)
    data = [{"id": new}, {"id": 99_999_999}, {"id": None}]
    counts, changed, _ = apply(scratch, context, population=data, service="newsletter", operation="subscribe")
    assert (counts["rows"], counts["subscribed"], counts["rejected"], counts["unchanged"]) == (3, 1, 2, 0)
    assert [e[0] for e in events_since(db, mark)] == [new]
    assert count(db, "SELECT count(*) FROM campaign.subscriptions WHERE profile_id = 99999999") == 0
    assert changed["count"] == 1


def test_rejects_fail_names_the_ids_and_writes_nothing(scratch, context):
    db = scratch.db
    before = state(db)
    with pytest.raises(
        CampaignError, match=r"2 row\(s\) name no existing profile \(ids \[None, 99999999\]\)"
    ):
        apply(
            scratch,
            context,
            population=[{"id": 1}, {"id": 99_999_999}, {"id": None}],
            service="newsletter",
            operation="subscribe",
            rejects="fail",
        )
    assert state(db) == before


# ---- bad inputs: a clear error, and the database as it was -------------------------------


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        ([1, 2], "id 2: 2"),
        ([True, None], "id 2: NULL"),
        (["1", "yes"], "id 2: 'yes'"),
        ([1, None], "id 2: NULL"),
        ([0.0, 0.5], r"id 2: 0.5"),
    ],
    ids=["integer-2", "boolean-null", "text-yes", "integer-null", "numeric-half"],
)
def test_invalid_operation_values_name_the_row(scratch, context, values, shown):
    db = scratch.db
    before = state(db)
    data = [{"id": i, "op": v} for i, v in enumerate(values, start=1)]
    with pytest.raises(
        CampaignError,
        match=rf"operation_column='op': 1 row\(s\) hold a value that is neither 1/true \(subscribe\) nor "
        rf"0/false \(unsubscribe\), e\.g\. {shown}\. Nothing was written",
    ):
        apply(scratch, context, population=data, service="newsletter", operation_column="op")
    assert state(db) == before


def test_operation_column_of_another_type(scratch, context):
    data = [{"id": 1, "op": dt.date(2025, 1, 1)}]
    with pytest.raises(
        CampaignError, match=r"operation_column='op' is of type 'date'; give a boolean, integer"
    ):
        apply(scratch, context, population=data, service="newsletter", operation_column="op")


def test_unknown_service_names_it_and_the_known_ones(scratch, context):
    db = scratch.db
    before = state(db)
    with pytest.raises(
        CampaignError,
        match=r"service='newsleter' does not exist; known services: \['app_news', 'newsletter', 'promotions', "
        r"'sms_alerts'\]\. Nothing was written",
    ):
        apply(scratch, context, population=[{"id": 1}], service="newsleter", operation="subscribe")
    assert state(db) == before


def test_unknown_services_in_a_column_are_all_named(scratch, context):
    db = scratch.db
    before = state(db)
    data = [
        {"id": 1, "svc": "newsletter"},
        {"id": 2, "svc": "sms"},
        {"id": 3, "svc": None},
        {"id": 4, "svc": "sms"},
        {"id": 5, "svc": "push"},
    ]
    with pytest.raises(
        CampaignError,
        match=r"service_column='svc': unknown service\(s\) \[None, 'push', 'sms'\] in 4 row\(s\); known "
        r"services: \['app_news', 'newsletter', 'promotions', 'sms_alerts'\]",
    ):
        apply(scratch, context, population=data, service_column="svc", operation="unsubscribe")
    assert state(db) == before


@pytest.mark.parametrize("option", ["service_column", "operation_column", "date_column", "origin_column"])
def test_unknown_column(scratch, context, option):
    db = scratch.db
    before = state(db)
    kwargs: dict[str, Any] = {"service": "newsletter", "operation": "subscribe", option: "nope"}
    kwargs.pop(option.removesuffix("_column"), None)
    with pytest.raises(
        CampaignError, match=rf"{option}='nope': no such column in the population; its columns: "
    ):
        apply(scratch, context, population=[{"id": 1, "x": 1}], **kwargs)
    assert state(db) == before


def test_date_column_of_another_type(scratch, context):
    with pytest.raises(CampaignError, match=r"date_column='at' is of type 'bigint'; give a timestamptz"):
        apply(
            scratch,
            context,
            population=[{"id": 1, "at": 5}],
            service="newsletter",
            operation="subscribe",
            date_column="at",
        )


def test_a_date_that_is_not_one_is_a_clear_error(scratch, context):
    db = scratch.db
    before = state(db)
    with pytest.raises(CampaignError, match=r"date_column='at': the database rejected the SQL .*\"soon\""):
        apply(
            scratch,
            context,
            population=[{"id": 1, "at": "soon"}],
            service="newsletter",
            operation="subscribe",
            date_column="at",
        )
    assert state(db) == before


@pytest.mark.parametrize(
    ("population", "described"),
    [
        (
            Population.inline([{"email": "a@example.com"}], key="email", resource=None),
            "None keyed by 'email'",
        ),
        (
            Population.inline([{"customer_no": 4}], key="customer_no", resource="crm.customers"),
            "'crm.customers'",
        ),
        (
            Population.inline([{"email": "a@example.com"}], key="email", resource="profiles"),
            "'profiles' keyed by",
        ),
    ],
    ids=["no-resource", "other-resource", "profiles-by-email"],
)
def test_a_population_of_another_resource_is_refused(scratch, context, population, described):
    db = scratch.db
    before = state(db)
    with pytest.raises(
        CampaignError, match=rf"population: a population of resource {described}.*'profiles' keyed by 'id'"
    ):
        apply(scratch, context, population=population, service="newsletter", operation="subscribe")
    assert state(db) == before


def test_text_profile_ids_are_refused(scratch, context):
    with pytest.raises(
        CampaignError, match=r"its key column 'id' is of type 'text'; profile ids are integers"
    ):
        apply(scratch, context, population=[{"id": "12"}], service="newsletter", operation="subscribe")


def test_an_empty_population_with_on_empty(scratch, context):
    db = scratch.db
    empty = QueryOperator(task_id="nobody", campaign_conn_id=scratch.conn_id, where="false").execute(
        context("nobody")
    )
    before = state(db)
    with pytest.raises(CampaignError, match=r"the population is empty and on_empty='fail'"):
        apply(
            scratch, context, population=empty, service="newsletter", operation="subscribe", on_empty="fail"
        )
    with pytest.raises(AirflowSkipException, match=r"on_empty='skip'"):
        apply(
            scratch,
            context,
            task_id="skipped",
            population=[],
            service="newsletter",
            operation="subscribe",
            on_empty="skip",
        )
    assert state(db) == before
    assert staged(db, context("skipped")) == []
    counts, changed, _ = apply(
        scratch, context, task_id="empty", population=[], service_column="svc", operation_column="op"
    )
    assert counts == dict.fromkeys(
        ("rows", "subscribed", "unsubscribed", "unchanged", "rejected", "duplicates"), 0
    )
    assert changed["count"] == 0
    assert state(db)["subscriptions"] == before["subscriptions"]
    assert state(db)["events"] == before["events"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"operation": "subscribe"}, r"service=None, service_column=None: neither given"),
        ({"service": "a", "service_column": "b", "operation": "subscribe"}, r"both given; pass exactly one"),
        ({"service": "a"}, r"operation=None, operation_column=None: neither given"),
        ({"service": "a", "operation": "subscribe", "operation_column": "op"}, r"both given"),
        (
            {"service": "a", "operation": "optin"},
            r"operation='optin' is not valid; use one of \['subscribe', ",
        ),
        (
            {"service": "a", "operation": "subscribe", "origin": "x", "origin_column": "y"},
            r"give one of them",
        ),
        ({"service": "a", "operation": "subscribe", "duplicates": "first"}, r"duplicates='first' is not"),
        (
            {"service": "a", "operation": "subscribe", "rejects": "output"},
            r"rejects='output' is not valid",
        ),
        ({"service": "a", "operation": "subscribe", "date_column": ""}, r"date_column='': give a name"),
        ({"service": "a", "operation": "subscribe", "on_empty": "ignore"}, r"on_empty='ignore' is not valid"),
    ],
)
def test_options_are_checked_when_the_dag_is_parsed(kwargs, message):
    with pytest.raises(CampaignError, match=message):
        SubscriptionServicesOperator(task_id="t", population=[{"id": 1}], **kwargs)


# ---- retries ---------------------------------------------------------------------------------


def subscribers_before(snapshot: dict[str, Any], db: psycopg.Connection) -> set[int]:
    newsletter = count(db, "SELECT id FROM campaign.services WHERE name = 'newsletter'")
    return {r[1] for r in snapshot["subscriptions"] if r[0] == newsletter}


def _failing_save(db: psycopg.Connection) -> None:
    """Make the task fail after it wrote subscriptions and events: recording its staging table raises."""
    db.execute(
        "CREATE FUNCTION public.fail_once() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'the worker died'; END $$"
    )
    db.execute(
        "CREATE TRIGGER fail_once BEFORE INSERT ON campaign.staging_tables"
        " FOR EACH ROW EXECUTE FUNCTION public.fail_once()"
    )


def test_a_try_that_fails_midway_writes_nothing_and_the_retry_is_a_clean_try(scratch, context):
    db = scratch.db
    join = not_subscribed(db, "newsletter", 3)
    leave = subscribed_ids(db, "newsletter", 2)
    data = [{"id": i, "op": 1} for i in join] + [{"id": i, "op": 0} for i in leave]
    before = state(db)
    _failing_save(db)
    with pytest.raises(CampaignError, match="RaiseException: the worker died"):
        apply(scratch, context, population=data, service="newsletter", operation_column="op")
    assert state(db) == before
    db.execute("DROP TRIGGER fail_once ON campaign.staging_tables")
    mark = last_event_id(db)
    counts, changed, ctx = apply(
        scratch, context, population=data, service="newsletter", operation_column="op"
    )
    assert (counts["subscribed"], counts["unsubscribed"], counts["unchanged"]) == (3, 2, 0)
    assert subscribers(db, "newsletter") == (subscribers_before(before, db) | set(join)) - set(leave)
    assert sorted((e[0], e[2]) for e in events_since(db, mark)) == sorted(
        [(i, "subscribe") for i in join] + [(i, "unsubscribe") for i in leave]
    )
    assert changed["count"] == 5


def test_a_rerun_after_success_writes_nothing_and_reports_the_same(scratch, context):
    db = scratch.db
    join = not_subscribed(db, "promotions", 4)
    leave = subscribed_ids(db, "promotions", 2)
    data = (
        [{"id": i, "op": True} for i in join]
        + [{"id": i, "op": False} for i in leave]
        + [{"id": 99_999_999, "op": True}]
    )
    first, first_changed, _ = apply(
        scratch, context, population=data, service="promotions", operation_column="op"
    )
    after_first = state(db)
    again, again_changed, _ = apply(
        scratch, context, population=data, service="promotions", operation_column="op"
    )
    assert (
        again
        == first
        == {
            "rows": 7,
            "subscribed": 4,
            "unsubscribed": 2,
            "unchanged": 0,
            "rejected": 1,
            "duplicates": 0,
        }
    )
    now = state(db)
    assert now["subscriptions"] == after_first["subscriptions"]
    assert now["events"] == after_first["events"]  # no event twice
    recorded = db.execute(
        "SELECT counts FROM campaign.subscription_runs WHERE dag_id = 'test_dag' AND task_id = 'subscriptions'"
    ).fetchall()
    assert recorded == [(first,)]
    assert again_changed["table"] == first_changed["table"]
    assert again_changed["count"] == first_changed["count"] == 6
    assert {(r["id"], r["operation"]) for r in rows(db, again_changed)} == {
        (i, "subscribe") for i in join
    } | {(i, "unsubscribe") for i in leave}


def test_another_run_reports_the_rows_as_unchanged(scratch, context):
    db = scratch.db
    join = not_subscribed(db, "promotions", 3)
    data = [{"id": i} for i in join]
    apply(scratch, context, population=data, service="promotions", operation="subscribe", run_id="run_1")
    mark = last_event_id(db)
    counts, changed, _ = apply(
        scratch, context, population=data, service="promotions", operation="subscribe", run_id="run_2"
    )
    assert (counts["subscribed"], counts["unchanged"]) == (0, 3)
    assert changed["count"] == 0
    assert last_event_id(db) == mark


def test_a_rerun_redoes_what_someone_else_undid_in_between(scratch, context):
    db = scratch.db
    join = not_subscribed(db, "newsletter", 2)
    data = [{"id": i} for i in join]
    apply(scratch, context, population=data, service="newsletter", operation="subscribe")
    db.execute(
        "DELETE FROM campaign.subscriptions WHERE profile_id = %s AND service_id ="
        " (SELECT id FROM campaign.services WHERE name = 'newsletter')",
        (join[0],),
    )
    mark = last_event_id(db)
    counts, _, _ = apply(scratch, context, population=data, service="newsletter", operation="subscribe")
    assert (counts["subscribed"], counts["unchanged"]) == (2, 0)
    assert set(join) <= subscribers(db, "newsletter")
    assert [(e[0], e[2]) for e in events_since(db, mark)] == [(join[0], "subscribe")]


def test_mapped_instances_are_separate_task_instances(scratch, context):
    db = scratch.db
    join = not_subscribed(db, "app_news", 2)
    op = SubscriptionServicesOperator(
        task_id="mapped",
        campaign_conn_id=scratch.conn_id,
        population=[{"id": i} for i in join],
        service="app_news",
        operation="subscribe",
    )
    first = op.execute(context("mapped", map_index=0))
    second = op.execute(context("mapped", map_index=1))
    assert (first["subscribed"], second["subscribed"], second["unchanged"]) == (2, 0, 2)
    assert {e[8] for e in events_since(db, 0) if e[7] == "mapped"} == {0}
