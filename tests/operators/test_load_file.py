"""LoadFileOperator: files (local or S3; CSV, TSV, JSONL, Parquet; gzip) into populations."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json

import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowSkipException

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.targeting import LoadFileOperator
from tests.conftest import ids, rows, staged


@pytest.fixture(scope="module")
def people(seeded):
    """Three profiles with an email no other profile has, and one email two profiles share."""
    import psycopg

    with psycopg.connect(seeded) as conn:
        unique = conn.execute(
            "SELECT id, email FROM campaign.profiles p WHERE email LIKE '%@%' AND NOT EXISTS"
            " (SELECT 1 FROM campaign.profiles o WHERE o.email = p.email AND o.id <> p.id) ORDER BY id LIMIT 3"
        ).fetchall()
        shared = conn.execute(
            "SELECT email FROM campaign.profiles WHERE email IS NOT NULL GROUP BY email HAVING count(*) > 1"
            " ORDER BY email LIMIT 1"
        ).fetchone()[0]
    return {"unique": unique, "shared": shared}


def column_types(db, population):
    schema, table = population["table"].split(".")
    return dict(
        db.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s"
            " AND table_name = %s",
            (schema, table),
        ).fetchall()
    )


def load(context, task_id, **kwargs):
    ctx = context(task_id)
    out = LoadFileOperator(task_id=task_id, **kwargs).execute(ctx)
    return out, ctx["ti"].xcoms["rejects"]


def test_csv_reconciled_on_email_with_rejects_as_a_second_output(db, context, people, tmp_path):
    (id1, e1), (id2, e2), (id3, e3) = people["unique"]
    path = tmp_path / "points.csv"
    path.write_text(
        f"email,points\n{e1},10\n{e2},20\nnobody@nowhere.example,30\n{people['shared']},40\n{e3},lots\n,50\n"
    )
    out, rejects = load(context, "points", path=str(path), reconcile_on="email", types={"points": "integer"})
    assert (out["key"], out["resource"], out["columns"]) == ("id", "profiles", ["id", "email", "points"])
    assert [(r["id"], r["email"], r["points"]) for r in rows(db, out)] == [(id1, e1, 10), (id2, e2, 20)]
    assert column_types(db, out)["points"] == "integer"
    assert (rejects["key"], rejects["resource"], rejects["count"]) == ("_line", None, 4)
    assert [(r["_line"], r["reject_reason"], r["points"]) for r in rows(db, rejects)] == [
        (3, "unmatched", "30"),
        (4, "ambiguous: matches several rows", "40"),
        (5, "invalid points", "lots"),
        (6, "unmatched", "50"),
    ]


def test_reconcile_on_a_mapping_and_keep_unmatched(db, context, people, tmp_path):
    (id1, e1), (id2, e2), _ = people["unique"]
    path = tmp_path / "mail.csv"
    path.write_text(f"mail,source\n{e1},web\nstranger@nowhere.example,shop\n{e2},web\n")
    out, rejects = load(context, "mail", path=str(path), reconcile_on={"mail": "email"}, unmatched="keep")
    assert out["columns"] == ["id", "mail", "source"]
    got = [(r["id"], r["mail"]) for r in rows(db, out, order_by="mail")]
    assert sorted(got, key=lambda r: r[1]) == sorted(
        [(id1, e1), (id2, e2), (None, "stranger@nowhere.example")], key=lambda r: r[1]
    )
    assert rejects["count"] == 0


def test_reconcile_on_the_key_rejects_values_of_the_wrong_type(db, context, tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("customer,note\n3,a\nabc,b\n4,c\n99999999,d\n")
    out, rejects = load(context, "by_id", path=str(path), reconcile_on={"customer": "id"})
    assert ids(db, out) == [3, 4]
    assert [(r["_line"], r["reject_reason"]) for r in rows(db, rejects)] == [
        (2, "invalid customer"),
        (4, "unmatched"),
    ]


def test_rejects_fail_writes_nothing(db, context, tmp_path):
    path = tmp_path / "strict.csv"
    path.write_text("id,points\n1,5\n2,five\n3,7\n")
    ctx = context("strict")
    with pytest.raises(
        CampaignError,
        match=r"path='.*strict.csv': 1 row\(s\) rejected and rejects='fail' \(first: row 2: invalid points\)",
    ):
        LoadFileOperator(task_id="strict", path=str(path), types={"points": "int"}, rejects="fail").execute(
            ctx
        )
    assert staged(db, ctx) == []
    assert ctx["ti"].xcoms == {}


def test_rejects_skip_keeps_the_accepted_rows_only(db, context, tmp_path):
    path = tmp_path / "lenient.csv"
    path.write_text("id,points\n1,5\n2,five\n3,7\n")
    ctx = context("lenient")
    out = LoadFileOperator(
        task_id="lenient", path=str(path), types={"points": "int"}, rejects="skip"
    ).execute(ctx)
    assert [r["points"] for r in rows(db, out)] == [5, 7]
    assert "rejects" not in ctx["ti"].xcoms
    assert [t for t in staged(db, ctx) if t.startswith("recorded")] == [f"recorded {out['table']}"]


def test_without_reconciliation_the_first_column_is_the_key(db, context, tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("code,label\nB,bee\nA,ay\n")
    out, _ = load(context, "plain", path=str(path))
    assert (out["key"], out["resource"], out["count"]) == ("code", None, 2)
    assert [r["label"] for r in rows(db, out)] == ["ay", "bee"]
    keyed, _ = load(context, "keyed", path=str(path), key="label")
    assert keyed["key"] == "label"


def test_tsv_with_quotes_and_tabs_in_values(db, context, tmp_path):
    path = tmp_path / "people.tsv"
    path.write_text('id\tname\n1\t"Doe, ""J"""\n2\tplain\n')
    out, _ = load(context, "tsv", path=str(path))
    assert [r["name"] for r in rows(db, out)] == ['Doe, "J"', "plain"]


def test_custom_delimiter_and_a_column_subset(db, context, tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("id;email;junk\n1;a@example.com;x\n2;b@example.com;y\n")
    out, _ = load(
        context, "semi", path=str(path), delimiter=";", columns=["id", "email"], types={"id": "bigint"}
    )
    assert out["columns"] == ["id", "email"]
    assert [(r["id"], r["email"]) for r in rows(db, out)] == [(1, "a@example.com"), (2, "b@example.com")]


def test_no_header_needs_columns(db, context, tmp_path):
    path = tmp_path / "bare.csv"
    path.write_text("7,seven\n8,eight\n")
    out, _ = load(
        context, "bare", path=str(path), header=False, columns=["id", "word"], types={"id": "integer"}
    )
    assert [(r["id"], r["word"]) for r in rows(db, out)] == [(7, "seven"), (8, "eight")]
    with pytest.raises(
        CampaignError, match=r"columns: .*bare.csv' has no header \(header=False\), so columns="
    ):
        LoadFileOperator(task_id="bare2", path=str(path), header=False).execute(context("bare2"))


def test_gzipped_latin1_csv(db, context, tmp_path):
    path = tmp_path / "names.csv.gz"
    path.write_bytes(gzip.compress("id,name\n1,Zoë\n2,François\n".encode("latin-1")))
    out, _ = load(context, "latin", path=str(path), encoding="latin-1")
    assert [r["name"] for r in rows(db, out)] == ["Zoë", "François"]


def test_latin1_read_as_utf8_says_which_encoding_to_pass(db, context, tmp_path):
    path = tmp_path / "prénoms.csv"
    path.write_bytes("prénom,id\nZoë,1\n".encode("latin-1"))
    ctx = context("enc")
    with pytest.raises(CampaignError, match=r"not valid utf-8 text.*encoding='latin-1'"):
        LoadFileOperator(task_id="enc", path=str(path)).execute(ctx)
    body = tmp_path / "body.csv"
    body.write_bytes("id,name\n1,Zoë\n".encode("latin-1"))
    with pytest.raises(
        CampaignError, match=r"path='.*body.csv': not valid utf-8 text at line 2 .*encoding='latin-1'"
    ):
        LoadFileOperator(task_id="enc", path=str(body)).execute(ctx)
    assert staged(db, ctx) == []


def test_jsonl_with_types_and_nested_values(db, context, tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [
        {"id": 1, "score": 1.5, "tags": ["a", "b"], "ok": True},
        {"id": 2, "score": None, "tags": [], "ok": False},
        {"id": 3, "score": "high", "ok": True},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    out, rejects = load(
        context,
        "jsonl",
        path=str(path),
        types={"score": "numeric", "tags": "jsonb", "ok": "boolean", "id": "int"},
    )
    got = [(r["id"], r["score"], r["tags"], r["ok"]) for r in rows(db, out)]
    assert [g[0] for g in got] == [1, 2]
    assert got[0][2] == ["a", "b"] and got[0][3] is True and float(got[0][1]) == 1.5
    assert got[1][1] is None and got[1][3] is False
    assert [(r["_line"], r["reject_reason"]) for r in rows(db, rejects)] == [(3, "invalid score")]


def test_jsonl_that_is_not_json_names_the_line(db, context, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2\n')
    ctx = context("badjson")
    with pytest.raises(CampaignError, match=r"path='.*broken.jsonl': line 3 is not JSON"):
        LoadFileOperator(task_id="badjson", path=str(path)).execute(ctx)
    path.write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(CampaignError, match=r"line 2 is not a JSON object"):
        LoadFileOperator(task_id="badjson", path=str(path)).execute(ctx)
    assert staged(db, ctx) == []


def parquet_bytes(frame):
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


FRAME = pd.DataFrame(
    {
        "id": [10, 11, 12],
        "amount": [1.25, 2.5, None],
        "since": pd.to_datetime(["2026-01-01T10:00:00Z", "2026-02-01T00:00:00Z", None]),
        "vip": [True, False, True],
        "name": ["a", "b", None],
    }
)


def test_parquet_keeps_its_column_types(db, context, tmp_path):
    path = tmp_path / "orders.parquet"
    path.write_bytes(parquet_bytes(FRAME))
    out, _ = load(context, "pq", path=str(path))
    types = column_types(db, out)
    assert types == {
        "id": "bigint",
        "amount": "double precision",
        "since": "timestamp with time zone",
        "vip": "boolean",
        "name": "text",
    }
    got = rows(db, out)
    assert [r["id"] for r in got] == [10, 11, 12]
    assert got[0]["since"] == dt.datetime(2026, 1, 1, 10, tzinfo=dt.timezone.utc)
    assert (got[1]["amount"], got[1]["vip"], got[2]["amount"], got[2]["name"]) == (2.5, False, None, None)


def test_parquet_column_subset_and_unknown_columns(db, context, tmp_path):
    path = tmp_path / "subset.parquet"
    path.write_bytes(parquet_bytes(FRAME))
    out, _ = load(context, "pq_subset", path=str(path), columns=["id", "vip"])
    assert out["columns"] == ["id", "vip"]
    ctx = context("pq_bad")
    with pytest.raises(
        CampaignError, match=r"columns=\['id', 'colour'\]: \['colour'\] not in the Parquet file"
    ):
        LoadFileOperator(task_id="pq_bad", path=str(path), columns=["id", "colour"]).execute(ctx)
    assert staged(db, ctx) == []


def test_malformed_csv_is_a_clear_error_and_nothing_is_staged(db, context, tmp_path):
    ctx = context("malformed")
    path = tmp_path / "extra.csv"
    path.write_text("id,email\n1,a@example.com\n2,b@example.com,surprise\n")
    with pytest.raises(
        CampaignError,
        match=r"path='.*extra.csv': malformed csv at line 3 \(extra data after last expected column: \"2,b@example.com,surprise\"\)",
    ):
        LoadFileOperator(task_id="malformed", path=str(path)).execute(ctx)
    path = tmp_path / "quote.csv"
    path.write_text('id,email\n1,"a@example.com\n2,b\n')
    with pytest.raises(
        CampaignError, match=r"path='.*quote.csv': malformed csv .*unterminated CSV quoted field"
    ):
        LoadFileOperator(task_id="malformed", path=str(path)).execute(ctx)
    assert staged(db, ctx) == []


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        (
            "id,p\n1,2\n",
            {"types": {"p": "integr"}},
            r"types=\{'p': 'integr'\}: 'integr' is not a PostgreSQL type",
        ),
        (
            "id,p\n1,2\n",
            {"types": {"p": "int; DROP TABLE x"}},
            r"types=\{'p': 'int; DROP TABLE x'\}: .*not a PostgreSQL type",
        ),
        (
            "id,p\n1,2\n",
            {"types": {"q": "int"}},
            r"types: unknown column\(s\) \['q'\]; available: \['id', 'p'\]",
        ),
        ("id,p\n1,2\n", {"reconcile_on": "email"}, r"reconcile_on='email': unknown column\(s\) \['email'\]"),
        (
            "id,mail\n1,a\n",
            {"reconcile_on": {"mail": "e_mail"}},
            r"reconcile_on=\{'mail': 'e_mail'\}: unknown column\(s\) \['e_mail'\] in resource 'profiles'",
        ),
        (
            "id,mail\n1,a\n",
            {"reconcile_on": "mail", "resource": "nowhere.t"},
            r"resource='nowhere.t': no table",
        ),
        ("id,p\n1,2\n", {"columns": ["id", "z"]}, r"columns=\['id', 'z'\]: \['z'\] not in the header"),
        ("id,p\n1,2\n", {"key": "k"}, r"key: unknown column\(s\) \['k'\]"),
        ("id,id\n1,2\n", {}, r"columns: duplicated or reserved column names \['id'\]"),
    ],
)
def test_bad_options_name_the_option_and_leave_nothing(db, context, tmp_path, content, kwargs, message):
    path = tmp_path / "in.csv"
    path.write_text(content)
    ctx = context("bad_load")
    with pytest.raises(CampaignError, match=message):
        LoadFileOperator(task_id="bad_load", path=str(path), **kwargs).execute(ctx)
    assert staged(db, ctx) == []


def test_paths_and_formats_that_cannot_be_read(db, context, tmp_path):
    with pytest.raises(CampaignError, match=r"path='.*missing.csv': no such file"):
        LoadFileOperator(task_id="nofile", path=str(tmp_path / "missing.csv")).execute(context("nofile"))
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(CampaignError, match=r"format: cannot tell the format of '.*data.xlsx'; pass format="):
        LoadFileOperator(task_id="odd", path=str(odd)).execute(context("odd"))
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_text("id\n1\n")
    with pytest.raises(CampaignError, match=r"fake.parquet': not a Parquet file"):
        LoadFileOperator(task_id="fake", path=str(not_parquet)).execute(context("fake"))
    as_csv, _ = load(context, "fake_csv", path=str(not_parquet), format="csv")
    assert as_csv["count"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "xml"}, r"format='xml' is not valid; use one of \['csv', 'tsv', 'jsonl', 'parquet'\]"),
        ({"unmatched": "drop"}, r"unmatched='drop' is not valid"),
        ({"rejects": "ignore"}, r"rejects='ignore' is not valid"),
    ],
)
def test_bad_choices_fail_at_parse_time(kwargs, message):
    with pytest.raises(CampaignError, match=message):
        LoadFileOperator(task_id="parse", path="x.csv", **kwargs)


def test_empty_file_and_on_empty(db, context, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("id,email\n")
    out, rejects = load(context, "empty", path=str(path))
    assert (out["count"], rejects["count"], out["columns"]) == (0, 0, ["id", "email"])
    ctx = context("empty_skip")
    with pytest.raises(AirflowSkipException):
        LoadFileOperator(task_id="empty_skip", path=str(path), on_empty="skip").execute(ctx)
    assert staged(db, ctx) == []


def test_a_retry_replaces_both_outputs(db, context, tmp_path):
    path = tmp_path / "retry.csv"
    path.write_text("id,points\n1,1\n2,x\n")
    first = LoadFileOperator(task_id="load_retry", path=str(path), types={"points": "int"})
    ctx1 = context("load_retry", run_id="same")
    out1 = first.execute(ctx1)
    path.write_text("id,points\n3,3\n4,4\n5,y\n6,z\n")
    ctx2 = context("load_retry", run_id="same")
    out2 = LoadFileOperator(task_id="load_retry", path=str(path), types={"points": "int"}).execute(ctx2)
    assert out1["table"] == out2["table"]
    assert ctx1["ti"].xcoms["rejects"]["table"] == ctx2["ti"].xcoms["rejects"]["table"]
    assert [r["id"] for r in rows(db, out2)] == ["3", "4"]
    assert rows(db, ctx2["ti"].xcoms["rejects"])[-1]["points"] == "z"
    recorded = db.execute(
        "SELECT count(*) FROM campaign.staging_tables WHERE task_id = 'load_retry' AND run_id = 'same'"
    ).fetchone()[0]
    assert recorded == 2


# ---- S3 (moto server over HTTP) ----------------------------------------------------------------


@pytest.fixture
def bucket(s3):
    s3.create_bucket(Bucket="campaign-in")
    return "campaign-in"


def test_s3_csv(db, context, bucket, s3, people):
    (id1, e1), _, _ = people["unique"]
    s3.put_object(Bucket=bucket, Key="in/list.csv", Body=f"email\n{e1}\nunknown@nowhere.example\n".encode())
    out, rejects = load(context, "s3csv", path=f"s3://{bucket}/in/list.csv", reconcile_on="email")
    assert ids(db, out) == [id1]
    assert rejects["count"] == 1


def test_s3_gzipped_csv(db, context, bucket, s3):
    s3.put_object(Bucket=bucket, Key="in/codes.csv.gz", Body=gzip.compress(b"id,code\n1,x\n2,y\n3,z\n"))
    out, _ = load(context, "s3gz", path=f"s3://{bucket}/in/codes.csv.gz", types={"id": "int"})
    assert [(r["id"], r["code"]) for r in rows(db, out)] == [(1, "x"), (2, "y"), (3, "z")]


def test_s3_parquet(db, context, bucket, s3):
    s3.put_object(Bucket=bucket, Key="in/orders.parquet", Body=parquet_bytes(FRAME))
    out, _ = load(context, "s3pq", path=f"s3://{bucket}/in/orders.parquet")
    assert ids(db, out) == [10, 11, 12]
    assert column_types(db, out)["since"] == "timestamp with time zone"


def test_s3_missing_key_and_bucket(db, context, bucket):
    ctx = context("s3missing")
    with pytest.raises(
        CampaignError, match=r"path='s3://campaign-in/in/nope.csv': cannot read the S3 object \(NoSuchKey\)"
    ):
        LoadFileOperator(task_id="s3missing", path=f"s3://{bucket}/in/nope.csv").execute(ctx)
    with pytest.raises(
        CampaignError, match=r"path='s3://no-such-bucket/x.csv': cannot read the S3 object \(NoSuchBucket\)"
    ):
        LoadFileOperator(task_id="s3missing", path="s3://no-such-bucket/x.csv").execute(ctx)
    with pytest.raises(CampaignError, match=r"path='s3://only-bucket': an S3 path is s3://bucket/key"):
        LoadFileOperator(task_id="s3missing", path="s3://only-bucket", format="csv").execute(ctx)
    assert staged(db, ctx) == []


def test_excel_style_csv_with_bom_and_crlf(db, context, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfid,name\r\n1,Ann\r\n2,Bob\r\n")
    out, _ = load(context, "excel", path=str(path))
    assert out["columns"] == ["id", "name"]
    assert [(r["id"], r["name"]) for r in rows(db, out)] == [("1", "Ann"), ("2", "Bob")]


def test_an_unnamed_header_field_is_refused(db, context, tmp_path):
    path = tmp_path / "trailing.csv"
    path.write_text("id,name,\n1,Ann,\n")
    ctx = context("unnamed")
    with pytest.raises(CampaignError, match=r"columns: field\(s\) \[3\] of the header of .* have no name"):
        LoadFileOperator(task_id="unnamed", path=str(path)).execute(ctx)
    assert staged(db, ctx) == []
