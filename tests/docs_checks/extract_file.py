"""Check of docs/examples/extract_file.py: the files it writes hold the population's rows."""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import tempfile
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from tests.docs_support import FR_CONTACTABLE, population, run_example


def check_extract_file(db: psycopg.Connection) -> None:
    folder = tempfile.mkdtemp(prefix="docs-extract-")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAMPAIGN_EXTRACT_DIR", folder)
        run = run_example("extract_file")
    readers = population(db, run, "readers")

    partner = run.xcom("partner_file")
    assert re.fullmatch(re.escape(folder) + r"/newsletter_fr_\d{8}\.csv\.gz", partner["path"]), partner
    assert partner["rows"] == readers["count"] > 0
    assert partner["bytes"] == os.path.getsize(partner["path"])
    text = gzip.decompress(Path(partner["path"]).read_bytes()).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=";"))
    assert rows[0] == ["email", "name", "born", "tier"]
    expected = db.execute(
        "SELECT email, coalesce(initcap(first_name || ' ' || last_name), ''),"
        " coalesce(to_char(birth_date, 'DD/MM/YYYY'), ''),"
        " CASE WHEN loyalty_points >= 8000 THEN 'gold' ELSE 'standard' END"
        f" FROM campaign.profiles WHERE {FR_CONTACTABLE} ORDER BY email, id"
    ).fetchall()
    assert [tuple(r) for r in rows[1:]] == expected

    analysis = run.xcom("analysis_file")
    assert re.fullmatch(re.escape(folder) + r"/newsletter_fr_\d{8}_\d{6}\.parquet", analysis["path"]), (
        analysis
    )
    table = pq.read_table(analysis["path"])
    assert table.num_rows == analysis["rows"] == readers["count"]
    assert str(table.schema.field("birth_date").type) == "date32[day]"
    assert sorted(table.column("email").to_pylist()) == sorted(r[0] for r in expected)
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    os.rmdir(folder)
