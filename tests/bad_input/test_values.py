"""Values inside rows: NUL characters and mixed types in inline rows, and error messages that
never echo a huge value whole."""

from __future__ import annotations

import pytest

from airflow_campaign.errors import MESSAGE_LIMIT, CampaignError
from airflow_campaign.operators.targeting import DeduplicationOperator
from tests.bad_input.matrix import Row, cases
from tests.conftest import staged


@cases(
    Row(
        "Population",
        "inline rows with a NUL character in a value",
        "refused before any write: `population: row 1 has a NUL character in 'email' ('a\\x00b@x.com'); PostgreSQL "
        "text cannot hold one`",
        args={
            "rows": [{"id": 1, "email": "a@x.com"}, {"id": 2, "email": "a\x00b@x.com"}],
            "match": r"row 1 has a NUL",
        },
    ),
    Row(
        "Population",
        "inline rows whose column mixes numbers and text (1, then 'abc')",
        'refused: `population: the inline rows cannot be loaded (invalid input syntax for type bigint: "abc" …). '
        "Give values of one type per column`",
        args={"rows": [{"id": 1, "n": 1}, {"id": 2, "n": "abc"}], "match": r"inline rows cannot be loaded"},
    ),
)
def test_inline_values_that_postgres_cannot_hold_are_refused(row: Row, scratch, context) -> None:
    ctx = context("dedup")
    op = DeduplicationOperator(task_id="dedup", population=row.args["rows"], campaign_conn_id=scratch.conn_id)
    with pytest.raises(CampaignError, match=row.args["match"]):
        op.execute(ctx)
    assert staged(scratch.db, ctx) == []


@cases(
    Row(
        "Population",
        "an error message built around a 1 MB value",
        f"the message keeps its start and its end (the fix) and says how much was left out; at most "
        f"{MESSAGE_LIMIT:,} characters",
    )
)
def test_an_error_message_is_never_a_megabyte(row: Row) -> None:
    message = str(CampaignError(f"option={'x' * 1_000_000!r}: give a name; the fix is here."))
    assert len(message) <= MESSAGE_LIMIT
    assert message.startswith("option='xxx") and message.endswith("the fix is here.")
    assert "characters left out" in message


@cases(
    Row(
        "QueryOperator",
        "where with a backslash in a plain string ('a\\b')",
        "refused when the DAG is parsed: `has a backslash in the string 'a\\b'; write E'...' for escapes, or pass "
        "the value through parameters=` (a plain string must read the same whatever standard_conforming_strings is)",
        args={"where": "email = 'a\\b'"},
    ),
)
def test_a_backslash_in_a_plain_string_is_refused(row: Row) -> None:
    from airflow_campaign.operators.targeting import QueryOperator

    with pytest.raises(CampaignError, match=r"has a backslash in the string"):
        QueryOperator(task_id="q", where=row.args["where"])
    QueryOperator(task_id="q", where="email = E'a\\\\b'")  # the escape string form is accepted
