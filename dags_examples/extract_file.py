"""Extract files: the VIP audience for the CRM and for the shop tills, and the day's birthdays for a partner.

Three files a day, in a folder per day under $CAMPAIGN_EXTRACT_DIR (default /tmp/campaign-extracts):

* ``vip_<date>_<time>.jsonl.gz``: every VIP with their contact columns, one JSON object per line,
  for the CRM import;
* ``VIP.TXT``: the same people for the shop tills, an old system that wants pipe-separated
  latin-1 text with Windows line endings, no header, upper-case names and dd.mm.yyyy dates;
* ``birthdays_<date>.csv``: profiles whose birthday is the run's day, for the gift partner;
  no file on a day without birthdays.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG

from airflow_campaign.operators.extract_file import ExtractFileOperator
from airflow_campaign.operators.targeting import QueryOperator, ReadAudienceOperator

EXTRACT_DIR = os.environ.get("CAMPAIGN_EXTRACT_DIR", "/tmp/campaign-extracts")
DAY_DIR = os.path.join(EXTRACT_DIR, "{{ ds }}")

with DAG(
    dag_id="extract_file",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "example"],
    doc_md=__doc__,
) as dag:
    vip = ReadAudienceOperator(
        task_id="vip",
        audience="vip",
        columns=["email", "first_name", "last_name", "loyalty_points", "last_purchase_at"],
    )

    vip_for_crm = ExtractFileOperator(
        task_id="vip_for_crm",
        population=vip.output,
        path=os.path.join(DAY_DIR, "vip.jsonl.gz"),
        format="jsonl",
        sort=["id"],
    )

    vip_for_tills = ExtractFileOperator(
        task_id="vip_for_tills",
        population=vip.output,
        path=os.path.join(DAY_DIR, "VIP.TXT"),
        format="text",
        delimiter="|",
        header=False,
        line_ending="crlf",
        encoding="latin-1",
        columns=[
            "id",
            {"name": "name", "expr": "upper(last_name || ', ' || first_name)"},
            {"name": "points", "expr": "loyalty_points"},
            {"name": "last_visit", "expr": "last_purchase_at", "format": "DD.MM.YYYY"},
        ],
        sort=["id"],
        timestamp_in_name=False,
    )

    birthdays = QueryOperator(
        task_id="birthdays",
        where="to_char(birth_date, 'MM-DD') = '{{ ds[5:] }}' AND email IS NOT NULL AND NOT email_denylisted",
        columns=["email", "first_name", "birth_date"],
    )

    birthday_file = ExtractFileOperator(
        task_id="birthday_file",
        population=birthdays.output,
        path=os.path.join(DAY_DIR, "birthdays_{{ ds_nodash }}.csv"),
        columns=[
            "email",
            "first_name",
            {"name": "age", "expr": "date_part('year', age('{{ ds }}', birth_date))::int"},
        ],
        sort=["email", "id"],
        timestamp_in_name=False,
        skip_if_empty=True,
    )
