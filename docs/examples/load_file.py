"""LoadFileOperator: a store's sign-up file, reconciled with the profiles by email."""

import csv
import datetime as dt
import os
import shutil
import tempfile

from airflow.sdk import DAG, task
from psycopg import sql

from airflow_campaign.hooks.campaign import CampaignHook
from airflow_campaign.operators.targeting import LoadFileOperator

with DAG(
    dag_id="docs_load_file",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:

    @task
    def write_signups() -> str:
        """Write a small CSV: three known customers, a walk-in nobody knows, a bad points value."""
        with CampaignHook().transaction() as conn:
            emails = [
                row[0]
                for row in conn.execute(
                    "SELECT email FROM campaign.profiles WHERE email LIKE '%@%'"
                    " GROUP BY email HAVING count(*) = 1 ORDER BY min(id) LIMIT 3"
                )
            ]
        path = os.path.join(tempfile.mkdtemp(prefix="signups-"), "store_signups.csv")
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["email", "points", "signed_up_on"])
            for i, email in enumerate(emails):
                writer.writerow([email, 100 * (i + 1), "2026-01-15"])
            writer.writerow(["walk-in@store.example.com", 50, "2026-01-15"])
            writer.writerow([emails[0], "lots", "2026-01-16"])
        return path

    signups_file = write_signups()

    signups = LoadFileOperator(
        task_id="signups",
        path=signups_file,
        reconcile_on="email",
        types={"points": "integer", "signed_up_on": "date"},
    )

    @task
    def show_rejects(rejects: dict) -> None:
        """Rejected rows are a population too (XCom key "rejects"): line, reason and the raw values."""
        query = sql.SQL("SELECT _line, reject_reason, email FROM {} ORDER BY _line").format(
            sql.Identifier(*rejects["table"].split("."))
        )
        with CampaignHook().transaction() as conn:
            for line, reason, email in conn.execute(query):
                print(f"line {line}: {reason} ({email})")

    @task(trigger_rule="all_done")
    def remove_file(path: str) -> None:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    shown = show_rejects(signups.output["rejects"])
    [signups, shown] >> remove_file(signups_file)
