"""End to end: dags_examples/extract_file.py under dag.test(); the files hold what the database says."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
from pathlib import Path

import psycopg
import pytest

from airflow_campaign import demo
from tests.docs_support import AUDIENCE, Run

DAG_FILE = Path(__file__).parents[2] / "dags_examples" / "extract_file.py"
DAY = dt.datetime(2026, 1, 15, tzinfo=dt.timezone.utc)


def test_extract_files(
    seeded: str, airflow_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAMPAIGN_EXTRACT_DIR", str(tmp_path))
    dag_run = demo.load_dag(DAG_FILE, "extract_file").test(logical_date=DAY)
    run = Run(dag_run)
    assert str(dag_run.state).endswith("success"), run.task_states()
    day_dir = tmp_path / "2026-01-15"

    with psycopg.connect(seeded, autocommit=True) as conn:
        vip = conn.execute(
            f"SELECT id, email, first_name, last_name, loyalty_points, last_purchase_at FROM campaign.profiles"
            f" WHERE id IN ({AUDIENCE}) ORDER BY id",
            ("vip",),
        ).fetchall()
        birthdays = conn.execute(
            "SELECT email, first_name, date_part('year', age(%s::date, birth_date))::int FROM campaign.profiles"
            " WHERE to_char(birth_date, 'MM-DD') = '01-15' AND email IS NOT NULL AND NOT email_denylisted"
            " ORDER BY email, id",
            (DAY.date(),),
        ).fetchall()
    assert vip

    # the CRM file: JSON Lines, gzipped, the run's date and time in the name
    crm = run.xcom("vip_for_crm")
    assert crm["path"] == str(day_dir / "vip_20260115_000000.jsonl.gz")
    records = [json.loads(line) for line in gzip.decompress(Path(crm["path"]).read_bytes()).splitlines()]
    assert crm["rows"] == len(records) == len(vip)
    assert [(r["id"], r["email"], r["loyalty_points"]) for r in records] == [(v[0], v[1], v[4]) for v in vip]

    # the tills file: latin-1, pipes, CRLF, no header
    tills = run.xcom("vip_for_tills")
    assert tills["path"] == str(day_dir / "VIP.TXT")
    raw = Path(tills["path"]).read_bytes()
    assert raw.count(b"\r\n") == len(vip) and b"\n" not in raw.replace(b"\r\n", b"")
    lines = raw.decode("latin-1").split("\r\n")[:-1]
    expected = [
        f"{pid}|{(last + ', ' + first).upper()}|{points}|{bought.strftime('%d.%m.%Y') if bought else ''}"
        for pid, _, first, last, points, bought in vip
    ]
    assert lines == expected

    # the partner file: only when someone has a birthday that day
    partner = run.xcom("birthday_file")
    if birthdays:
        assert partner["path"] == str(day_dir / "birthdays_20260115.csv")
        text = Path(partner["path"]).read_text(encoding="utf-8").splitlines()
        assert text[0] == "email,first_name,age"
        assert text[1:] == [f"{e},{f},{a}" for e, f, a in birthdays]
    else:
        assert partner == {"path": "", "rows": 0, "bytes": 0}
    assert sorted(os.listdir(day_dir)) == sorted(
        ["vip_20260115_000000.jsonl.gz", "VIP.TXT"] + (["birthdays_20260115.csv"] if birthdays else [])
    )
