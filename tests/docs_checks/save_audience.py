"""Checks of docs/examples/save_audience.py: the audiences it saves, its files and its Asset events."""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import psycopg

from tests.conftest import count
from tests.docs_support import run_example

LOYAL = "loyalty_points >= 9000 AND email LIKE '%@%' AND NOT email_denylisted"
MEMBERS = (
    "SELECT m.member_key::bigint FROM campaign.audience_members m JOIN campaign.audiences a"
    " ON a.id = m.audience_id WHERE a.name = %s ORDER BY 1"
)


def _asset_extras(uri: str, run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(
            session.scalars(
                select(AssetEvent.extra)
                .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                .where(AssetModel.uri == uri, AssetEvent.source_run_id == run_id)
            )
        )


def check_save_audience(db: psycopg.Connection) -> None:
    out = os.path.join(tempfile.gettempdir(), "campaign-docs")
    shutil.rmtree(out, ignore_errors=True)
    run = run_example("save_audience")
    expected = [r[0] for r in db.execute(f"SELECT id FROM campaign.profiles WHERE {LOYAL} ORDER BY id")]
    assert len(expected) > 50

    # the list audience, its size history and the shared export: a header, then the sorted keys
    saved = run.xcom("save_loyal")
    export = os.path.join(out, "shared", "docs_loyal_customers.csv")
    assert saved == {
        "audience": "docs_loyal_customers",
        "type": "list",
        "size": len(expected),
        "added": len(expected),
        "removed": 0,
        "export": export,
    }
    assert [r[0] for r in db.execute(MEMBERS, ("docs_loyal_customers",))] == expected
    history = db.execute(
        "SELECT s.size, s.dag_id, s.task_id FROM campaign.audience_sizes s JOIN campaign.audiences a"
        " ON a.id = s.audience_id WHERE a.name = 'docs_loyal_customers' AND s.run_id = %s",
        (run.run_id,),
    ).fetchall()
    assert history == [(len(expected), "docs_save_audience", "save_loyal")]
    with open(export, encoding="utf-8") as handle:
        assert handle.read() == "id\n" + "".join(f"{key}\n" for key in expected)

    # the file audience: one row per member with the population's columns
    as_file = run.xcom("save_loyal_file")
    assert re.fullmatch(re.escape(out) + r"/audiences/docs_loyal_customers_\d{8}\.csv", as_file["path"])
    # written under a version of that path, which the audience row names
    assert re.fullmatch(
        re.escape(out) + r"/audiences/docs_loyal_customers_\d{8}\.a\d+\.v\d{8}T\d{12}Z\.csv", as_file["uri"]
    )
    with open(as_file["uri"], encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert lines[0] == "id,email,first_name"
    assert [int(line.split(",")[0]) for line in lines[1:]] == expected
    assert count(
        db,
        "SELECT row_count FROM campaign.audiences WHERE name = 'docs_loyal_customers_file' AND type = 'file'",
    ) == len(expected)

    # the snapshot: a new audience named with the run's date and time
    snapshot = run.xcom("snapshot")
    assert re.fullmatch(r"docs_loyal_snapshot_\d{8}T\d{6}", snapshot["audience"])
    assert [r[0] for r in db.execute(MEMBERS, (snapshot["audience"],))] == expected
    assert run.xcom("report") == {
        "docs_loyal_customers": len(expected),
        "docs_loyal_customers_file": len(expected),
        snapshot["audience"]: len(expected),
    }

    # Asset events: the audience's URI, with the size in the extra (the snapshot's through an alias)
    for result in (saved, as_file, snapshot):
        (extra,) = _asset_extras(f"campaign://audience/{result['audience']}", run.run_id)
        assert extra == {**result, "resource": "profiles"}
    shutil.rmtree(out, ignore_errors=True)
