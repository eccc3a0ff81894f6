"""Option types, ranges and shapes: refused when the operator is built, naming the option.

Each row builds the operator as a DAG file would; the error comes at parse time, before the task
exists, so nothing can be written. The last tests check a templated value again once rendered.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.extract_file import ExtractFileOperator
from airflow_campaign.operators.housekeeping import PruneStagingOperator
from airflow_campaign.operators.save_audience import SaveAudienceOperator
from airflow_campaign.operators.subscription_services import SubscriptionServicesOperator
from airflow_campaign.operators.targeting import (
    DeduplicationOperator,
    EnrichmentOperator,
    ExclusionOperator,
    IncrementalQueryOperator,
    IntersectionOperator,
    LoadFileOperator,
    QueryOperator,
    ReadAudienceOperator,
    SegmentationOperator,
    UnionOperator,
)
from airflow_campaign.operators.update_data import UpdateDataOperator
from tests.bad_input.matrix import Row, bad_input, cases

ROWS = [{"id": 1}]
OPERATORS: dict[str, tuple[type, dict[str, Any]]] = {
    "QueryOperator": (QueryOperator, {}),
    "IncrementalQueryOperator": (IncrementalQueryOperator, {}),
    "ReadAudienceOperator": (ReadAudienceOperator, {"audience": "gold"}),
    "LoadFileOperator": (LoadFileOperator, {"path": "/in/people.csv"}),
    "UnionOperator": (UnionOperator, {"populations": [ROWS, ROWS]}),
    "IntersectionOperator": (IntersectionOperator, {"populations": [ROWS, ROWS]}),
    "ExclusionOperator": (ExclusionOperator, {"primary": ROWS, "exclude": ROWS}),
    "DeduplicationOperator": (DeduplicationOperator, {"population": ROWS}),
    "EnrichmentOperator": (EnrichmentOperator, {"population": ROWS}),
    "SegmentationOperator": (SegmentationOperator, {"population": ROWS, "segments": [{"code": "A"}]}),
    "UpdateDataOperator": (UpdateDataOperator, {"population": ROWS, "resource": "profiles"}),
    "ExtractFileOperator": (ExtractFileOperator, {"path": "/out/people.csv", "population": ROWS}),
    "SaveAudienceOperator": (SaveAudienceOperator, {"population": ROWS, "audience": "gold"}),
    "SubscriptionServicesOperator": (
        SubscriptionServicesOperator,
        {"population": ROWS, "service": "newsletter", "operation": "subscribe"},
    ),
    "EmailDeliveryOperator": (
        EmailDeliveryOperator,
        {
            "population": ROWS,
            "subject": "Hi",
            "from_addr": "news@example.com",
            "text": "Hello",
            "channel": "outbox",
            "marketing": False,
        },
    ),
    "PruneStagingOperator": (PruneStagingOperator, {}),
}


def r(operator: str, given: str, outcome: str, **kwargs: Any) -> Row:
    return Row(operator, given, outcome, args=kwargs)


BIG = "x" * 1_000_000

ROWS_BY_OPTION = [
    # every campaign operator: the connection and on_empty
    *(
        r(
            op,
            "on_empty='ignore'",
            "refused: `on_empty='ignore' is not valid; use one of ['skip', 'continue', 'fail']`",
            on_empty="ignore",
        )
        for op in OPERATORS
        if op != "PruneStagingOperator"
    ),
    *(
        r(
            op,
            "campaign_conn_id=None",
            "refused: `campaign_conn_id=None: give a name (a non-empty string)`",
            campaign_conn_id=None,
        )
        for op in OPERATORS
        if op != "PruneStagingOperator"
    ),
    # every operator that takes one population
    *(
        row
        for op, (_, base) in OPERATORS.items()
        if "population" in base
        for row in (
            r(
                op,
                "population='campaign.profiles' (a table name, not a population)",
                "refused when the DAG is parsed: `population='campaign.profiles': give an upstream task's output "
                "(task.output …), a population dict, a list of row dicts or a DataFrame (got a str)`",
                population="campaign.profiles",
            ),
            r(
                op,
                "population=42",
                "refused: `population=42: give an upstream task's output … (got a int)`",
                population=42,
            ),
        )
    ),
    # QueryOperator and IncrementalQueryOperator
    *(
        row
        for op in ("QueryOperator", "IncrementalQueryOperator")
        for row in (
            r(
                op,
                "columns='email' (a string, not a list)",
                "refused: `columns='email': give a list of names, e.g. ['email'] for one`",
                columns="email",
            ),
            r(
                op,
                "columns={'email': 'e'} (a dict)",
                "refused: `columns={'email': 'e'}: give a list of names`",
                columns={"email": "e"},
            ),
            r(
                op,
                "columns=['email', 'email']",
                "refused: `['email'] named more than once`",
                columns=["email", "email"],
            ),
            r(
                op,
                "limit='10' (a string)",
                "refused: `limit='10': give a whole number >= 0; write 10 without quotes`",
                limit="10",
            ),
            r(op, "limit=-1", "refused: `limit=-1: give a whole number >= 0`", limit=-1),
            r(op, "limit=True", "refused: `limit=True: give a whole number >= 0`", limit=True),
            r(op, "distinct='no'", "refused: `distinct='no': give True or False`", distinct="no"),
            r(op, "parameters=['a'] (a list)", "refused: `parameters=['a']: give a dict`", parameters=["a"]),
            r(op, "resource='' (empty)", "refused: `resource='': give a name`", resource=""),
            r(
                op,
                "a 1 MB value in columns",
                "refused; the message shows the first 200 characters and the length",
                columns=BIG,
            ),
        )
    ),
    r(
        "IncrementalQueryOperator",
        "initial_watermark='last tuesday'",
        "refused, naming initial_watermark (not sql): `give an ISO 8601 timestamp`",
        initial_watermark="last tuesday",
    ),
    r(
        "IncrementalQueryOperator",
        "initial_watermark=20260101 (a number)",
        "refused: `initial_watermark=20260101: give an ISO 8601 timestamp`",
        initial_watermark=20260101,
    ),
    # ReadAudienceOperator
    r("ReadAudienceOperator", "audience=None", "refused: `audience=None: give a name`", audience=None),
    r("ReadAudienceOperator", "audience=42", "refused: `audience=42: give a name`", audience=42),
    r(
        "ReadAudienceOperator",
        "columns='email'",
        "refused: `columns='email': give a list of names`",
        columns="email",
    ),
    r("ReadAudienceOperator", "columns=[1, 2]", "refused: `columns[0]=1: give a name`", columns=[1, 2]),
    r("ReadAudienceOperator", "aws_conn_id=''", "refused: `aws_conn_id='': give a name`", aws_conn_id=""),
    # LoadFileOperator
    r(
        "LoadFileOperator",
        "delimiter=';;' (two characters)",
        "refused: `delimiter=';;': give one character`",
        delimiter=";;",
    ),
    r(
        "LoadFileOperator",
        "delimiter='\\n'",
        "refused: `give one character other than a quote or a line end`",
        delimiter="\n",
    ),
    r(
        "LoadFileOperator",
        "columns='email'",
        "refused: `columns='email': give a list of names`",
        columns="email",
    ),
    r(
        "LoadFileOperator",
        "types=['integer']",
        "refused: `types=['integer']: give a dict of {name: value}`",
        types=["integer"],
    ),
    r(
        "LoadFileOperator",
        "types={'points': 5}",
        "refused: `types['points']=5: give a string`",
        types={"points": 5},
    ),
    r("LoadFileOperator", "header='yes'", "refused: `header='yes': give True or False`", header="yes"),
    r(
        "LoadFileOperator",
        "reconcile_on=['email']",
        "refused: `give a column name, or {file_column: resource_column}`",
        reconcile_on=["email"],
    ),
    r("LoadFileOperator", "path='' (empty)", "refused: `path='': give a non-empty string`", path=""),
    r(
        "LoadFileOperator",
        "format='xlsx'",
        "refused: `format='xlsx' is not valid; use one of ['csv', 'tsv', 'jsonl', 'parquet']`",
        format="xlsx",
    ),
    # Union, Intersection, Exclusion
    *(
        row
        for op in ("UnionOperator", "IntersectionOperator")
        for row in (
            r(
                op,
                "populations={'kind': 'inline'} (a dict, not a list)",
                "refused: `populations=…: give a list`",
                populations={"kind": "inline"},
            ),
            r(op, "populations='t' (a string)", "refused: `populations='t': give a list`", populations="t"),
            r(
                op,
                "populations=[] (empty)",
                "refused: `populations=[]: give at least one item`",
                populations=[],
            ),
            r(
                op,
                "on='email' (a string)",
                "refused: `on='email': give a list of names, e.g. ['email'] for one`",
                on="email",
            ),
            r(op, "on=[None]", "refused: `on[0]=None: give a name`", on=[None]),
        )
    ),
    r(
        "UnionOperator",
        "limit='5'",
        "refused, naming limit (not populations): `limit='5': give a whole number >= 0`",
        limit="5",
    ),
    r("UnionOperator", "limit=-5 (negative)", "refused: `limit=-5: give a whole number >= 0`", limit=-5),
    r(
        "ExclusionOperator",
        "on='email' (a string)",
        "refused: `on='email': give a list of names`",
        on="email",
    ),
    r("ExclusionOperator", "on=['id', 'id']", "refused: `['id'] named more than once`", on=["id", "id"]),
    # DeduplicationOperator
    r("DeduplicationOperator", "keep=0", "refused: `keep=0: give a whole number >= 1`", keep=0),
    r(
        "DeduplicationOperator",
        "keep='1'",
        "refused: `keep='1': give a whole number >= 1; write 1 without quotes`",
        keep="1",
    ),
    r(
        "DeduplicationOperator",
        "on='email' (a string)",
        "refused: `on='email': give a list of names`",
        on="email",
    ),
    r(
        "DeduplicationOperator",
        "prefer='' (empty)",
        "refused: `prefer='': give a non-empty string`",
        prefer="",
    ),
    # EnrichmentOperator
    r(
        "EnrichmentOperator",
        "columns=['points'] (a list)",
        "refused: `columns=['points']: give a dict of {name: value}`",
        columns=["points"],
    ),
    r(
        "EnrichmentOperator",
        "columns={'points': 5}",
        "refused: `columns['points']=5: give a string`",
        columns={"points": 5},
    ),
    r(
        "EnrichmentOperator",
        "joins={'table': 't'} (a dict, not a list)",
        "refused: `joins=…: give a list of dicts`",
        joins={"table": "t"},
    ),
    r("EnrichmentOperator", "joins=['t']", "refused: `joins[0]='t': give a dict`", joins=["t"]),
    # SegmentationOperator
    r(
        "SegmentationOperator",
        "segments={'code': 'A'} (a dict)",
        "refused: `segments=…: give a list of dicts`",
        segments={"code": "A"},
    ),
    r("SegmentationOperator", "segments=['A']", "refused: `segments[0]='A': give a dict`", segments=["A"]),
    r(
        "SegmentationOperator",
        "overlap='false'",
        "refused: `overlap='false': give True or False`",
        overlap="false",
    ),
    r(
        "SegmentationOperator",
        "complement_code=''",
        "refused: `complement_code='': give a non-empty string`",
        complement_code="",
    ),
    r("SegmentationOperator", "seed=1.5", "refused: `seed=1.5: give a non-empty string`", seed=1.5),
    # UpdateDataOperator
    r(
        "UpdateDataOperator",
        "batch_size='100'",
        "refused: `batch_size='100': give a whole number >= 1`",
        batch_size="100",
    ),
    r(
        "UpdateDataOperator",
        "batch_size=0",
        "refused: `batch_size=0: give a whole number >= 1`",
        batch_size=0,
    ),
    r(
        "UpdateDataOperator",
        "keys='email' (a string)",
        "refused: `keys='email': give a list of names`",
        keys="email",
    ),
    r(
        "UpdateDataOperator",
        "fields=['points'] (a list)",
        "refused: `fields=['points']: give a dict`",
        fields=["points"],
    ),
    r(
        "UpdateDataOperator",
        "set_updated_at='no'",
        "refused: `set_updated_at='no': give True or False`",
        set_updated_at="no",
    ),
    r(
        "UpdateDataOperator",
        "operation='truncate'",
        "refused: `operation='truncate' is not valid`",
        operation="truncate",
    ),
    # ExtractFileOperator
    r(
        "ExtractFileOperator",
        "compression_level=12",
        "refused: `compression_level=12: give a whole number from 0 to 9`",
        compression_level=12,
    ),
    r(
        "ExtractFileOperator",
        "compression_level='1'",
        "refused: `compression_level='1': give a whole number from 0 to 9`",
        compression_level="1",
    ),
    r("ExtractFileOperator", "header='no'", "refused: `header='no': give True or False`", header="no"),
    r(
        "ExtractFileOperator",
        "skip_if_empty=1",
        "refused: `skip_if_empty=1: give True or False`",
        skip_if_empty=1,
    ),
    r("ExtractFileOperator", "path=None", "refused: `path=None: give a non-empty string`", path=None),
    r(
        "ExtractFileOperator",
        "timestamp_in_name='yes'",
        "refused: `timestamp_in_name='yes': give True or False`",
        timestamp_in_name="yes",
    ),
    # SaveAudienceOperator
    r(
        "SaveAudienceOperator",
        "audience='' (empty)",
        "refused: `audience='' is not a valid audience name`",
        audience="",
    ),
    r(
        "SaveAudienceOperator",
        "audience=['gold']",
        "refused: `audience=['gold']: give the audience's name as a string`",
        audience=["gold"],
    ),
    r("SaveAudienceOperator", "mode='append'", "refused: `mode='append' is not valid`", mode="append"),
    r(
        "SaveAudienceOperator",
        "asset_alias=''",
        "refused: `asset_alias='': give a non-empty string`",
        asset_alias="",
    ),
    r("SaveAudienceOperator", "path='' (empty)", "refused: `path='': give a non-empty string`", path=""),
    # SubscriptionServicesOperator
    r("SubscriptionServicesOperator", "service=''", "refused: `service='': give a name`", service=""),
    r(
        "SubscriptionServicesOperator",
        "service=['newsletter']",
        "refused: `service=['newsletter']: give a name`",
        service=["newsletter"],
    ),
    r(
        "SubscriptionServicesOperator",
        "origin=''",
        "refused: `origin='': give a non-empty string`",
        origin="",
    ),
    r(
        "SubscriptionServicesOperator",
        "operation='toggle'",
        "refused: `operation='toggle' is not valid`",
        operation="toggle",
    ),
    r(
        "SubscriptionServicesOperator",
        "duplicates='all'",
        "refused: `duplicates='all' is not valid`",
        duplicates="all",
    ),
    # EmailDeliveryOperator
    r(
        "EmailDeliveryOperator",
        "page_size='10'",
        "refused: `page_size='10': give a whole number from 1 to 100000; write 10 without quotes`",
        page_size="10",
    ),
    r(
        "EmailDeliveryOperator",
        "page_size=0",
        "refused: `page_size=0: give a whole number from 1 to 100000`",
        page_size=0,
    ),
    r(
        "EmailDeliveryOperator",
        "rate_limit='fast'",
        "refused: `rate_limit='fast': give a number greater than 0`",
        rate_limit="fast",
    ),
    r(
        "EmailDeliveryOperator",
        "rate_limit=float('inf')",
        "refused: `rate_limit=inf: give a number greater than 0`",
        rate_limit=float("inf"),
    ),
    r(
        "EmailDeliveryOperator",
        "max_retries=-1",
        "refused: `max_retries=-1: give a whole number from 0 to 100`",
        max_retries=-1,
    ),
    r(
        "EmailDeliveryOperator",
        "max_error_rate=1.5",
        "refused: `max_error_rate=1.5: give a number from 0 to 1`",
        max_error_rate=1.5,
    ),
    r(
        "EmailDeliveryOperator",
        "stale_after='-1d'",
        "refused: `stale_after='-1d' is not a duration`",
        stale_after="-1d",
    ),
    r(
        "EmailDeliveryOperator",
        "stale_after=dt.timedelta(0)",
        "refused: `give a positive duration`",
        stale_after=dt.timedelta(0),
    ),
    r("EmailDeliveryOperator", "shard='0'", "refused: `shard='0': give a whole number >= 0`", shard="0"),
    r(
        "EmailDeliveryOperator",
        "headers={'X-Tag': 5}",
        "refused: `headers['X-Tag']=5: give a string`",
        headers={"X-Tag": 5},
    ),
    r(
        "EmailDeliveryOperator",
        "proof_to='me@example.com' (a string)",
        "refused: `proof_to='me@example.com': give a list of names`",
        proof_to="me@example.com",
    ),
    r("EmailDeliveryOperator", "subject=''", "refused: `subject='': give a non-empty string`", subject=""),
    r(
        "EmailDeliveryOperator",
        "marketing='yes'",
        "refused: `marketing='yes': give True or False`",
        marketing="yes",
    ),
    r(
        "ExclusionOperator",
        "exclude=[] (nothing to exclude)",
        "refused: `exclude=[]: give at least one population to exclude`",
        exclude=[],
    ),
    r(
        "ExclusionOperator",
        "exclude='t' (a string)",
        "refused: `exclude='t': give an upstream task's output (task.output …), a population dict, a list of row dicts or a DataFrame`",
        exclude="t",
    ),
    r(
        "ExclusionOperator",
        "exclude=42",
        "refused: `exclude=42: give an upstream task's output …`",
        exclude=42,
    ),
    r("ReadAudienceOperator", "audience=' ' (blank)", "refused: `audience=' ': give a name`", audience=" "),
    r(
        "ReadAudienceOperator",
        "columns=['email', 'email']",
        "refused: `['email'] named more than once`",
        columns=["email", "email"],
    ),
    r(
        "ReadAudienceOperator",
        "columns=['em\\x00ail'] (a NUL character)",
        "refused: `a name cannot contain a NUL character`",
        columns=["em\x00ail"],
    ),
    r(
        "ReadAudienceOperator",
        "columns={'email': 'e'} (a dict)",
        "refused: `columns={'email': 'e'}: give a list of names`",
        columns={"email": "e"},
    ),
    # PruneStagingOperator
    r(
        "PruneStagingOperator",
        "older_than=dt.timedelta(days=-1)",
        "refused: `give a positive duration`",
        older_than=dt.timedelta(days=-1),
    ),
    r(
        "PruneStagingOperator",
        "older_than='7 days' (a word for the unit)",
        "refused: `older_than='7 days' is not a duration; write e.g. '7d'`",
        older_than="7 days",
    ),
    r(
        "PruneStagingOperator",
        "older_than='1y' (an unknown unit)",
        "refused: `older_than='1y' is not a duration`",
        older_than="1y",
    ),
    r(
        "PruneStagingOperator",
        "older_than=[7] (a list)",
        "refused: `older_than=[7]: give a duration such as '7d'`",
        older_than=[7],
    ),
    r(
        "PruneStagingOperator",
        "older_than=float('inf')",
        "refused: `give a positive duration`",
        older_than=float("inf"),
    ),
    r(
        "PruneStagingOperator",
        "older_than=None",
        "refused: `older_than=None: give a duration such as '7d'`",
        older_than=None,
    ),
    r(
        "PruneStagingOperator",
        "older_than='' (empty)",
        "refused: `older_than='' is not a duration`",
        older_than="",
    ),
    r(
        "PruneStagingOperator",
        "older_than=-3600",
        "refused: `older_than=-3600: give a positive duration` (nothing dropped)",
        older_than=-3600,
    ),
    r(
        "PruneStagingOperator",
        "older_than=0",
        "refused: `older_than=0: give a positive duration`",
        older_than=0,
    ),
    r(
        "PruneStagingOperator",
        "older_than='soon'",
        "refused: `older_than='soon' is not a duration`",
        older_than="soon",
    ),
    r(
        "PruneStagingOperator",
        "older_than=True",
        "refused: `older_than=True: give a duration`",
        older_than=True,
    ),
    r(
        "PruneStagingOperator",
        "older_than=float('nan')",
        "refused: `give a positive duration`",
        older_than=float("nan"),
    ),
]


def _option(row: Row) -> str:
    return next(iter(row.args))


@cases(*ROWS_BY_OPTION)
def test_a_bad_option_is_refused_when_the_dag_is_parsed(row: Row) -> None:
    cls, base = OPERATORS[row.operator]
    with pytest.raises(CampaignError) as raised:
        cls(task_id="t", **{**base, **row.args})
    message = str(raised.value)
    option = _option(row)
    assert message.startswith(f"{option}") or f"{option}[" in message or f"{option}=" in message, message
    assert len(message) < 600, f"the message echoes the value whole ({len(message)} characters)"


@bad_input(
    "QueryOperator",
    "columns templated, rendering to the string 'email'",
    "refused when the task runs, before any SQL: `columns='email': give a list of names`",
)
def test_a_templated_option_is_checked_again_once_rendered() -> None:
    op = QueryOperator(task_id="t", columns="{{ params.columns }}")  # waits: a template
    op.columns = "email"  # what rendering the template gives
    with pytest.raises(CampaignError, match=r"columns='email': give a list of names"):
        op.execute({})  # refused before a connection is even made


@bad_input(
    "EmailDeliveryOperator",
    "delivery templated, rendering to an empty string",
    "refused when the task runs: `delivery='': give a name`",
)
def test_a_templated_delivery_name_is_checked_once_rendered() -> None:
    cls, base = OPERATORS["EmailDeliveryOperator"]
    op = cls(task_id="t", delivery="{{ params.name }}", **base)
    op.delivery = ""
    with pytest.raises(CampaignError, match=r"delivery='': give a name"):
        op.execute({})
