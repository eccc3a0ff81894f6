"""SQL options: a fragment that is not exactly one expression (or list, or SELECT) is refused.

Every SQL option of every operator gets a second statement (``…); DROP TABLE t; SELECT (1``)
and a fragment closing a parenthesis it did not open (``…) --``). Each is refused twice: when
the operator is built with it (DAG-parse time), and when it arrives through a template
(``{{ dag_run.conf[...] }}``) and execute() runs on a real database: then the error names the
option and nothing changed (the table ``t`` is still there, the profiles are as they were, no
staging table, no file).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_campaign.delivery.typology import SizeLimit, SqlRule
from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.extract_file import ExtractFileOperator
from airflow_campaign.operators.targeting import (
    DeduplicationOperator,
    EnrichmentOperator,
    IncrementalQueryOperator,
    QueryOperator,
    SegmentationOperator,
)
from airflow_campaign.operators.update_data import UpdateDataOperator
from tests.bad_input.matrix import Row, bad_input, cases
from tests.conftest import orphans

TEMPLATE = "{{ dag_run.conf['sql'] }}"
ROWS = [{"id": 1, "loyalty_points": 10}, {"id": 2, "loyalty_points": 20}]
PROFILE_ROWS = [{"id": 1}, {"id": 2}]

OPERATORS: dict[str, type] = {
    "QueryOperator": QueryOperator,
    "IncrementalQueryOperator": IncrementalQueryOperator,
    "DeduplicationOperator": DeduplicationOperator,
    "EnrichmentOperator": EnrichmentOperator,
    "SegmentationOperator": SegmentationOperator,
    "UpdateDataOperator": UpdateDataOperator,
    "ExtractFileOperator": ExtractFileOperator,
}

# operator -> (option as errors name it, a valid value, the operator's arguments given that value)
OPTIONS: dict[str, list[tuple[str, str, Callable[[str], dict[str, Any]]]]] = {
    "QueryOperator": [
        ("sql", "SELECT id FROM campaign.profiles", lambda v: {"sql": v}),
        ("where", "true", lambda v: {"where": v}),
        ("additional", "1 AS one", lambda v: {"additional": v}),
        ("order_by", "loyalty_points", lambda v: {"order_by": v, "limit": 5}),
    ],
    "IncrementalQueryOperator": [
        ("where", "true", lambda v: {"where": v}),
        ("additional", "1 AS one", lambda v: {"additional": v}),
        ("order_by", "loyalty_points", lambda v: {"order_by": v, "limit": 5}),
    ],
    "DeduplicationOperator": [
        ("prefer", "loyalty_points DESC", lambda v: {"population": ROWS, "prefer": v}),
    ],
    "EnrichmentOperator": [
        ("columns['bonus']", "p.loyalty_points * 2", lambda v: {"population": ROWS, "columns": {"bonus": v}}),
        (
            "joins[0].on",
            "s.profile_id = p.id",
            lambda v: {
                "population": ROWS,
                "joins": [
                    {
                        "table": "campaign.subscriptions",
                        "alias": "s",
                        "on": v,
                        "kind": "many",
                        "columns": {"subs": "count(*)"},
                    }
                ],
            },
        ),
        (
            "joins[0].columns['subs']",
            "count(*)",
            lambda v: {
                "population": ROWS,
                "joins": [
                    {
                        "table": "campaign.subscriptions",
                        "alias": "s",
                        "on": "s.profile_id = p.id",
                        "kind": "many",
                        "columns": {"subs": v},
                    }
                ],
            },
        ),
    ],
    "SegmentationOperator": [
        (
            "segments[0].where",
            "loyalty_points > 10",
            lambda v: {"population": ROWS, "segments": [{"code": "A", "where": v}]},
        ),
        (
            "segments[0].order_by",
            "loyalty_points DESC",
            lambda v: {"population": ROWS, "segments": [{"code": "A", "order_by": v, "limit": 1}]},
        ),
    ],
    "UpdateDataOperator": [
        (
            "fields['loyalty_points']",
            "loyalty_points + 1",
            lambda v: {
                "population": PROFILE_ROWS,
                "resource": "profiles",
                "operation": "update",
                "fields": {"loyalty_points": v},
            },
        ),
        (
            "fields['loyalty_points'].when",
            "dest.loyalty_points < 100",
            lambda v: {
                "population": PROFILE_ROWS,
                "resource": "profiles",
                "operation": "update",
                "fields": {"loyalty_points": {"value": "0", "when": v}},
            },
        ),
    ],
    "ExtractFileOperator": [
        ("sql", "SELECT id FROM campaign.profiles", lambda v: {"sql": v}),
        (
            "columns[0].expr",
            "p.id * 2",
            lambda v: {"population": ROWS, "columns": [{"name": "x", "expr": v}]},
        ),
    ],
}


def _fragments(base: str) -> list[tuple[str, str]]:
    return [
        ("a second statement", f"{base}); DROP TABLE t; SELECT (1"),
        ("a parenthesis it did not open, then a comment", f"{base}) --"),
    ]


def _rows(operator: str) -> list[Row]:
    return [
        Row(
            operator,
            f"{option} holding {what} (`{value}`)",
            f"refused when the DAG is parsed and again in execute() after rendering: "
            f"`{option}=…: closes a parenthesis it did not open… give one …; pass values through "
            "parameters=`; nothing runs",
            args={"option": option, "value": value, "build": build},
        )
        for option, base, build in OPTIONS[operator]
        for what, value in _fragments(base)
    ]


def _state(db: Any, out: Path) -> tuple[Any, ...]:
    """What a refused task must leave as it was."""
    return (
        db.execute("SELECT to_regclass('public.t') IS NOT NULL").fetchone()[0],
        db.execute(
            "SELECT md5(string_agg(p::text, '|' ORDER BY p.id)), count(*) FROM campaign.profiles p"
        ).fetchone(),
        db.execute("SELECT count(*) FROM campaign.staging_tables").fetchone()[0],
        db.execute("SELECT count(*) FROM campaign.incremental_history").fetchone()[0],
        orphans(db),
        sorted(p.name for p in out.iterdir()),
    )


@pytest.fixture
def guarded(scratch: Any, tmp_path: Path) -> Any:
    """The scratch database with a table ``t`` that the fragments try to drop, and an empty out folder."""
    scratch.db.execute("CREATE TABLE public.t (x int)")
    out = tmp_path / "out"
    out.mkdir()
    return SimpleNamespace(
        db=scratch.db, conn_id=scratch.conn_id, out=out, state=lambda: _state(scratch.db, out)
    )


def _refused_at_parse_and_at_run(row: Row, guarded: Any, context: Any) -> None:
    cls = OPERATORS[row.operator]
    option, value, build = row.args["option"], row.args["value"], row.args["build"]
    common = {"campaign_conn_id": guarded.conn_id}
    if cls is ExtractFileOperator:
        common["path"] = str(guarded.out / "people.csv")
        common["timestamp_in_name"] = False
    expected = re.escape(f"{option}={value!r}:") + r".*give one"
    # written in the DAG file: refused when the DAG is parsed
    with pytest.raises(CampaignError, match=expected):
        cls(task_id="bad_sql", **common, **build(value))
    # arriving through a template (dag_run.conf): refused in execute(), before anything runs
    before = guarded.state()
    assert before[0], "the table t exists before the task"
    op = cls(task_id="bad_sql", **common, **build(TEMPLATE))
    ctx = context("bad_sql")
    op.render_template_fields({**ctx, "dag_run": SimpleNamespace(conf={"sql": value})})
    with pytest.raises(CampaignError, match=expected):
        op.execute(ctx)
    assert guarded.state() == before


@cases(*_rows("QueryOperator"))
def test_query_operator_sql_options(row: Row, guarded: Any, context: Any) -> None:
    _refused_at_parse_and_at_run(row, guarded, context)


@cases(*_rows("IncrementalQueryOperator"))
def test_incremental_query_operator_sql_options(row: Row, guarded: Any, context: Any) -> None:
    _refused_at_parse_and_at_run(row, guarded, context)


@cases(*_rows("DeduplicationOperator"))
def test_deduplication_operator_sql_options(row: Row, guarded: Any, context: Any) -> None:
    _refused_at_parse_and_at_run(row, guarded, context)


@cases(*_rows("EnrichmentOperator"))
def test_enrichment_operator_sql_options(row: Row, guarded: Any, context: Any) -> None:
    _refused_at_parse_and_at_run(row, guarded, context)


@cases(*_rows("SegmentationOperator"))
def test_segmentation_operator_sql_options(row: Row, guarded: Any, context: Any) -> None:
    _refused_at_parse_and_at_run(row, guarded, context)


@cases(*_rows("UpdateDataOperator"))
def test_update_data_operator_sql_options(row: Row, guarded: Any, context: Any) -> None:
    _refused_at_parse_and_at_run(row, guarded, context)


@cases(*_rows("ExtractFileOperator"))
def test_extract_file_operator_sql_options(row: Row, guarded: Any, context: Any) -> None:
    _refused_at_parse_and_at_run(row, guarded, context)


@cases(
    *(
        Row(
            "SqlRule",
            f"where holding {what} (`{value}`)",
            "refused when the rule is made (in the DAG file): `SqlRule('x').where=…: closes a parenthesis it "
            "did not open… give one expression`",
            args={"value": value, "make": lambda v: SqlRule("x", v), "option": "SqlRule('x').where"},
        )
        for what, value in _fragments("w.address LIKE '%@test.example'")
    ),
    *(
        Row(
            "SizeLimit",
            f"order_by holding {what} (`{value}`)",
            "refused when the rule is made (in the DAG file): `SizeLimit(order_by)=…: closes a parenthesis it "
            "did not open… give one ORDER BY list`",
            args={
                "value": value,
                "make": lambda v: SizeLimit(10, order_by=v),
                "option": "SizeLimit(order_by)",
            },
        )
        for what, value in _fragments("w.recipient_key")
    ),
)
def test_typology_rule_sql(row: Row) -> None:
    with pytest.raises(
        CampaignError, match=re.escape(f"{row.args['option']}={row.args['value']!r}:") + ".*give one"
    ):
        row.args["make"](row.args["value"])


# ---- the two reported examples, verbatim --------------------------------------------------------


@bad_input(
    "QueryOperator",
    '`where="true); DROP TABLE t; SELECT (1"` (used to drop the table t)',
    "refused before anything runs: `where='true); DROP TABLE t; SELECT (1': closes a parenthesis it did not "
    "open (character 5)`; t is still there",
)
def test_where_cannot_drop_a_table(guarded: Any, context: Any) -> None:
    before = guarded.state()
    with pytest.raises(
        CampaignError, match=r"where='true\); DROP TABLE t; SELECT \(1': closes a parenthesis"
    ):
        QueryOperator(task_id="q", campaign_conn_id=guarded.conn_id, where="true); DROP TABLE t; SELECT (1")
    op = QueryOperator(task_id="q", campaign_conn_id=guarded.conn_id, where="{{ dag_run.conf['where'] }}")
    ctx = context("q")
    op.render_template_fields(
        {**ctx, "dag_run": SimpleNamespace(conf={"where": "true); DROP TABLE t; SELECT (1"})}
    )
    with pytest.raises(
        CampaignError, match=r"where='true\); DROP TABLE t; SELECT \(1': closes a parenthesis"
    ):
        op.execute(ctx)
    assert guarded.state() == before


@bad_input(
    "UpdateDataOperator",
    "`fields={'loyalty_points': '0)) RETURNING 1) SELECT 1 --'}` (used to cut off the UPDATE's WHERE: every "
    "profile set to 0, the result saying updated=1)",
    "refused before anything runs: `fields['loyalty_points']='0)) RETURNING 1) SELECT 1 --': closes a "
    "parenthesis it did not open`; no profile changes",
)
def test_fields_cannot_cut_off_the_update(guarded: Any, context: Any) -> None:
    fragment = "0)) RETURNING 1) SELECT 1 --"
    expected = re.escape(f"fields['loyalty_points']={fragment!r}: closes a parenthesis it did not open")
    before = guarded.state()
    args = {"population": [{"id": 1}], "resource": "profiles", "operation": "update"}
    with pytest.raises(CampaignError, match=expected):
        UpdateDataOperator(
            task_id="u", campaign_conn_id=guarded.conn_id, fields={"loyalty_points": fragment}, **args
        )
    op = UpdateDataOperator(
        task_id="u",
        campaign_conn_id=guarded.conn_id,
        fields={"loyalty_points": "{{ dag_run.conf['v'] }}"},
        **args,
    )
    ctx = context("u")
    op.render_template_fields({**ctx, "dag_run": SimpleNamespace(conf={"v": fragment})})
    with pytest.raises(CampaignError, match=expected):
        op.execute(ctx)
    assert guarded.state() == before
