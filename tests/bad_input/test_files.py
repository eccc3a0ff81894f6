"""Files that cannot be read as given: a CampaignError naming the file, the line and the option,
and nothing loaded (no staging table, no registry row)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.targeting import LoadFileOperator
from tests.bad_input.matrix import Row, cases
from tests.conftest import staged


def _truncated_gz(path: Path) -> None:
    whole = gzip.compress(b"id,email\n" + b"".join(b"%d,p%d@example.com\n" % (i, i) for i in range(5000)))
    path.write_bytes(whole[: len(whole) // 2])


def _bytes(content: bytes) -> Any:
    return lambda path: path.write_bytes(content)


FILES = [
    Row(
        "LoadFileOperator",
        "a truncated .gz file",
        "refused: `path='…people.csv.gz': not a complete gzip file (EOFError: …); it is truncated, or not "
        "gzip-compressed although its name ends in .gz`",
        args={
            "name": "people.csv.gz",
            "write": _truncated_gz,
            "match": r"people\.csv\.gz'?: not a complete gzip file",
        },
    ),
    Row(
        "LoadFileOperator",
        "plain text named .gz",
        "refused: `not a complete gzip file (BadGzipFile: …)`",
        args={
            "name": "plain.csv.gz",
            "write": _bytes(b"id,email\n1,a@example.com\n"),
            "match": r"not a complete gzip file \(BadGzipFile",
        },
    ),
    Row(
        "LoadFileOperator",
        "CR-only line endings",
        "refused: `its lines end with CR alone (old Mac line endings)`, with the command that converts it",
        args={
            "name": "mac.csv",
            "write": _bytes(b"id,email\r1,a@example.com\r2,b@example.com\r"),
            "match": "CR alone",
        },
    ),
    Row(
        "LoadFileOperator",
        "a NUL character in a CSV value",
        "refused: `a NUL character at line 3; PostgreSQL text cannot hold one`",
        args={
            "name": "nul.csv",
            "write": _bytes(b"id,email\n1,a@example.com\n2,b\x00@example.com\n"),
            "match": r"a NUL character at line 3",
        },
    ),
    Row(
        "LoadFileOperator",
        "a NUL character (\\u0000) in a JSON Lines value",
        "refused: `line 2 has a NUL character (\\u0000)`",
        args={
            "name": "nul.jsonl",
            "write": _bytes(
                b'{"id": "1", "email": "a@example.com"}\n{"id": "2", "email": "b\\u0000@x.com"}\n'
            ),
            "match": r"line 2 has a NUL character",
        },
    ),
    Row(
        "LoadFileOperator",
        "a header of 10,000 columns",
        "refused: `the file has 10,000 columns …; a table holds at most 1600. Check delimiter= and header=`",
        args={
            "name": "wide.csv",
            "write": _bytes(
                (",".join(f"c{i}" for i in range(10_000)) + "\n" + ",".join("1" * 10_000) + "\n").encode()
            ),
            "match": r"wide.csv. has 10,000 columns.*at most 1600",
        },
    ),
    Row(
        "LoadFileOperator",
        "latin-1 values under an ASCII header, read as UTF-8",
        "refused: `not valid utf-8 text at line 2 (invalid byte sequence …). Pass the file's encoding, e.g. "
        "encoding='latin-1'`",
        args={
            "name": "latin.csv",
            "write": _bytes("id,name\n1,Zoë\n".encode("latin-1")),
            "match": r"not valid utf-8 text at line 2.*encoding='latin-1'",
        },
    ),
    Row(
        "LoadFileOperator",
        "an unterminated quote in a 1 MB field",
        "refused: `malformed csv …`; the message stays short (the value is cut)",
        args={
            "name": "quote.csv",
            "write": _bytes(b'id,email\n1,"' + b"x" * 1_000_000 + b"\n"),
            "match": r"malformed csv",
        },
    ),
    Row(
        "LoadFileOperator",
        "a JSON Lines line that is not JSON",
        "refused: `line 2 is not JSON (…). Fix the file; nothing was loaded.`",
        args={"name": "bad.jsonl", "write": _bytes(b'{"id": 1}\n{id: 2}\n'), "match": r"line 2 is not JSON"},
    ),
    Row(
        "LoadFileOperator",
        "a JSON Lines line that is an array",
        "refused: `line 1 is not a JSON object`",
        args={
            "name": "array.jsonl",
            "write": _bytes(json.dumps([1, 2]).encode() + b"\n"),
            "match": r"not a JSON object",
        },
    ),
    Row(
        "LoadFileOperator",
        "a .parquet file that is not Parquet",
        "refused: `not a Parquet file (…). Check format= or fix the file.`",
        args={
            "name": "fake.parquet",
            "write": _bytes(b"id,email\n1,a@x.com\n"),
            "match": r"not a Parquet file",
        },
    ),
    Row(
        "LoadFileOperator",
        "a header field with no name (trailing delimiter)",
        "refused: `field(s) [3] of the header have no name (a trailing delimiter?)`",
        args={
            "name": "trailing.csv",
            "write": _bytes(b"id,email,\n1,a@x.com,\n"),
            "match": r"field\(s\) \[3\]",
        },
    ),
    Row(
        "LoadFileOperator",
        "invalid UTF-8 in the header",
        "refused: `not valid utf-8 text`, naming the encoding to pass",
        args={
            "name": "head.csv",
            "write": _bytes("prénom,id\nZoë,1\n".encode("latin-1")),
            "match": r"not valid utf-8",
        },
    ),
]


@cases(*FILES)
def test_a_file_that_cannot_be_read_is_refused_and_nothing_is_loaded(row: Row, db, context, tmp_path) -> None:
    path = tmp_path / row.args["name"]
    row.args["write"](path)
    ctx = context("load_bad")
    with pytest.raises(CampaignError, match=row.args["match"]) as raised:
        LoadFileOperator(task_id="load_bad", path=str(path)).execute(ctx)
    assert str(path.name) in str(raised.value), "the error names the file"
    assert len(str(raised.value)) < 1000, "the error does not echo the file's content"
    assert staged(db, ctx) == []


@cases(
    Row(
        "LoadFileOperator",
        "delimiter=';;' given once rendered (templated options are checked again)",
        "refused when the task runs: `delimiter=';;': give one character`",
        args={"delimiter": ";;"},
    ),
)
def test_a_bad_delimiter_is_refused_before_the_file_is_read(row: Row, db, context, tmp_path) -> None:
    path = tmp_path / "people.csv"
    path.write_bytes(b"id;email\n1;a@x.com\n")
    op = LoadFileOperator(task_id="load_delim", path=str(path))
    op.delimiter = row.args["delimiter"]  # as if set after parsing
    ctx = context("load_delim")
    with pytest.raises(CampaignError, match=r"delimiter=';;': give one character"):
        op.execute(ctx)
    assert staged(db, ctx) == []
