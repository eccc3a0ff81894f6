"""Bad inputs each operator only sees when it runs (or that Airflow itself refuses): a clear
error naming the option, and nothing left behind (no staging table, no registry row)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.housekeeping import PruneStagingOperator
from airflow_campaign.operators.save_audience import SaveAudienceOperator
from airflow_campaign.operators.subscription_services import SubscriptionServicesOperator
from airflow_campaign.operators.targeting import (
    DeduplicationOperator,
    EnrichmentOperator,
    ExclusionOperator,
    IntersectionOperator,
    ReadAudienceOperator,
    SegmentationOperator,
    UnionOperator,
)
from tests.bad_input.matrix import Row, cases
from tests.bad_input.test_options import OPERATORS
from tests.conftest import count, staged

P = [{"id": 1}, {"id": 2}]


def run(cls: type, **kwargs: Any) -> Callable[[Any, Any], Any]:
    def go(conn_id: str, ctx: Any) -> Any:
        return cls(task_id="bad", campaign_conn_id=conn_id, **kwargs).execute(ctx)

    return go


def _read_a_file_audience_whose_file_is_gone(conn_id: str, ctx: Any) -> Any:
    import os
    import tempfile

    from tests.operators.test_save_audience import run_context

    folder = tempfile.mkdtemp(prefix="campaign-gone-")
    saved = SaveAudienceOperator(
        task_id="save_gone",
        population=P,
        audience="gone",
        path=os.path.join(folder, "gone.csv"),
        campaign_conn_id=conn_id,
    ).execute(run_context(lambda task_id, run_id=None: {**ctx, "ti": ctx["ti"]}, "save_gone"))
    os.remove(saved["uri"])
    return ReadAudienceOperator(task_id="bad", audience="gone", campaign_conn_id=conn_id).execute(ctx)


RUNTIME = [
    Row(
        "ReadAudienceOperator",
        "a file audience whose file was deleted by hand",
        "refused: `path='…gone.a<id>.v<stamp>.csv': no such file; …` (the audience's current version is named)",
        args={
            "go": _read_a_file_audience_whose_file_is_gone,
            "match": r"gone\.a\d+\.v\d+T\d+Z\.csv'?: no such file",
        },
    ),
    # set operations
    Row(
        "UnionOperator",
        "populations of two resources (profiles and a table of its own) without on=",
        "refused: `populations[1] is a population of resource … not 'profiles' …; combine populations of one resource`",
        args={
            "go": run(
                UnionOperator,
                populations=[
                    P,
                    {
                        "kind": "inline",
                        "key": "id",
                        "resource": None,
                        "rows": P,
                        "columns": ["id"],
                        "count": 2,
                    },
                ],
            ),
            "match": r"populations\[1\] is a population of resource",
        },
    ),
    Row(
        "UnionOperator",
        "on=['nope'], a column neither input has",
        "refused: `on: unknown column(s) ['nope']`",
        args={"go": run(UnionOperator, populations=[P, P], on=["nope"]), "match": r"nope"},
    ),
    Row(
        "IntersectionOperator",
        "one population only",
        "refused: an intersection needs at least two populations",
        args={"go": run(IntersectionOperator, populations=[P]), "match": r"two|2"},
    ),
    Row(
        "IntersectionOperator",
        "on=['nope'], a column neither input has",
        "refused: `on: unknown column(s) ['nope']`",
        args={"go": run(IntersectionOperator, populations=[P, P], on=["nope"]), "match": r"nope"},
    ),
    Row(
        "ExclusionOperator",
        "on=['nope'], a column neither input has",
        "refused: `on: unknown column(s) ['nope']`",
        args={"go": run(ExclusionOperator, primary=P, exclude=P, on=["nope"]), "match": r"nope"},
    ),
    Row(
        "ExclusionOperator",
        "exclude of another resource without on=",
        "refused: `… is a population of resource None …; combine populations of one resource`",
        args={
            "go": run(
                ExclusionOperator,
                primary=P,
                exclude={
                    "kind": "inline",
                    "key": "id",
                    "resource": None,
                    "rows": P,
                    "columns": ["id"],
                    "count": 2,
                },
            ),
            "match": r"is a population of resource",
        },
    ),
    # deduplication, enrichment, segmentation
    Row(
        "DeduplicationOperator",
        "on=['nope']",
        "refused: `on: unknown column(s) ['nope']`",
        args={"go": run(DeduplicationOperator, population=P, on=["nope"]), "match": r"nope"},
    ),
    Row(
        "DeduplicationOperator",
        "prefer naming a column that does not exist",
        "refused: `prefer='nope DESC': the database rejected the SQL (UndefinedColumn: column \"nope\" does not exist)`",
        args={"go": run(DeduplicationOperator, population=P, prefer="nope DESC"), "match": r"prefer.*nope"},
    ),
    Row(
        "EnrichmentOperator",
        "columns={} and joins=[] (nothing to add)",
        "refused: `columns/joins: give at least one column to add`",
        args={"go": run(EnrichmentOperator, population=P, columns={}), "match": r"give at least one column"},
    ),
    Row(
        "EnrichmentOperator",
        "a column expression over an unknown column",
        "refused: `columns['x']: the database rejected the SQL (UndefinedColumn …)`",
        args={"go": run(EnrichmentOperator, population=P, columns={"x": "r.nope"}), "match": r"columns"},
    ),
    Row(
        "SegmentationOperator",
        "segments=[] (none)",
        "refused: `segments: give at least one segment`",
        args={
            "go": run(SegmentationOperator, population=P, segments=[]),
            "match": r"give at least one segment",
        },
    ),
    Row(
        "SegmentationOperator",
        "two segments with the same code",
        "refused: `segments: codes must be unique`",
        args={
            "go": run(SegmentationOperator, population=P, segments=[{"code": "A"}, {"code": "A"}]),
            "match": r"codes must be unique",
        },
    ),
    Row(
        "SegmentationOperator",
        "percent=150",
        "refused: `segments[0].percent=150: give a number between 0 and 100`",
        args={
            "go": run(SegmentationOperator, population=P, segments=[{"code": "A", "percent": 150}]),
            "match": r"percent=150",
        },
    ),
    Row(
        "SegmentationOperator",
        "a segment option that does not exist (precent)",
        "refused: `segments[0]: unknown option(s) ['precent']`",
        args={
            "go": run(SegmentationOperator, population=P, segments=[{"code": "A", "precent": 5}]),
            "match": r"unknown option",
        },
    ),
    Row(
        "SegmentationOperator",
        "code='return_value' (Airflow's own XCom key)",
        "refused: `… is Airflow's own key; choose another code`",
        args={
            "go": run(SegmentationOperator, population=P, segments=[{"code": "return_value"}]),
            "match": r"Airflow's own key",
        },
    ),
    # audiences
    Row(
        "ReadAudienceOperator",
        "an audience that does not exist",
        "refused: `audience='nope' does not exist; known audiences: […]`",
        args={"go": run(ReadAudienceOperator, audience="nope"), "match": r"audience='nope' does not exist"},
    ),
    Row(
        "ReadAudienceOperator",
        "columns naming a column the resource lacks",
        "refused: `columns: unknown column(s) ['nope']`",
        args={"go": run(ReadAudienceOperator, audience="vip", columns=["nope"]), "match": r"nope"},
    ),
    Row(
        "SaveAudienceOperator",
        "mode='update' of an audience that does not exist",
        "refused before any write: `audience='nope' does not exist, and mode='update' only updates an existing audience`",
        args={
            "go": run(SaveAudienceOperator, population=P, audience="nope", mode="update"),
            "match": r"mode='update'",
        },
    ),
    Row(
        "SaveAudienceOperator",
        "a population of no resource",
        "refused: `population: its rows belong to no resource`",
        args={
            "go": run(
                SaveAudienceOperator,
                population={
                    "kind": "inline",
                    "key": "id",
                    "resource": None,
                    "rows": P,
                    "columns": ["id"],
                    "count": 2,
                },
                audience="x",
            ),
            "match": r"belong to no resource",
        },
    ),
    Row(
        "SaveAudienceOperator",
        "type='file' without path",
        "refused: `path: audience 'x' is saved as a file audience, so give path=`",
        args={
            "go": run(SaveAudienceOperator, population=P, audience="x", type="file"),
            "match": r"give path=",
        },
    ),
    # subscriptions
    Row(
        "SubscriptionServicesOperator",
        "a service that does not exist",
        "refused before any write: names the known services",
        args={
            "go": run(SubscriptionServicesOperator, population=P, service="nope", operation="subscribe"),
            "match": r"nope",
        },
    ),
    Row(
        "SubscriptionServicesOperator",
        "operation_column holding 'maybe'",
        "refused: the values that are neither subscribe nor unsubscribe",
        args={
            "go": run(
                SubscriptionServicesOperator,
                population=[{"id": 1, "op": "maybe"}],
                service="newsletter",
                operation_column="op",
            ),
            "match": r"maybe",
        },
    ),
    Row(
        "SubscriptionServicesOperator",
        "date_column holding text that is no date",
        "refused: `date_column='d': the database rejected the SQL …`",
        args={
            "go": run(
                SubscriptionServicesOperator,
                population=[{"id": 1, "d": "yesterday-ish"}],
                service="newsletter",
                operation="subscribe",
                date_column="d",
            ),
            "match": r"date_column",
        },
    ),
]


@cases(*RUNTIME)
def test_a_bad_input_seen_at_run_time_is_refused_and_leaves_nothing(row: Row, scratch, context) -> None:
    ctx = context("bad")
    before = count(scratch.db, "SELECT count(*) FROM campaign.subscription_events")
    with pytest.raises(CampaignError, match=row.args["match"]):
        row.args["go"](scratch.conn_id, ctx)
    assert staged(scratch.db, ctx) == []
    assert count(scratch.db, "SELECT count(*) FROM campaign.subscription_events") == before


@cases(
    *(
        Row(
            op,
            "an option that does not exist (limt=5)",
            "refused by Airflow when the DAG is parsed: "
            f"`Invalid arguments were passed to {op} (task_id: t). Invalid arguments were: **kwargs: {{'limt': 5}}`",
        )
        for op in OPERATORS
    )
)
def test_an_unknown_option_is_refused_by_airflow(row: Row) -> None:
    cls, base = OPERATORS[row.operator]
    with pytest.raises(TypeError, match=r"(?s)Invalid arguments were passed to .*limt"):
        cls(task_id="t", limt=5, **base)


@cases(
    Row(
        "PruneStagingOperator",
        "older_than templated, rendering to '-1d'",
        "refused when the task runs, before any table is dropped: `older_than='-1d' is not a duration`",
        args={"value": "-1d", "match": r"older_than='-1d' is not a duration"},
    ),
    Row(
        "PruneStagingOperator",
        "older_than templated, rendering to '0s'",
        "refused when the task runs, before any table is dropped: `older_than='0s': give a positive duration`",
        args={"value": "0s", "match": r"give a positive duration"},
    ),
)
def test_prune_checks_a_rendered_retention_before_dropping(row: Row, scratch, context) -> None:
    tables = count(scratch.db, "SELECT count(*) FROM campaign.staging_tables")
    op = PruneStagingOperator(
        task_id="prune", older_than="{{ params.keep }}", campaign_conn_id=scratch.conn_id
    )
    op.older_than = row.args["value"]  # what rendering gives
    with pytest.raises(CampaignError, match=row.args["match"]):
        op.execute(context("prune"))
    assert count(scratch.db, "SELECT count(*) FROM campaign.staging_tables") == tables
