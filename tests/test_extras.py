"""The optional parts: without them the core works, and a feature that needs one names the extra.

One real subprocess where the optional libraries cannot be imported (``sys.modules[name] =
None`` makes ``import name`` fail, as on a worker where the extra was not installed) runs core
tasks against the test database (a query, CSV and JSON Lines files loaded and written back
with UpdateData, a local CSV extract, a list audience, an outbox delivery) and the features
that need an extra (Parquet, s3:// paths, OpenPGP, SES), each of which must fail with a
CampaignError saying what to ``pip install``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from airflow_campaign.embedded import connection_fields
from airflow_campaign.extras import EXTRAS, install_command

ROOT = Path(__file__).resolve().parent.parent
#: What each extra brings that the core must not need. The amazon provider's package itself stays
#: importable: Airflow reads its provider info through the entry point the installed package has.
BLOCKED = [
    "pyarrow",
    "pandas",
    "pysequoia",
    "boto3",
    "botocore",
    "phonenumbers",
    "gsm0338",
    "airflow.providers.amazon.aws",
]

SCRIPT = r"""
import json, sys
blocked = json.loads(sys.argv[1])
for name in blocked:
    sys.modules[name] = None  # `import name` now raises ModuleNotFoundError

import datetime as dt
import os
from pathlib import Path

import psycopg

from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.extract_file import ExtractFileOperator
from airflow_campaign.operators.save_audience import SaveAudienceOperator
from airflow_campaign.operators.sms import SmsDeliveryOperator
from airflow_campaign.operators.targeting import LoadFileOperator, QueryOperator
from airflow_campaign.operators.update_data import UpdateDataOperator
from tests.conftest import FakeTaskInstance

conn_id, url, folder = sys.argv[2], sys.argv[3], Path(sys.argv[4])
results = {}


def context(task_id):
    ti = FakeTaskInstance(
        dag_id="extras", task_id=task_id, run_id="extras_run", map_index=-1, try_number=1, xcoms={}
    )
    return {"ti": ti, "run_id": ti.run_id, "logical_date": dt.datetime(2026, 1, 15, tzinfo=dt.timezone.utc)}


def attempt(name, make):
    try:
        operator = make()
        results[name] = {"ok": operator.execute(context(operator.task_id))}
    except Exception as exc:
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}


def email(task_id, **kwargs):
    return EmailDeliveryOperator(
        task_id=task_id, population=results["query"]["ok"], subject="Hi", from_addr="news@example.com",
        text="Hello", marketing=False, campaign_conn_id=conn_id, **kwargs
    )


# the core
attempt("query", lambda: QueryOperator(task_id="query", campaign_conn_id=conn_id, where="id <= 4"))
attempt("csv", lambda: LoadFileOperator(
    task_id="csv", path=str(folder / "points.csv"), reconcile_on="id", types={"points": "integer"},
    campaign_conn_id=conn_id))
attempt("update", lambda: UpdateDataOperator(
    task_id="update", population=results["csv"]["ok"], operation="update",
    fields={"loyalty_points": "points"}, campaign_conn_id=conn_id))
attempt("jsonl", lambda: LoadFileOperator(task_id="jsonl", path=str(folder / "points.jsonl"), campaign_conn_id=conn_id))
attempt("extract", lambda: ExtractFileOperator(
    task_id="extract", sql="SELECT id, loyalty_points FROM campaign.profiles WHERE id <= 2 ORDER BY id",
    path=str(folder / "out" / "points.csv"), timestamp_in_name=False, campaign_conn_id=conn_id))
attempt("audience", lambda: SaveAudienceOperator(
    task_id="audience", population=results["query"]["ok"], audience="extras_list", campaign_conn_id=conn_id))
attempt("outbox", lambda: email("outbox", channel="outbox", channel_options={"folder": str(folder / "outbox")}))

# what needs an extra
attempt("parquet_in", lambda: LoadFileOperator(task_id="parquet_in", path=str(folder / "points.parquet"), campaign_conn_id=conn_id))
attempt("parquet_out", lambda: ExtractFileOperator(
    task_id="parquet_out", sql="SELECT 1 AS one", path=str(folder / "out" / "one.parquet"), format="parquet",
    timestamp_in_name=False, campaign_conn_id=conn_id))
attempt("s3_in", lambda: LoadFileOperator(task_id="s3_in", path="s3://campaign-in/points.csv", campaign_conn_id=conn_id))
attempt("s3_out", lambda: ExtractFileOperator(
    task_id="s3_out", sql="SELECT 1 AS one", path="s3://campaign-out/one.csv", timestamp_in_name=False,
    campaign_conn_id=conn_id))
attempt("pgp", lambda: ExtractFileOperator(
    task_id="pgp", sql="SELECT 1 AS one", path=str(folder / "out" / "one.csv.gpg"), timestamp_in_name=False,
    encrypt_with="variable:partner_public_key", campaign_conn_id=conn_id))
attempt("ses", lambda: email("ses", channel="ses", delivery="extras_ses"))
attempt("sms", lambda: SmsDeliveryOperator(
    task_id="sms", population=results["query"]["ok"], text="Hi", message_type="transactional",
    channel="outbox", channel_options={"folder": str(folder / "sms")}, campaign_conn_id=conn_id))
attempt("sms_footer", lambda: SmsDeliveryOperator(
    task_id="sms_footer", population=results["query"]["ok"], text="Hi", stop_footer="STOP 36111",
    channel="outbox", campaign_conn_id=conn_id))

with psycopg.connect(url) as conn:
    points = conn.execute("SELECT id, loyalty_points FROM campaign.profiles WHERE id IN (1, 2) ORDER BY id").fetchall()
print(json.dumps({
    "results": results,
    "points": points,
    "still_blocked": [name for name in blocked if sys.modules.get(name) is not None],
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in {b.split(".")[0] for b in blocked[:-1]}
                     and sys.modules[m] is not None),
}, default=str))
"""


@pytest.fixture(scope="module")
def without_extras(
    database_url: str, scratch_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Run SCRIPT once, in a subprocess with the optional libraries blocked, on a private copy of
    the seeded database; what it reports."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("extras")
    (folder / "points.csv").write_text("id,points\n1,111\n2,222\n", encoding="utf-8")
    (folder / "points.jsonl").write_text('{"code": "a", "points": 1}\n{"code": "b", "points": 2}\n')
    pq.write_table(pa.table({"code": ["a", "b"], "points": [1, 2]}), folder / "points.parquet")
    name = f"campaign_x_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(scratch_template)
            )
        )
    url = make_conninfo(database_url, dbname=name)
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, json.dumps(BLOCKED), "campaign_extras", url, str(folder)],
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "AIRFLOW_CONN_CAMPAIGN_EXTRAS": json.dumps(connection_fields(url)),
            },
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        report["folder"] = folder
        yield report
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_the_core_works_without_any_extra(without_extras: dict[str, Any]) -> None:
    results, folder = without_extras["results"], without_extras["folder"]
    core = ["query", "csv", "update", "jsonl", "extract", "audience", "outbox"]
    assert {name: results[name].get("error") for name in core} == dict.fromkeys(core)
    assert results["query"]["ok"]["count"] == 4 and results["jsonl"]["ok"]["count"] == 2
    assert without_extras["points"] == [[1, 111], [2, 222]]  # loaded from CSV, written by UpdateData
    assert (folder / "out" / "points.csv").read_text() == "id,loyalty_points\n1,111\n2,222\n"
    assert results["audience"]["ok"]["size"] == 4
    assert len(list((folder / "outbox").glob("*.eml"))) == 4
    # nothing slipped past the block
    assert without_extras["still_blocked"] == [] and without_extras["loaded"] == []


@pytest.mark.parametrize(
    ("feature", "extra", "option"),
    [
        ("parquet_in", "parquet", "points.parquet"),
        ("parquet_out", "parquet", "format='parquet'"),
        ("s3_in", "amazon", "path='s3://campaign-in/points.csv'"),
        ("s3_out", "amazon", "path='s3://campaign-out/one.csv'"),
        ("pgp", "pgp", "encrypt_with"),
        ("ses", "amazon", "channel='ses'"),
        ("sms", "sms", "an SMS delivery"),
        ("sms_footer", "sms", "an SMS delivery"),
    ],
)
def test_a_feature_without_its_extra_names_the_extra(
    without_extras: dict[str, Any], feature: str, extra: str, option: str
) -> None:
    error = without_extras["results"][feature].get("error", "")
    assert error.startswith("CampaignError: "), error
    assert install_command(extra) in error and f"optional {extra!r} part" in error
    assert option in error
    if feature.startswith("parquet_out") or feature in ("s3_out", "pgp"):
        assert not list((without_extras["folder"] / "out").glob("one*"))  # nothing written


def test_the_extras_are_declared_and_dev_installs_them_all() -> None:
    """As the installed package declares them (``make install`` installs ``.[embedded,dev]``)."""
    from importlib.metadata import metadata

    from packaging.requirements import Requirement

    declared = metadata("airflow-campaign")
    assert set(EXTRAS) | {"all", "dev"} <= set(declared.get_all("Provides-Extra") or [])
    requirements = [Requirement(r) for r in declared.get_all("Requires-Dist") or []]

    def needed(extra: str | None) -> set[str]:
        return {
            r.name + (f"[{','.join(sorted(r.extras))}]" if r.extras else "")
            for r in requirements
            if (r.marker is None) == (extra is None)
            and (extra is None or r.marker.evaluate({"extra": extra}))
        }

    core = needed(None)
    for extra in EXTRAS:  # the build writes "all" and "dev" out in full
        assert needed(extra) <= needed("all") <= needed("dev"), extra
    for extra, library in [
        ("amazon", "apache-airflow-providers-amazon"),
        ("amazon", "boto3"),
        ("parquet", "pyarrow"),
        ("pgp", "pysequoia"),
        ("pandas", "pandas"),
        ("sms", "phonenumbers"),
        ("sms", "gsm0338"),
    ]:
        assert library in needed(extra) and not any(c.startswith(library) for c in core)
