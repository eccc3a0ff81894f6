"""Inputs that used to end in a raw exception or a second statement, and what they give now.

- A database set to ``standard_conforming_strings = off``: SQL options are checked as
  PostgreSQL parses them with it on, so every campaign connection turns it on.
- Numbers and durations too large for a float or a timedelta.
- Options given as templates (``{{ dag_run.conf[...] }}``): kept as given when the operator is
  built, checked (shape included) once Airflow has rendered them, before anything is written.
- ``verify_link`` with an extreme or naive ``now``, and an expiry spelled with leading zeros.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg import sql

from airflow_campaign import sqlcheck
from airflow_campaign.delivery.unsubscribe import mirror_url, verify_link
from airflow_campaign.durations import parse_duration
from airflow_campaign.errors import CampaignError
from airflow_campaign.hooks.campaign import CampaignHook
from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.housekeeping import PruneStagingOperator
from airflow_campaign.operators.targeting import (
    DeduplicationOperator,
    EnrichmentOperator,
    LoadFileOperator,
    QueryOperator,
    ReadAudienceOperator,
    SegmentationOperator,
    UnionOperator,
)
from airflow_campaign.operators.update_data import UpdateDataOperator
from tests.bad_input.matrix import Row, bad_input, cases
from tests.conftest import orphans

# one expression when '\' is a backslash (standard_conforming_strings on); with it off, '\' || '
# is one string and the rest runs as statements of their own
SMUGGLED = "email = '\\' || ' ); DELETE FROM public.victim; SELECT ( ' -- '\n"


@pytest.fixture
def lax_strings(scratch: Any) -> Any:
    """The scratch database with ``standard_conforming_strings = off`` for every new session,
    and a table ``public.victim`` of three rows that the fragment tries to empty."""
    scratch.db.execute("CREATE TABLE public.victim (x int)")
    scratch.db.execute("INSERT INTO public.victim VALUES (1), (2), (3)")
    scratch.db.execute(
        sql.SQL("ALTER DATABASE {} SET standard_conforming_strings = off").format(
            sql.Identifier(scratch.db.info.dbname)
        )
    )
    scratch.victims = lambda: scratch.db.execute("SELECT count(*) FROM public.victim").fetchone()[0]
    return scratch


def _setting(conn: psycopg.Connection) -> str:
    return conn.execute("SHOW standard_conforming_strings").fetchone()[0]


@bad_input(
    "CampaignHook",
    "a database (or role, or server) with standard_conforming_strings = off, and a `where` that is one "
    "expression with it on but several statements with it off (`email = '\\' || ' ); DELETE …; SELECT ( ' --`)",
    "refused when the DAG is parsed (a backslash in a plain string); and composed by hand, it still runs as one "
    "harmless expression: every campaign connection (in a transaction, autocommit, streaming) turns "
    "standard_conforming_strings on; the table the fragment targets keeps its rows",
)
def test_campaign_connections_force_standard_conforming_strings(lax_strings: Any, context: Any) -> None:
    with pytest.raises(CampaignError, match=r"has a backslash in the string"):
        sqlcheck.expression("where", SMUGGLED, None)  # a plain string must read one way only
    statement = sql.SQL("SELECT count(*) FROM campaign.profiles WHERE ({})").format(sql.SQL(SMUGGLED))

    # the danger is real: a plain session on this database reads the fragment as statements
    with psycopg.connect(lax_strings.url) as raw:
        assert _setting(raw) == "off"
        raw.execute(statement)
        assert raw.execute("SELECT count(*) FROM public.victim").fetchone()[0] == 0
        raw.rollback()
    assert lax_strings.victims() == 3

    hook = CampaignHook(campaign_conn_id=lax_strings.conn_id)
    with hook.connect() as conn:
        assert _setting(conn) == "on"
        assert conn.execute(statement).fetchone() == (0,)
        conn.rollback()  # a later transaction keeps the setting
        assert _setting(conn) == "on"
    with hook.transaction() as conn:
        assert _setting(conn) == "on"
    assert list(hook.stream_rows(sql.SQL("SELECT current_setting('standard_conforming_strings')"))) == [
        ("on",)
    ]
    probe = QueryOperator(task_id="probe", campaign_conn_id=lax_strings.conn_id)
    with probe.autocommit_connection() as conn:
        assert conn.autocommit and _setting(conn) == "on"

    # and through an operator, as a DAG would run it: refused before anything runs
    with pytest.raises(CampaignError, match=r"has a backslash in the string"):
        QueryOperator(task_id="smuggle", campaign_conn_id=lax_strings.conn_id, where=SMUGGLED)
    assert lax_strings.victims() == 3


# ---- numbers too large ------------------------------------------------------------------------

DELIVERY = {
    "population": [{"id": 1}],
    "subject": "Hi",
    "from_addr": "news@example.com",
    "text": "Hello",
    "channel": "outbox",
    "marketing": False,
}


@cases(
    Row(
        "EmailDeliveryOperator",
        "rate_limit=10**400 (an int no float holds)",
        "refused when the DAG is parsed: `rate_limit=1000…: give a number greater than 0, at most 1.79769e+308`",
        args={
            "option": "rate_limit",
            "build": lambda: EmailDeliveryOperator(task_id="t", **DELIVERY, rate_limit=10**400),
        },
    ),
    Row(
        "EmailDeliveryOperator",
        "stale_after=10**400 (seconds)",
        "refused when the DAG is parsed: `stale_after=1000…: give a duration of at most 86399999999999 seconds`",
        args={
            "option": "stale_after",
            "build": lambda: EmailDeliveryOperator(task_id="t", **DELIVERY, stale_after=10**400),
        },
    ),
    Row(
        "EmailDeliveryOperator",
        "stale_after='999…9d' (400 digits of days)",
        "refused when the DAG is parsed: `stale_after='999…d': give a duration of at most … seconds`",
        args={
            "option": "stale_after",
            "build": lambda: EmailDeliveryOperator(task_id="t", **DELIVERY, stale_after="9" * 400 + "d"),
        },
    ),
    Row(
        "PruneStagingOperator",
        "older_than=10**400",
        "refused when the DAG is parsed: `older_than=1000…: give a duration of at most … seconds`",
        args={"option": "older_than", "build": lambda: PruneStagingOperator(task_id="t", older_than=10**400)},
    ),
    Row(
        "PruneStagingOperator",
        "older_than=1e300 (finite, but longer than a timedelta holds)",
        "refused when the DAG is parsed: `older_than=1e+300: give a duration of at most … seconds`",
        args={"option": "older_than", "build": lambda: PruneStagingOperator(task_id="t", older_than=1e300)},
    ),
    Row(
        "QueryOperator",
        "limit=10**400 (beyond PostgreSQL's bigint)",
        "refused when the DAG is parsed: `limit=1000…: give a whole number >= 0 that fits in 64 bits`",
        args={"option": "limit", "build": lambda: QueryOperator(task_id="t", limit=10**400)},
    ),
)
def test_numbers_too_large_are_refused_by_name(row: Row) -> None:
    with pytest.raises(CampaignError, match=rf"^{row.args['option']}="):
        row.args["build"]()


def test_parse_duration_refuses_what_no_timedelta_holds() -> None:
    assert parse_duration("7d", "x") == 7 * 86400
    assert parse_duration(dt.timedelta.max, "x") == dt.timedelta.max.total_seconds()
    for value in (10**400, float("inf"), float("nan"), "9" * 400 + "s", 1e300, -1e300):
        with pytest.raises(CampaignError, match=r"^x=.*give a duration of at most"):
            parse_duration(value, "x")


# ---- templated options: kept as given, checked once rendered ------------------------------------

T = "{{ dag_run.conf['v'] }}"
P = [{"id": 1, "email": "a@example.com"}, {"id": 2, "email": "b@example.com"}]


def _state(db: psycopg.Connection) -> tuple[Any, ...]:
    """What a refused task must leave as it was."""
    return (
        db.execute(
            "SELECT md5(string_agg(p::text, '|' ORDER BY p.id)), count(*) FROM campaign.profiles p"
        ).fetchone(),
        db.execute("SELECT count(*) FROM campaign.staging_tables").fetchone()[0],
        orphans(db),
    )


def _csv(tmp_path: Path) -> str:
    path = tmp_path / "people.csv"
    path.write_text("email\na@example.com\n", encoding="utf-8")
    return str(path)


TEMPLATED = [
    # (operator, option, arguments besides the option, conf value, native rendering, message)
    (
        "UpdateDataOperator",
        "fields",
        {"population": P, "resource": "profiles"},
        "email",
        False,
        r"give a dict",
    ),
    (
        "UpdateDataOperator",
        "fields",
        {"population": P, "resource": "profiles"},
        {"email": {"nope": 1}},
        True,
        r"fields\['email'\]: a conditional field is",
    ),
    ("EnrichmentOperator", "columns", {"population": P}, "r.email", False, r"give a dict"),
    (
        "EnrichmentOperator",
        "joins",
        {"population": P, "columns": {"e": "r.email"}},
        "s",
        False,
        r"list of dicts",
    ),
    (
        "EnrichmentOperator",
        "joins",
        {"population": P, "columns": {"e": "r.email"}},
        [{"table": "campaign.subscriptions"}],
        True,
        r"joins\[0\]: missing \['alias', 'on'\]",
    ),
    (
        "EnrichmentOperator",
        "columns",
        {"population": P},
        {},
        True,
        r"columns/joins: give at least one column",
    ),
    ("SegmentationOperator", "segments", {"population": P}, "A", False, r"list of dicts"),
    (
        "SegmentationOperator",
        "segments",
        {"population": P},
        [{"code": "return_value"}],
        True,
        r"segments\[0\].code='return_value'.*Airflow's own key",
    ),
    (
        "SegmentationOperator",
        "segments",
        {"population": P},
        [{"code": "A", "percent": 150}],
        True,
        r"segments\[0\].percent=150",
    ),
    ("QueryOperator", "columns", {}, "email", False, r"give a list of names"),
    ("DeduplicationOperator", "on", {"population": P}, "email", False, r"give a list of names"),
    ("UnionOperator", "on", {"populations": [P, P]}, "email", False, r"give a list of names"),
    ("ReadAudienceOperator", "columns", {"audience": "vip"}, "email", False, r"give a list of names"),
    ("LoadFileOperator", "columns", {"path": "CSV"}, "email", False, r"give a list of names"),
    ("LoadFileOperator", "types", {"path": "CSV"}, "email", False, r"give a dict"),
]
CLASSES: dict[str, type] = {
    "UpdateDataOperator": UpdateDataOperator,
    "EnrichmentOperator": EnrichmentOperator,
    "SegmentationOperator": SegmentationOperator,
    "QueryOperator": QueryOperator,
    "DeduplicationOperator": DeduplicationOperator,
    "UnionOperator": UnionOperator,
    "ReadAudienceOperator": ReadAudienceOperator,
    "LoadFileOperator": LoadFileOperator,
}


def _templated_row(operator: str, option: str, args: dict, value: Any, native: bool, match: str) -> Row:
    rendering = "rendered as a Python object" if native else "rendered as text"
    return Row(
        operator,
        f"{option}='{{{{ dag_run.conf[...] }}}}' {rendering}: {value!r}",
        f"built as given (the template waits); refused in execute() once rendered, naming `{option}`, "
        "before anything is written",
        args={"option": option, "args": args, "value": value, "native": native, "match": match},
    )


@cases(*(_templated_row(*t) for t in TEMPLATED))
def test_a_templated_option_is_converted_and_checked_once_rendered(
    row: Row, scratch: Any, context: Any, tmp_path: Path
) -> None:
    args = {k: (_csv(tmp_path) if v == "CSV" else v) for k, v in row.args["args"].items()}
    option = row.args["option"]
    # built as a DAG file builds it: the template is kept as written, not read as its characters
    op = CLASSES[row.operator](
        task_id="templated",
        campaign_conn_id=scratch.conn_id,
        render_template_as_native_obj=row.args["native"],
        **args,
        **{option: T},
    )
    assert getattr(op, option) == T
    ctx = context("templated")
    before = _state(scratch.db)
    op.render_template_fields({**ctx, "dag_run": SimpleNamespace(conf={"v": row.args["value"]})})
    assert getattr(op, option) == row.args["value"]
    with pytest.raises(CampaignError, match=row.args["match"]) as raised:
        op.execute(ctx)
    assert re.match(rf"{re.escape(option)}\b", str(raised.value)), str(raised.value)
    assert _state(scratch.db) == before


@pytest.mark.parametrize(
    ("operator", "option", "args", "value", "check"),
    [
        ("QueryOperator", "columns", {"limit": 3}, ("email",), lambda pop: "email" in pop["columns"]),
        ("QueryOperator", "columns", {"limit": 3}, None, lambda pop: pop["count"] == 3),
        ("DeduplicationOperator", "on", {"population": P}, ["email"], lambda pop: pop["count"] == 2),
        (
            "UpdateDataOperator",
            "fields",
            {
                "population": [{"id": 1, "first_name": "Zed"}],
                "resource": "profiles",
                "keys": ["id"],
                "operation": "update",
            },
            {"first_name": {"value": "first_name", "when": "true"}},
            lambda result: result["updated"] == 1,
        ),
    ],
)
def test_a_templated_option_rendered_to_a_good_value_runs(
    operator: str, option: str, args: dict, value: Any, check: Any, scratch: Any, context: Any
) -> None:
    op = CLASSES[operator](
        task_id="templated_ok",
        campaign_conn_id=scratch.conn_id,
        render_template_as_native_obj=True,
        **args,
        **{option: T},
    )
    ctx = context("templated_ok")
    op.render_template_fields({**ctx, "dag_run": SimpleNamespace(conf={"v": value})})
    assert check(op.execute(ctx))


# ---- verify_link: the time it is checked at, and one spelling per expiry -------------------------

KEY = b"a key of at least sixteen bytes for the tests"
BASE = "https://shop.example/view"


def _expiring(expires: int) -> str:
    return mirror_url(BASE, KEY, "spring", "4211", ttl=expires - 60, now=60)


@bad_input(
    "verify_link",
    "now=datetime.min (or datetime.max, or an aware datetime near them) on a valid expiring link",
    "never raises: a result (valid before the expiry, reason 'expired' after it)",
)
def test_verify_link_with_extreme_now_never_raises() -> None:
    url = _expiring(1060)
    assert "e=1060" in url
    assert verify_link(url, KEY, "mirror", now=dt.datetime.min).valid
    assert verify_link(url, KEY, "mirror", now=dt.datetime.max).reason == "expired"
    plus = dt.timezone(dt.timedelta(hours=14))
    minus = dt.timezone(dt.timedelta(hours=-14))
    assert verify_link(url, KEY, "mirror", now=dt.datetime.min.replace(tzinfo=plus)).valid
    assert verify_link(url, KEY, "mirror", now=dt.datetime.max.replace(tzinfo=minus)).reason == "expired"
    assert verify_link(url, KEY, "mirror", now=10**400).reason == "expired"
    assert verify_link(url, KEY, "mirror", now=-(10**400)).valid


@bad_input(
    "verify_link",
    "a naive now datetime",
    "read as UTC (not as local time): the same answer on every server",
)
def test_verify_link_reads_a_naive_now_as_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    url = _expiring(1060)
    just_before = dt.datetime(1970, 1, 1, 0, 17, 39)  # 1059 s after the epoch, UTC
    just_after = dt.datetime(1970, 1, 1, 0, 17, 40)
    for zone in ("UTC", "America/New_York", "Asia/Tokyo"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        assert verify_link(url, KEY, "mirror", now=just_before).valid, zone
        assert verify_link(url, KEY, "mirror", now=just_after).reason == "expired", zone
    monkeypatch.delenv("TZ")
    time.tzset()


@bad_input(
    "verify_link",
    "an expiry written with leading zeros (`e=0001060` for `e=1060`)",
    "reason 'malformed': an expiry has one spelling, so a link is never valid under two",
)
def test_verify_link_refuses_an_expiry_with_leading_zeros() -> None:
    url = _expiring(1060)
    assert verify_link(url, KEY, "mirror", now=100).valid
    check = verify_link(url.replace("e=1060", "e=0001060"), KEY, "mirror", now=100)
    assert (check.valid, check.reason) == (False, "malformed")
    assert verify_link(url.replace("e=1060", "e=01060"), KEY, "mirror", now=100).reason == "malformed"
