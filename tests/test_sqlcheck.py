"""SQL options checked alone with PostgreSQL's parser: what passes, what is refused, how values bind."""

from __future__ import annotations

import datetime as dt

import pytest

from airflow_campaign import sqlcheck
from airflow_campaign.errors import CampaignError


def text(composed):
    return composed.as_string(None)


@pytest.mark.parametrize(
    "value",
    [
        "country = 'FR' AND birth_date IS NOT NULL",
        "loyalty_points > (SELECT avg(loyalty_points) FROM campaign.profiles)",
        "EXISTS (SELECT 1 FROM campaign.subscriptions s WHERE s.profile_id = r.id)",
        "CASE WHEN locale = 'fr' THEN 'Bonjour' ELSE 'Hello' END",
        "birth_date::date + interval '1 year' > now()",
        "email LIKE '%;%' OR email = ')' OR first_name = '--' OR last_name = '/*'",
        "note = $$it's; done) -- $$ OR note = $tag$ ) ; $tag$",
        'r."Mixed Case;)" = 1',
        "x IN (1, 2, 3) -- keep the first three",
        "/* why */ x > 1",
        "count(*)",
        "é = 'ünïcode'",
    ],
)
def test_ordinary_expressions_pass_and_come_back_wrapped(value):
    assert text(sqlcheck.expression("where", value)) == f"(\n{value}\n)"


def test_order_lists_select_lists_and_queries_pass():
    assert (
        text(sqlcheck.order_list("order_by", "points DESC NULLS LAST, id"))
        == "\npoints DESC NULLS LAST, id\n"
    )
    assert (
        text(sqlcheck.select_list("additional", "1 AS one, lower(email) AS e"))
        == "\n1 AS one, lower(email) AS e\n"
    )
    for query in (
        "SELECT id FROM campaign.profiles WHERE country = 'FR'",
        "WITH fr AS (SELECT id FROM campaign.profiles) SELECT * FROM fr",
        "SELECT 1 AS id UNION ALL SELECT 2",
        "VALUES (1), (2)",
        "(SELECT 1 AS id)",
    ):
        assert text(sqlcheck.query("sql", query)) == f"\n{query}\n"
    # a .sql file often ends with one ';': it is dropped
    assert text(sqlcheck.query("sql", "SELECT 1 AS id;\n")) == "\nSELECT 1 AS id\n"


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (sqlcheck.expression, "true); DROP TABLE t; SELECT (1", r"closes a parenthesis it did not open"),
        (sqlcheck.expression, "true; DROP TABLE t", r"has a ';'"),
        (sqlcheck.expression, "0)) RETURNING 1) SELECT 1 --", r"closes a parenthesis it did not open"),
        (sqlcheck.expression, "x = 1) --", r"closes a parenthesis it did not open"),
        (sqlcheck.expression, "x = 1 /* the rest", r"unterminated /\* comment"),
        (sqlcheck.expression, "x = 'open", r"unterminated quoted string"),
        (sqlcheck.expression, "(x = 1", r"leaves 1 parenthesis\(es\) open"),
        (sqlcheck.expression, "1 FROM pg_authid", r'syntax error at or near "FROM"'),
        (sqlcheck.expression, "", r"the SQL is empty"),
        (sqlcheck.expression, "   ", r"the SQL is empty"),
        (sqlcheck.expression, 42, r"give the SQL as a string"),
        (sqlcheck.expression, "country =", r"ends before the SQL is complete"),
        (sqlcheck.expression, "(WITH d AS (DELETE FROM t RETURNING 1) SELECT 1)", r"data-modifying .*DELETE"),
        (sqlcheck.expression, "(SELECT 1 FROM t FOR UPDATE)", r"locking clause"),
        (sqlcheck.select_list, "1 AS one FROM pg_authid", r"it adds FROM"),
        (sqlcheck.select_list, "1 AS one WHERE false", r"it adds WHERE"),
        (sqlcheck.order_list, "id LIMIT 1", r"it adds LIMIT"),
        (sqlcheck.order_list, "id FOR UPDATE", r"locking clause"),
        (sqlcheck.query, "SELECT 1; SELECT 2", r"has a ';'"),
        (sqlcheck.query, "DELETE FROM t", r"is not one SELECT query"),
        (sqlcheck.query, "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", r"data-modifying .*DELETE"),
        (
            sqlcheck.query,
            "WITH u AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM u",
            r"data-modifying .*UPDATE",
        ),
        (sqlcheck.query, "SELECT * INTO copy FROM t", r"SELECT \.\.\. INTO"),
        (sqlcheck.query, "SELECT * FROM t FOR UPDATE", r"locking clause"),
        (sqlcheck.query, "SELECT 1) q; DROP TABLE t; SELECT * FROM (SELECT 1", r"closes a parenthesis"),
    ],
)
def test_refused_fragments_name_the_option_and_the_fix(check, value, message):
    with pytest.raises(CampaignError, match=message) as caught:
        check("opt", value)
    assert str(caught.value).startswith(f"opt={value!r}:")
    if isinstance(value, str) and value.strip():
        assert "give one" in str(caught.value) and "parameters=" in str(caught.value)


def test_a_long_value_is_shown_cut():
    value = "x = 1 OR " * 10_000 + "x = 1)"
    with pytest.raises(CampaignError) as caught:
        sqlcheck.expression("where", value)
    assert len(str(caught.value)) < 600 and "characters" in str(caught.value)


def test_placeholders_bind_as_literals_in_parentheses():
    bound = sqlcheck.expression(
        "where",
        "country = %(c)s AND points > %(n)s AND points - %(neg)s > 0 AND email LIKE '%%@x.org'",
        {"c": "FR' OR true --", "n": 10, "neg": -5},
    )
    assert text(bound) == (
        "(\ncountry = ('FR'' OR true --') AND points > (10) AND points - ( -5) > 0 AND email LIKE '%@x.org'\n)"
    )
    # one name used twice, a date, a list for ANY
    bound = sqlcheck.expression(
        "where", "d = %(d)s OR d > %(d)s OR id = ANY(%(ids)s)", {"d": dt.date(2026, 3, 14), "ids": [1, 2]}
    )
    assert text(bound).count("'2026-03-14'::date") == 2 and "'{1,2}'" in text(bound)


def test_without_parameters_the_text_is_sent_as_written():
    assert text(sqlcheck.expression("where", "email LIKE '%@x.org'")) == "(\nemail LIKE '%@x.org'\n)"
    # a %(name)s in a string is only text when no parameters are given
    assert "'%(a)s'" in text(sqlcheck.expression("where", "note = '%(a)s'"))


@pytest.mark.parametrize(
    ("value", "parameters", "message"),
    [
        ("x = %(a)s", None, r"uses the placeholder %\(a\)s but parameters= is not given"),
        ("x = %(b)s", {"a": 1}, r"parameters has no 'b' for %\(b\)s \(it has \['a'\]\)"),
        ("x = '%(a)s'", {"a": 1}, r"placeholder %\(a\)s inside a string literal"),
        (
            "x = 1 -- %(a)s",
            {"a": 1},
            r"placeholder %\(a\)s inside a string literal, a name or a comment",
        ),
        ("x LIKE 'a%'", {"a": 1}, r"a literal % is written %%"),
        ("x = %s", {"a": 1}, r"positional %s placeholder"),
        ("x = $1", None, r"positional parameter \$1"),
        ("x%(a)s = 1", {"a": 1}, r"placeholder"),
    ],
)
def test_placeholder_mistakes_are_refused(value, parameters, message):
    with pytest.raises(CampaignError, match=message):
        sqlcheck.expression("where", value, parameters)


def test_parse_time_checks_wait_for_templates_and_unknown_parameters():
    fragments = [
        (sqlcheck.expression, "where", "country = '{{ params.c }}'"),
        (sqlcheck.query, "sql", "q.sql"),
    ]
    sqlcheck.check_at_parse(fragments, None, (".sql",))  # rendered later: checked in execute()
    # parameters not known yet (templated): placeholders are accepted, nothing is bound
    sqlcheck.check_at_parse([(sqlcheck.expression, "where", "x = %(a)s")], {"a": "{{ ds }}"})
    sqlcheck.check_at_parse([(sqlcheck.expression, "where", "x = %(a)s")], "{{ dag_run.conf['p'] }}")
    with pytest.raises(CampaignError, match=r"where='true\); DROP TABLE t; SELECT \(1'"):
        sqlcheck.check_at_parse([(sqlcheck.expression, "where", "true); DROP TABLE t; SELECT (1")], None)
    with pytest.raises(CampaignError, match=r"parameters='oops': give a dict"):
        sqlcheck.check_at_run([(sqlcheck.expression, "where", "x = %(a)s")], "oops")


def test_a_value_psycopg_cannot_adapt_is_refused_naming_the_parameter():
    with pytest.raises(
        CampaignError, match=r"parameters\['a'\]=\{'x': 1\}: cannot be passed as an SQL value"
    ):
        sqlcheck.expression("where", "x = %(a)s", {"a": {"x": 1}})
