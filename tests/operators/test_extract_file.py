"""ExtractFileOperator and write_query: real Postgres, real files (local and moto S3), parsed back."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pyarrow.parquet as pq
import pysequoia
import pytest
from airflow.sdk.exceptions import AirflowSkipException
from psycopg import sql

from airflow_campaign import extract
from airflow_campaign.errors import CampaignError
from airflow_campaign.extract import stamped, write_query
from airflow_campaign.operators.extract_file import ExtractFileOperator
from airflow_campaign.operators.targeting import QueryOperator

WHEN = dt.datetime(2026, 1, 15, 6, 30, 5, tzinfo=dt.timezone.utc)
STAMP = "_20260115_063005"
COLUMNS = ["email", "first_name", "last_name", "birth_date", "loyalty_points", "last_purchase_at"]
FR = "country = 'FR'"

# rows with the awkward values a file format has to carry
AWKWARD = (
    "SELECT * FROM (VALUES"
    " (1, 'plain', 'Müller', 12.5::numeric, DATE '2026-01-31', TIMESTAMPTZ '2026-01-31 08:09:10+00'),"
    " (2, 'a,b;c|d', 'quote \"here\"', NULL, NULL, NULL),"
    " (3, E'two\\nlines', E'tab\\there', -3.25, DATE '1999-12-01', TIMESTAMPTZ '1999-12-01 23:00:00+00'),"
    " (4, E'back\\\\slash', '', 0, DATE '2000-02-29', TIMESTAMPTZ '2000-02-29 00:00:00+00')"
    ") AS t(id, label, name, amount, day, at)"
)


@pytest.fixture
def ctx(context: Any, seeded: str) -> Any:
    """An execution context with a logical date (the timestamp in file names), on the seeded database."""

    def make(task_id: str = "extract", **kwargs: Any) -> dict[str, Any]:
        made = context(task_id, **kwargs)
        made["logical_date"] = WHEN
        return made

    return make


@pytest.fixture
def french(db: psycopg.Connection, ctx: Any) -> dict[str, Any]:
    """A table population: French profiles with a few columns."""
    return QueryOperator(task_id="french", where=FR, columns=COLUMNS).execute(ctx("french"))


def expected_text(db: psycopg.Connection, columns: list[str], where: str = FR) -> list[list[str]]:
    """The profiles as PostgreSQL writes them in text (NULL as ''), ordered by id."""
    query = sql.SQL("SELECT {} FROM campaign.profiles p WHERE {} ORDER BY p.id").format(
        sql.SQL(", ").join(sql.SQL("p.{}::text").format(sql.Identifier(c)) for c in columns), sql.SQL(where)
    )
    return [["" if v is None else v for v in row] for row in db.execute(query)]


def run(ctx: Any, task_id: str = "extract", run_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
    return ExtractFileOperator(task_id=task_id, **kwargs).execute(ctx(task_id, run_id=run_id))


def read_csv(path: str | Path, **fmt: Any) -> list[list[str]]:
    raw = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.decompress(raw)
    return list(csv.reader(io.StringIO(raw.decode(fmt.pop("encoding", "utf-8")), newline=""), **fmt))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# ---- sources and the default CSV ------------------------------------------------------------


def test_population_to_csv_with_header_and_timestamp(
    db: psycopg.Connection, ctx: Any, french: dict, tmp_path: Path
) -> None:
    out = run(ctx, population=french, path=str(tmp_path / "fr.csv"), sort=["id"])
    assert out["path"] == str(tmp_path / f"fr{STAMP}.csv")
    lines = read_csv(out["path"])
    assert lines[0] == ["id", *COLUMNS]
    assert lines[1:] == expected_text(db, ["id", *COLUMNS])
    assert out["rows"] == french["count"] == len(lines) - 1 > 0
    assert out["bytes"] == os.path.getsize(out["path"])
    assert sorted(os.listdir(tmp_path)) == [f"fr{STAMP}.csv"]


def test_sql_source_without_timestamp(db: psycopg.Connection, ctx: Any, tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    out = run(
        ctx,
        sql="SELECT id, loyalty_points FROM campaign.profiles WHERE loyalty_points > 9000"
        " AND email LIKE '%@%' ORDER BY id;",
        path=str(path),
        timestamp_in_name=False,
    )
    assert out["path"] == str(path)
    expected = expected_text(db, ["id", "loyalty_points"], "loyalty_points > 9000 AND email LIKE '%%@%%'")
    assert read_csv(path)[1:] == expected


@pytest.mark.parametrize("kind", ["list", "dataframe"])
def test_inline_populations(ctx: Any, tmp_path: Path, kind: str) -> None:
    rows = [{"id": 3, "note": "vip"}, {"id": 1, "note": None}]
    value = rows if kind == "list" else pd.DataFrame(rows)
    out = run(ctx, population=value, path=str(tmp_path / "inline.csv"), sort="id", timestamp_in_name=False)
    assert read_csv(out["path"]) == [["id", "note"], ["1", ""], ["3", "vip"]]


def test_path_is_templated(db: psycopg.Connection, ctx: Any, tmp_path: Path) -> None:
    op = ExtractFileOperator(
        task_id="extract",
        sql="SELECT 1 AS one",
        path=str(tmp_path / "{{ params.name }}_{{ ds_nodash }}.csv"),
        timestamp_in_name=False,
        params={"name": "daily"},
    )
    context = ctx()
    context.update(ds_nodash="20260115", params={"name": "daily"})
    op.render_template_fields(context)
    out = op.execute(context)
    assert out["path"] == str(tmp_path / "daily_20260115.csv")
    assert read_csv(out["path"]) == [["one"], ["1"]]


def test_timestamp_goes_before_the_extensions() -> None:
    assert stamped("/out/audience.csv.gz", WHEN) == f"/out/audience{STAMP}.csv.gz"
    assert stamped("s3://b/dir/x.csv.gz.gpg", WHEN) == f"s3://b/dir/x{STAMP}.csv.gz.gpg"
    assert stamped("relative/export", WHEN) == f"relative/export{STAMP}"
    assert stamped("/data.2026.parquet", WHEN) == f"/data.2026{STAMP}.parquet"


# ---- formats ---------------------------------------------------------------------------------


def test_csv_quoting_all_custom_quote_and_delimiter(ctx: Any, tmp_path: Path) -> None:
    out = run(
        ctx,
        sql=AWKWARD,
        path=str(tmp_path / "q.csv"),
        delimiter=";",
        quote="'",
        quoting="all",
        timestamp_in_name=False,
        sort="id",
    )
    raw = Path(out["path"]).read_text(encoding="utf-8")
    assert raw.splitlines()[0] == "'id';'label';'name';'amount';'day';'at'"
    assert raw.splitlines()[1] == "'1';'plain';'Müller';'12.5';'2026-01-31';'2026-01-31 08:09:10+00'"
    rows = read_csv(out["path"], delimiter=";", quotechar="'")
    assert rows[2] == ["2", "a,b;c|d", 'quote "here"', "", "", ""]
    assert rows[3][1] == "two\nlines" and rows[4][1] == "back\\slash"
    assert out["rows"] == 4


def test_csv_minimal_quoting_round_trips(ctx: Any, tmp_path: Path) -> None:
    out = run(ctx, sql=AWKWARD, path=str(tmp_path / "m.csv"), timestamp_in_name=False, sort="id")
    rows = read_csv(out["path"])
    assert [r[1] for r in rows[1:]] == ["plain", "a,b;c|d", "two\nlines", "back\\slash"]
    assert rows[2][2] == 'quote "here"'
    raw = Path(out["path"]).read_text(encoding="utf-8")
    assert raw.splitlines()[1].startswith("1,plain,Müller,")
    assert '\n4,back\\slash,"",0,' in raw  # an empty string is quoted, a NULL is not
    assert '\n2,"a,b;c|d","quote ""here""",,,\n' in raw


def test_crlf_line_endings_keep_line_breaks_inside_values(ctx: Any, tmp_path: Path) -> None:
    out = run(
        ctx, sql=AWKWARD, path=str(tmp_path / "w.csv"), line_ending="crlf", timestamp_in_name=False, sort="id"
    )
    raw = Path(out["path"]).read_bytes()
    assert raw.count(b"\r\n") == 5  # header + 4 rows
    assert b'"two\nlines"' in raw  # the value's own line break is data, left alone
    assert read_csv(out["path"])[3][1] == "two\nlines"


def test_text_format_with_a_delimiter(ctx: Any, tmp_path: Path) -> None:
    out = run(
        ctx,
        sql=AWKWARD,
        path=str(tmp_path / "t.txt"),
        format="text",
        delimiter="|",
        line_ending="crlf",
        timestamp_in_name=False,
        sort="id",
    )
    lines = Path(out["path"]).read_bytes().decode("utf-8").split("\r\n")
    assert lines[0] == "id|label|name|amount|day|at"
    assert lines[1] == "1|plain|Müller|12.5|2026-01-31|2026-01-31 08:09:10+00"
    assert lines[2] == '2|a,b;c\\|d|quote "here"|||'
    assert lines[3] == "3|two\\nlines|tab\\there|-3.25|1999-12-01|1999-12-01 23:00:00+00"
    assert lines[4] == "4|back\\\\slash||0|2000-02-29|2000-02-29 00:00:00+00"
    assert lines[5:] == [""]


def test_text_format_defaults_to_tabs_without_header(ctx: Any, tmp_path: Path) -> None:
    out = run(
        ctx,
        sql="SELECT 1 AS a, 'x' AS b",
        path=str(tmp_path / "t.tsv"),
        format="text",
        header=False,
        timestamp_in_name=False,
    )
    assert Path(out["path"]).read_text() == "1\tx\n"


def test_jsonl(db: psycopg.Connection, ctx: Any, french: dict, tmp_path: Path) -> None:
    out = run(ctx, population=french, path=str(tmp_path / "fr.jsonl.gz"), format="jsonl", sort="id")
    assert out["path"].endswith(f"fr{STAMP}.jsonl.gz")
    records = [json.loads(line) for line in gzip.decompress(Path(out["path"]).read_bytes()).splitlines()]
    assert len(records) == out["rows"] == french["count"]
    expected = db.execute(
        "SELECT id, email, birth_date, loyalty_points, last_purchase_at FROM campaign.profiles"
        f" WHERE {FR} ORDER BY id"
    ).fetchall()
    assert list(records[0]) == ["id", *COLUMNS]
    for record, (pid, email, birth, points, bought) in zip(records, expected, strict=True):
        assert (record["id"], record["email"], record["loyalty_points"]) == (pid, email, points)
        assert record["birth_date"] == (birth.isoformat() if birth else None)
        assert (dt.datetime.fromisoformat(record["last_purchase_at"]) if bought else None) == bought


def test_jsonl_awkward_values(ctx: Any, tmp_path: Path) -> None:
    out = run(
        ctx, sql=AWKWARD, path=str(tmp_path / "a.jsonl"), format="jsonl", timestamp_in_name=False, sort="id"
    )
    records = [json.loads(line) for line in Path(out["path"]).read_text(encoding="utf-8").splitlines()]
    assert records[1] == {
        "id": 2,
        "label": "a,b;c|d",
        "name": 'quote "here"',
        "amount": None,
        "day": None,
        "at": None,
    }
    assert records[2]["label"] == "two\nlines" and records[2]["amount"] == -3.25
    assert records[3]["label"] == "back\\slash"


def test_parquet_keeps_types(db: psycopg.Connection, ctx: Any, french: dict, tmp_path: Path) -> None:
    out = run(ctx, population=french, path=str(tmp_path / "fr.parquet"), format="parquet", sort="id")
    table = pq.read_table(out["path"])
    assert table.num_rows == out["rows"] == french["count"]
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {
        "id": "int64",
        "email": "string",
        "first_name": "string",
        "last_name": "string",
        "birth_date": "date32[day]",
        "loyalty_points": "int32",
        "last_purchase_at": "timestamp[us, tz=UTC]",
    }
    expected = db.execute(
        f"SELECT id, email, birth_date, loyalty_points, last_purchase_at FROM campaign.profiles WHERE {FR} ORDER BY id"
    ).fetchall()
    got = table.select(["id", "email", "birth_date", "loyalty_points", "last_purchase_at"]).to_pylist()
    assert [tuple(r.values()) for r in got] == expected


def test_parquet_numeric_and_other_types(ctx: Any, tmp_path: Path) -> None:
    out = run(
        ctx,
        sql="SELECT 1.5::numeric(10,2) AS price, 2.25::numeric AS ratio, '{\"a\": 1}'::jsonb AS doc,"
        " true AS flag, interval '1 day' AS span",
        path=str(tmp_path / "t.parquet"),
        format="parquet",
        timestamp_in_name=False,
    )
    table = pq.read_table(out["path"])
    assert [str(f.type) for f in table.schema] == ["decimal128(10, 2)", "string", "string", "bool", "string"]
    assert table.to_pylist() == [
        {"price": pytest.approx(1.5), "ratio": "2.25", "doc": '{"a": 1}', "flag": True, "span": "1 day"}
    ]


# ---- columns, formats, sort ----------------------------------------------------------------------


def test_computed_columns_formats_and_sort(
    db: psycopg.Connection, ctx: Any, french: dict, tmp_path: Path
) -> None:
    out = run(
        ctx,
        population=french,
        path=str(tmp_path / "c.csv"),
        columns=[
            "email",
            {"name": "Full name", "expr": "first_name || ' ' || last_name"},
            {"name": "born", "expr": "birth_date", "format": "DD/MM/YYYY"},
            {"name": "points", "expr": "loyalty_points / 100.0", "format": "FM99990.00"},
        ],
        sort=["points DESC", "id"],
        timestamp_in_name=False,
    )
    rows = read_csv(out["path"])
    assert rows[0] == ["email", "Full name", "born", "points"]
    expected = db.execute(
        "SELECT coalesce(email, ''), coalesce(first_name || ' ' || last_name, ''),"
        " coalesce(to_char(birth_date, 'DD/MM/YYYY'), ''), to_char(loyalty_points / 100.0, 'FM99990.00')"
        f" FROM campaign.profiles WHERE {FR} ORDER BY loyalty_points DESC, id"
    ).fetchall()
    assert [tuple(r) for r in rows[1:]] == expected


def test_date_timestamp_and_number_formats(ctx: Any, tmp_path: Path) -> None:
    out = run(
        ctx,
        sql=AWKWARD,
        path=str(tmp_path / "f.csv"),
        columns=["id", "amount", "day", "at"],
        date_format="DD/MM/YYYY",
        timestamp_format='YYYY-MM-DD"T"HH24:MI:SS',
        number_format="FM9990.00",
        decimal_separator=",",
        delimiter=";",
        sort="id",
        timestamp_in_name=False,
    )
    assert read_csv(out["path"], delimiter=";") == [
        ["id", "amount", "day", "at"],
        ["1", "12,50", "31/01/2026", "2026-01-31T08:09:10"],
        ["2", "", "", ""],
        ["3", "-3,25", "01/12/1999", "1999-12-01T23:00:00"],
        ["4", "0,00", "29/02/2000", "2000-02-29T00:00:00"],
    ]


def test_sort_by_a_source_column_not_in_the_file(
    db: psycopg.Connection, ctx: Any, french: dict, tmp_path: Path
) -> None:
    out = run(
        ctx,
        population=french,
        path=str(tmp_path / "s.csv"),
        columns=["email"],
        sort=["loyalty_points DESC NULLS LAST", "id"],
        timestamp_in_name=False,
    )
    expected = db.execute(
        f"SELECT coalesce(email, '') FROM campaign.profiles WHERE {FR} ORDER BY loyalty_points DESC, id"
    ).fetchall()
    # a NULL email is an empty line, which the csv module reads as no field at all
    assert [tuple(r) or ("",) for r in read_csv(out["path"])[1:]] == expected


# ---- encodings --------------------------------------------------------------------------------------


def test_latin1(ctx: Any, tmp_path: Path) -> None:
    out = run(
        ctx, sql=AWKWARD, path=str(tmp_path / "l.csv"), encoding="latin-1", timestamp_in_name=False, sort="id"
    )
    raw = Path(out["path"]).read_bytes()
    assert b"M\xfcller" in raw
    assert read_csv(out["path"], encoding="latin-1")[1][2] == "Müller"


@pytest.mark.parametrize("fmt", ["csv", "text", "jsonl"])
def test_latin1_error_names_row_and_column(ctx: Any, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / "names.csv"
    target.write_text("previous file\n")
    query = "SELECT * FROM (VALUES (1, 'Anna', 'Müller'), (2, 'Bảo', 'Nguyễn')) t(id, first_name, last_name) ORDER BY id"
    with pytest.raises(CampaignError, match=r"encoding='latin-1': row 2, column 'first_name' holds 'ả'"):
        run(ctx, sql=query, path=str(target), format=fmt, encoding="latin-1", timestamp_in_name=False)
    assert target.read_text() == "previous file\n"
    assert leftovers(tmp_path) == []


def test_latin1_error_in_a_column_name(ctx: Any, tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match=r"column name 'prénom→' has '→'"):
        run(ctx, sql='SELECT 1 AS "prénom→"', path=str(tmp_path / "x.csv"), encoding="latin-1")
    assert list(tmp_path.iterdir()) == []


# ---- compression and encryption ------------------------------------------------------------------


def test_gzip_by_option_or_by_name(db: psycopg.Connection, ctx: Any, french: dict, tmp_path: Path) -> None:
    by_name = run(ctx, population=french, path=str(tmp_path / "a.csv.gz"), sort="id", timestamp_in_name=False)
    by_option = run(
        ctx,
        population=french,
        path=str(tmp_path / "b.csv.gz"),
        compression="gzip",
        compression_level=9,
        sort="id",
    )
    plain = run(ctx, population=french, path=str(tmp_path / "c.csv"), sort="id", timestamp_in_name=False)
    text = Path(plain["path"]).read_bytes()
    assert gzip.decompress(Path(by_name["path"]).read_bytes()) == text
    assert gzip.decompress(Path(by_option["path"]).read_bytes()) == text
    assert by_option["bytes"] <= by_name["bytes"] < plain["bytes"]


@pytest.fixture
def partner_key(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A recipient's key pair: the public half in a Variable and in a connection."""
    tsk = pysequoia.Tsk.generate("Partner <partner@example.com>")
    public = str(tsk.extract_certificate())
    monkeypatch.setenv("AIRFLOW_VAR_PARTNER_PUBLIC_KEY", public)
    monkeypatch.setenv(
        "AIRFLOW_CONN_PARTNER_PGP", json.dumps({"conn_type": "generic", "extra": {"public_key": public}})
    )
    monkeypatch.setenv("AIRFLOW_VAR_PARTNER_SECRET_KEY", str(tsk))
    monkeypatch.setenv("AIRFLOW_VAR_NOT_A_KEY", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnonsense\n")
    expired = pysequoia.Tsk.generate("Old <old@example.com>", validity_seconds=1).extract_certificate()
    while expired.expiration > dt.datetime.now(dt.timezone.utc):
        time.sleep(0.2)
    monkeypatch.setenv("AIRFLOW_VAR_EXPIRED_KEY", str(expired))
    monkeypatch.setenv("AIRFLOW_CONN_EMPTY_PGP", json.dumps({"conn_type": "generic"}))
    return tsk


def decrypt(tsk: Any, path: str, tmp_path: Path) -> bytes:
    plain = tmp_path / "decrypted.bin"
    pysequoia.decrypt_file(input=path, output=str(plain), decryptor=tsk.decryptor())
    data = plain.read_bytes()
    plain.unlink()
    return data


@pytest.mark.parametrize("reference", ["variable:partner_public_key", "connection:partner_pgp"])
def test_gpg_encryption_decrypts_to_the_plain_file(
    ctx: Any, french: dict, tmp_path: Path, partner_key: Any, reference: str
) -> None:
    plain = run(ctx, population=french, path=str(tmp_path / "p.csv.gz"), sort="id", timestamp_in_name=False)
    sealed = run(
        ctx,
        population=french,
        path=str(tmp_path / "p.csv.gz.gpg"),
        sort="id",
        timestamp_in_name=False,
        encrypt_with=reference,
    )
    data = Path(sealed["path"]).read_bytes()
    assert not data.startswith(b"\x1f\x8b")  # not the gzip stream itself
    assert sealed["bytes"] == len(data) and sealed["rows"] == plain["rows"]
    assert decrypt(partner_key, sealed["path"], tmp_path) == Path(plain["path"]).read_bytes()
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(shutil.which("gpg") is None, reason="no gpg binary")
def test_gnupg_key_and_binary(ctx: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key made by GnuPG, the file decrypted by GnuPG: what a partner on gpg does."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run(
        [*gpg, "--quick-gen-key", "Partner <partner@example.com>", "future-default", "default", "never"],
        check=True,
        capture_output=True,
    )
    public = subprocess.run(
        [*gpg, "--armor", "--export", "partner@example.com"], check=True, capture_output=True
    )
    monkeypatch.setenv("AIRFLOW_VAR_GNUPG_PARTNER", public.stdout.decode())
    out = run(
        ctx,
        sql=AWKWARD,
        path=str(tmp_path / "out" / "a.csv.gz.gpg"),
        sort="id",
        timestamp_in_name=False,
        encrypt_with="variable:gnupg_partner",
    )
    done = subprocess.run([*gpg, "--decrypt", out["path"]], check=True, capture_output=True)
    rows = list(csv.reader(io.StringIO(gzip.decompress(done.stdout).decode(), newline="")))
    assert rows[1] == ["1", "plain", "Müller", "12.5", "2026-01-31", "2026-01-31 08:09:10+00"]
    assert len(rows) == 5


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("variable:missing_key", "no Airflow Variable 'missing_key'"),
        ("connection:missing_pgp", "no Airflow connection 'missing_pgp'"),
        ("variable:not_a_key", "not an OpenPGP public key"),
        ("variable:partner_secret_key", "holds a secret key"),
        ("variable:expired_key", r"key [0-9a-f]+ expired on \d{4}-\d\d-\d\d; ask the recipient"),
        ("connection:empty_pgp", "has no extra 'public_key' and no password"),
    ],
)
def test_bad_gpg_keys(ctx: Any, tmp_path: Path, partner_key: Any, reference: str, message: str) -> None:
    with pytest.raises(CampaignError, match=message):
        run(ctx, sql="SELECT 1 AS a", path=str(tmp_path / "out" / "a.csv.gpg"), encrypt_with=reference)
    assert list(tmp_path.iterdir()) == []  # not even the directory was made


# ---- destinations ------------------------------------------------------------------------------------


def test_s3_destination(db: psycopg.Connection, ctx: Any, french: dict, s3: Any) -> None:
    s3.create_bucket(Bucket="extracts")
    out = run(ctx, population=french, path="s3://extracts/daily/fr.csv.gz", sort="id")
    key = f"daily/fr{STAMP}.csv.gz"
    assert out["path"] == f"s3://extracts/{key}"
    body = s3.get_object(Bucket="extracts", Key=key)["Body"].read()
    assert out["bytes"] == len(body)
    rows = list(csv.reader(io.StringIO(gzip.decompress(body).decode(), newline="")))
    assert rows[1:] == expected_text(db, ["id", *COLUMNS])
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="extracts")["Contents"]] == [key]


def test_s3_multipart_upload(db: psycopg.Connection, s3: Any) -> None:
    s3.create_bucket(Bucket="big-extracts")
    query = sql.SQL(
        "SELECT g AS n, md5(g::text) || md5((g * 7)::text) AS h FROM generate_series(1, 180000) g"
    )
    with db.transaction():
        result = write_query(db, query, "s3://big-extracts/big.csv", multipart_chunk_size=5 * 1024 * 1024)
    head = s3.head_object(Bucket="big-extracts", Key="big.csv")
    assert result.bytes == head["ContentLength"] > 10 * 1024 * 1024
    assert head["ETag"].strip('"').endswith("-3")  # assembled from three parts
    body = s3.get_object(Bucket="big-extracts", Key="big.csv")["Body"].read().decode()
    lines = body.splitlines()
    assert len(lines) == 180001 == result.rows + 1
    assert lines[-1].startswith("180000,")


def test_missing_bucket(ctx: Any, s3: Any) -> None:
    with pytest.raises(CampaignError, match=r"the bucket 'no-such-bucket' does not exist"):
        run(ctx, sql="SELECT 1 AS a", path="s3://no-such-bucket/x.csv")


def test_unwritable_local_path(ctx: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(CampaignError, match=r"cannot write in .*a-file"):
        run(ctx, sql="SELECT 1 AS a", path=str(blocker / "sub" / "x.csv"))
    with pytest.raises(CampaignError, match="is a directory"):
        run(ctx, sql="SELECT 1 AS a", path=str(tmp_path), timestamp_in_name=False)
    assert blocker.read_text() == "not a directory"


def test_missing_directories_are_created(ctx: Any, tmp_path: Path) -> None:
    out = run(ctx, sql="SELECT 1 AS a", path=str(tmp_path / "2026" / "01" / "x.csv"), timestamp_in_name=False)
    assert read_csv(out["path"]) == [["a"], ["1"]]


# ---- empty results ---------------------------------------------------------------------------------


EMPTY = "SELECT id, email FROM campaign.profiles WHERE false"


def test_skip_if_empty_writes_no_file(ctx: Any, tmp_path: Path) -> None:
    empty = QueryOperator(task_id="nobody", where="false").execute(ctx("nobody"))
    assert run(ctx, population=empty, path=str(tmp_path / "x.csv")) == {"path": "", "rows": 0, "bytes": 0}
    assert list(tmp_path.iterdir()) == []


def test_empty_file_with_header_when_asked(ctx: Any, tmp_path: Path) -> None:
    out = run(ctx, sql=EMPTY, path=str(tmp_path / "x.csv"), skip_if_empty=False, timestamp_in_name=False)
    assert out["rows"] == 0 and Path(out["path"]).read_text() == "id,email\n"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_empty_jsonl_and_parquet_when_asked(ctx: Any, tmp_path: Path, fmt: str) -> None:
    out = run(ctx, sql=EMPTY, path=str(tmp_path / f"x.{fmt}"), format=fmt, skip_if_empty=False)
    assert out["rows"] == 0 and out["path"].endswith(f"x{STAMP}.{fmt}")
    if fmt == "jsonl":
        assert Path(out["path"]).read_bytes() == b""
    else:
        table = pq.read_table(out["path"])
        assert table.num_rows == 0 and table.schema.names == ["id", "email"]


@pytest.mark.parametrize(("on_empty", "error"), [("skip", AirflowSkipException), ("fail", CampaignError)])
def test_on_empty(ctx: Any, tmp_path: Path, on_empty: str, error: type) -> None:
    with pytest.raises(error, match="the extract is empty"):
        run(ctx, sql=EMPTY, path=str(tmp_path / "x.csv"), skip_if_empty=False, on_empty=on_empty)
    assert list(tmp_path.iterdir()) == []


# ---- retries and failures ------------------------------------------------------------------------------


def test_retry_gives_the_same_file(ctx: Any, french: dict, tmp_path: Path) -> None:
    kwargs = {"population": french, "path": str(tmp_path / "fr.csv.gz"), "sort": ["id"]}
    first = run(ctx, run_id="manual__1", **kwargs)
    data = Path(first["path"]).read_bytes()
    again = run(ctx, run_id="manual__1", **kwargs)
    assert again == first
    assert Path(again["path"]).read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == [f"fr{STAMP}.csv.gz"]


def test_failure_mid_extract_leaves_the_destination_as_it_was(ctx: Any, tmp_path: Path) -> None:
    target = tmp_path / "fail.csv.gz"
    target.write_bytes(b"yesterday's file")
    failing = "SELECT g, 1 / (g - 150000) AS boom FROM generate_series(1, 200000) g"
    with pytest.raises(CampaignError, match=r"sql: the database rejected the SQL .*division by zero"):
        run(ctx, sql=failing, path=str(target), timestamp_in_name=False)
    assert target.read_bytes() == b"yesterday's file"
    assert leftovers(tmp_path) == []


# ---- errors before any write ----------------------------------------------------------------------------


def test_unknown_columns_and_sort(ctx: Any, french: dict, tmp_path: Path) -> None:
    path = str(tmp_path / "x.csv")
    with pytest.raises(
        CampaignError, match=r"columns: unknown column\(s\) \['phone'\]; available: \['id', 'email'"
    ):
        run(ctx, population=french, path=path, columns=["email", "phone"])
    with pytest.raises(CampaignError, match=r"sort: unknown column\(s\) \['country'\]"):
        run(ctx, population=french, path=path, sort=["country"])
    assert list(tmp_path.iterdir()) == []


def test_sql_error_in_an_expression(ctx: Any, french: dict, tmp_path: Path) -> None:
    with pytest.raises(
        CampaignError, match=r"columns\[1\] \('age'\): the database rejected the SQL .*birthday"
    ):
        run(
            ctx,
            population=french,
            path=str(tmp_path / "x.csv"),
            columns=["email", {"name": "age", "expr": "date_part('year', age(birthday))"}],
        )
    with pytest.raises(CampaignError, match=r"sql: the database rejected the SQL"):
        run(ctx, sql="SELECT nope FROM campaign.profiles", path=str(tmp_path / "x.csv"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "xlsx"}, r"format='xlsx' is not valid; use one of \['csv', 'text', 'jsonl', 'parquet'\]"),
        ({"compression": "zip"}, r"compression='zip' is not valid"),
        ({"encoding": "utf-16"}, r"encoding='utf-16' is not valid"),
        ({"quoting": "none"}, r"quoting='none' is not valid"),
        ({"line_ending": "\r\n"}, r"line_ending='\\r\\n' is not valid; use one of \['lf', 'crlf'\]"),
        ({"format": "parquet", "compression": "gzip"}, "Parquet file compresses its own pages"),
        ({"format": "parquet", "encoding": "latin-1"}, "Parquet text is always UTF-8"),
        ({"format": "jsonl", "delimiter": ";"}, "only format='csv' or 'text' has a delimiter"),
        ({"delimiter": "||"}, "give one ASCII character"),
        ({"quote": ","}, "is also the delimiter"),
        ({"compression_level": 0}, "from 1 .* to 9"),
        ({"columns": ["email", {"expr": "1"}]}, r"columns\[1\]=.*give a column name"),
        ({"columns": [{"name": "a", "exp": "1"}]}, r"unknown key\(s\) \['exp'\]"),
        ({"columns": ["email", "email"]}, r"duplicate columns \['email'\]"),
        ({"encrypt_with": "partner_key"}, "write 'variable:<name>'"),
        ({"on_empty": "ignore"}, r"on_empty='ignore' is not valid"),
    ],
)
def test_bad_options_fail_when_the_dag_is_parsed(kwargs: dict, message: str) -> None:
    with pytest.raises(CampaignError, match=message):
        ExtractFileOperator(task_id="x", sql="SELECT 1", path="/tmp/x.csv", **kwargs)


def test_exactly_one_source() -> None:
    with pytest.raises(CampaignError, match="give exactly one of them"):
        ExtractFileOperator(task_id="x", path="/tmp/x.csv")
    with pytest.raises(CampaignError, match="give exactly one of them"):
        ExtractFileOperator(task_id="x", path="/tmp/x.csv", sql="SELECT 1", population=[{"id": 1}])


def test_duplicate_names_from_sql(ctx: Any, tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match=r"duplicate column names \['id'\]"):
        run(ctx, sql="SELECT 1 AS id, 2 AS id", path=str(tmp_path / "x.csv"))


def test_missing_staging_table(ctx: Any, tmp_path: Path) -> None:
    gone = {"kind": "table", "table": "campaign_staging.gone_0123456789ab", "key": "id", "columns": ["id"]}
    with pytest.raises(CampaignError, match="no longer exists"):
        run(ctx, population=gone, path=str(tmp_path / "x.csv"))


# ---- progress ----------------------------------------------------------------------------------------------


def test_progress_is_logged(db: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract, "PROGRESS_SECONDS", 0.0)
    logger = logging.getLogger("test.extract.progress")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    query = sql.SQL("SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
    with db.transaction():
        result = write_query(db, query, str(tmp_path / "p.csv"), logger=logger)
    assert result.rows == 100000
    assert any("rows so far" in r and "rows/s" in r for r in records)
    assert records[-1].startswith(f"extract {tmp_path / 'p.csv'}: 100,000 rows, {result.bytes:,} bytes")


def test_parquet_value_that_does_not_fit(ctx: Any, tmp_path: Path) -> None:
    target = tmp_path / "n.parquet"
    query = "SELECT g AS n, CASE WHEN g = 90000 THEN 'NaN' ELSE g / 1000.0 END::numeric(12,3) AS amount FROM generate_series(1, 100000) g"
    with pytest.raises(CampaignError, match=r"format='parquet': a value does not fit .*Cast that column"):
        run(ctx, sql=query, path=str(target), format="parquet", timestamp_in_name=False)
    assert list(tmp_path.iterdir()) == []
