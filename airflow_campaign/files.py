"""Reading files (local or s3://; CSV, TSV, JSONL, Parquet; gzip) into Postgres with COPY."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import itertools
import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Literal

import psycopg
from psycopg import sql

from airflow_campaign.errors import CampaignError, shown
from airflow_campaign.extras import needs
from airflow_campaign.hooks.campaign import CampaignHook

FileFormat = Literal["csv", "tsv", "jsonl", "parquet"]
FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "parquet")
LINE_COLUMN = "_line"
_CHUNK = 1 << 20
_TEMP_NAMES = itertools.count()
_COPY_LINE = re.compile(r"line (\d+)(?:, column [^:]*)?(?:: (.*))?$")
MAX_COLUMNS = 1600  # PostgreSQL's limit on the columns of a table


def infer_format(path: str) -> str:
    """The format named by a path's extension (``.gz`` ignored)."""
    name = path.lower().removesuffix(".gz")
    for ext, fmt in (
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".txt", "tsv"),
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".parquet", "parquet"),
        (".pq", "parquet"),
    ):
        if name.endswith(ext):
            return fmt
    raise CampaignError(
        f"format: cannot tell the format of {shown(path)}; pass format= one of {list(FORMATS)}."
    )


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise CampaignError(f"path={uri!r}: an S3 path is s3://bucket/key.")
    return bucket, key


@contextmanager
def open_source(path: str, aws_conn_id: str | None = "aws_default") -> Iterator[IO[bytes]]:
    """A binary stream of a local file or an S3 object, gunzipped when the name ends in .gz.

    S3 objects stream through the amazon provider's S3 hook (the body is never held whole);
    a missing object or bucket is a CampaignError naming the path.
    """
    if path.startswith("s3://"):
        bucket, key = split_s3(path)
        with needs("amazon", f"path={shown(path)}"):
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        try:
            body = S3Hook(aws_conn_id=aws_conn_id).get_conn().get_object(Bucket=bucket, Key=key)["Body"]
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise CampaignError(
                f"path={shown(path)}: cannot read the S3 object ({code}). Check the bucket and key, and "
                f"that aws_conn_id={aws_conn_id!r} may read them."
            ) from exc
        raw: IO[bytes] = body  # botocore StreamingBody has read(n)
        try:
            yield gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw  # type: ignore[misc]
        finally:
            body.close()
        return
    if not os.path.isfile(path):
        raise CampaignError(
            f"path={shown(path)}: no such file; give an existing local path or s3://bucket/key."
        )
    with open(path, "rb") as handle:
        yield gzip.GzipFile(fileobj=handle) if path.endswith(".gz") else handle  # type: ignore[misc]


def load_raw(
    conn: psycopg.Connection,
    path: str,
    *,
    format: str,
    columns: list[str] | None = None,
    header: bool = True,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    aws_conn_id: str | None = "aws_default",
) -> tuple[str, list[str], dict[str, str]]:
    """Load a file into a temporary text table (plus ``_line``, the 1-based data row number).

    Returns the table name, the file's column names and the types the file itself declares
    (Parquet only; CSV and JSONL are text until the caller casts). The table is dropped at the
    end of the transaction.
    """
    if format not in FORMATS:
        raise CampaignError(f"format={shown(format)} is not valid; use one of {list(FORMATS)}.")
    if format in ("csv", "tsv"):
        check_delimiter(delimiter)
    try:
        with open_source(path, aws_conn_id) as stream:
            if format in ("csv", "tsv"):
                return _load_delimited(conn, path, stream, format, columns, header, delimiter, encoding)
            if format == "jsonl":
                return _load_jsonl(conn, path, stream, columns, encoding)
            return _load_parquet(conn, path, stream, columns)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise CampaignError(
            f"path={shown(path)}: not a complete gzip file ({type(exc).__name__}: {exc}); it is truncated, "
            "or not gzip-compressed although its name ends in .gz. Fix or rename the file; nothing was loaded."
        ) from exc


def check_delimiter(delimiter: Any, option: str = "delimiter") -> None:
    """One character that cannot be confused with a line end or the quote."""
    if delimiter is None:
        return
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
        raise CampaignError(
            f"{option}={shown(delimiter)}: give one character other than a quote or a line end, "
            "e.g. ',', ';', '|' or '\\t'."
        )


def _create_raw(conn: psycopg.Connection, columns: list[str], path: str) -> str:
    if not columns:
        raise CampaignError(f"columns: {shown(path)} has no columns; give a header line or columns=[...].")
    if len(columns) > MAX_COLUMNS:
        raise CampaignError(
            f"columns: {shown(path)} has {len(columns):,} columns (first ones {shown(columns[:5])}); a table holds "
            f"at most {MAX_COLUMNS}. Check delimiter= and header=, or load fewer columns with columns=[...]."
        )
    unnamed = [i + 1 for i, c in enumerate(columns) if not c]
    if unnamed:
        raise CampaignError(
            f"columns: field(s) {unnamed} of the header of {shown(path)} have no name (a trailing delimiter?); name every "
            "column in the file's header line."
        )
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes or LINE_COLUMN in columns:
        raise CampaignError(
            f"columns: duplicated or reserved column names {shown(dupes or [LINE_COLUMN])} in {shown(path)}."
        )
    name = f"raw_file_{next(_TEMP_NAMES)}"
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ({} bigint GENERATED ALWAYS AS IDENTITY, {}) ON COMMIT DROP").format(
            sql.Identifier(name),
            sql.Identifier(LINE_COLUMN),
            sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in columns),
        )
    )
    return name


def _load_delimited(
    conn: psycopg.Connection,
    path: str,
    stream: IO[bytes],
    format: str,
    columns: list[str] | None,
    header: bool,
    delimiter: str | None,
    encoding: str,
) -> tuple[str, list[str], dict[str, str]]:
    delimiter = delimiter or ("\t" if format == "tsv" else ",")
    pg_encoding = {"utf-8": "UTF8", "utf8": "UTF8", "latin-1": "LATIN1", "latin1": "LATIN1"}.get(
        encoding.lower()
    )
    if pg_encoding is None:
        raise CampaignError(f"encoding={encoding!r} is not supported; use 'utf-8' or 'latin-1'.")
    first = stream.read(_CHUNK)
    if first.startswith(codecs.BOM_UTF8):
        first = first[len(codecs.BOM_UTF8) :]
    if b"\r" in first and b"\n" not in first and len(first.rstrip(b"\r")) > first.find(b"\r") + 1:
        raise CampaignError(
            f"path={shown(path)}: its lines end with CR alone (old Mac line endings); PostgreSQL's COPY and "
            "the csv reader need LF or CRLF. Convert the file (e.g. `tr '\\r' '\\n'`); nothing was loaded."
        )
    if header:
        line_end = first.find(b"\n")
        try:
            head_line = (first if line_end < 0 else first[:line_end]).decode(encoding).rstrip("\r")
        except UnicodeDecodeError as exc:
            raise _not_encoded(path, encoding, exc) from exc
        try:
            file_columns = next(csv.reader([head_line], delimiter=delimiter), [])
        except csv.Error as exc:
            raise CampaignError(
                f"path={shown(path)}: line 1 (the header) is not valid {format} ({exc}). Fix the file, or check "
                "delimiter= and header=; nothing was loaded."
            ) from exc
        file_columns = [c.strip() for c in file_columns]
        first = b"" if line_end < 0 else first[line_end + 1 :]
        if columns and columns != file_columns:
            missing = [c for c in columns if c not in file_columns]
            if missing:
                raise CampaignError(
                    f"columns={shown(columns)}: {missing} not in the header of {shown(path)} {shown(file_columns)}; "
                    "name header columns, or pass header=False for a file without a header line."
                )
    elif not columns:
        raise CampaignError(
            f"columns: {shown(path)} has no header (header=False), so columns=[...] must name each field."
        )
    else:
        file_columns = columns
    table = _create_raw(conn, file_columns, path)
    options = sql.SQL("FORMAT csv, DELIMITER {}, ENCODING {}").format(
        sql.Literal(delimiter), sql.Literal(pg_encoding)
    )

    def chunks() -> Iterator[bytes]:
        if first:
            yield first
        while block := stream.read(_CHUNK):
            yield block

    try:
        CampaignHook.copy_text_in(conn, table, file_columns, chunks(), options)
    except psycopg.errors.DataError as exc:
        context = (exc.diag.context or "").strip().splitlines()[-1:] or [""]
        found = _COPY_LINE.search(context[0])
        at = f" at line {int(found.group(1)) + (1 if header else 0)}" if found else ""
        primary = exc.diag.message_primary or ""
        if "invalid byte sequence" in primary and "0x00" not in primary:
            raise CampaignError(
                f"path={shown(path)}: not valid {encoding} text{at} ({primary}). Pass the file's encoding, "
                "e.g. encoding='latin-1'; nothing was loaded."
            ) from exc
        if "0x00" in primary:
            raise CampaignError(
                f"path={shown(path)}: a NUL character{at}; PostgreSQL text cannot hold one. Remove NUL bytes "
                "from the file (e.g. `tr -d '\\000'`); nothing was loaded."
            ) from exc
        snippet = f": {shown(found.group(2), 120, quote=False)}" if found and found.group(2) else ""
        raise CampaignError(
            f"path={shown(path)}: malformed {format}{at} ({primary}{snippet}). Fix the file, or "
            "check format=, delimiter=, header= and encoding=; nothing was loaded."
        ) from exc
    return table, file_columns, {}


def _load_jsonl(
    conn: psycopg.Connection, path: str, stream: IO[bytes], columns: list[str] | None, encoding: str
) -> tuple[str, list[str], dict[str, str]]:
    records = _json_records(path, stream, encoding)
    head = next(records, None)
    file_columns = columns or (list(head[1]) if head else [])
    table = _create_raw(conn, file_columns, path)
    if head is None:
        return table, file_columns, {}
    at = [head[0]]

    def rows() -> Iterator[list[str | None]]:
        for number, record in itertools.chain([head], records):
            at[0] = number
            values = [_as_text(record.get(c)) for c in file_columns]
            if any(v is not None and "\x00" in v for v in values):
                raise CampaignError(
                    f"path={shown(path)}: line {number} has a NUL character (\\u0000); PostgreSQL text cannot "
                    "hold one. Remove it from the file; nothing was loaded."
                )
            yield values

    try:
        CampaignHook.copy_rows_in(conn, table, file_columns, rows())
    except psycopg.DataError as exc:
        raise CampaignError(
            f"path={shown(path)}: line {at[0]} cannot be loaded ({exc}). Fix the file; nothing was loaded."
        ) from exc
    return table, file_columns, {}


def _json_records(path: str, stream: IO[bytes], encoding: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSON Lines stream."""
    text = io.TextIOWrapper(stream, encoding=encoding)  # type: ignore[type-var]
    number = 0
    try:
        for number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CampaignError(
                    f"path={shown(path)}: line {number} is not JSON ({exc.msg}). Fix the file; nothing was loaded."
                ) from exc
            if not isinstance(record, dict):
                raise CampaignError(
                    f"path={shown(path)}: line {number} is not a JSON object; JSON Lines needs one object per line."
                )
            yield number, record
    except UnicodeDecodeError as exc:
        raise _not_encoded(path, encoding, exc, number + 1) from exc


def _not_encoded(path: str, encoding: str, exc: UnicodeDecodeError, line: int | None = None) -> CampaignError:
    where = f" (line {line})" if line else ""
    return CampaignError(
        f"path={shown(path)}: not valid {encoding} text{where}: {exc.reason}. Pass the file's encoding, "
        "e.g. encoding='latin-1'."
    )


def _load_parquet(
    conn: psycopg.Connection, path: str, stream: IO[bytes], columns: list[str] | None
) -> tuple[str, list[str], dict[str, str]]:
    with needs("parquet", f"path={shown(path)} (format='parquet')"):
        import pyarrow as pa
        import pyarrow.parquet as pq

    with tempfile.TemporaryFile() as spool:
        if not stream.seekable():
            shutil.copyfileobj(stream, spool, _CHUNK)
            spool.seek(0)
            source: IO[bytes] = spool
        else:
            source = stream
        try:
            parquet = pq.ParquetFile(source)
        except pa.ArrowException as exc:
            raise CampaignError(
                f"path={shown(path)}: not a Parquet file ({exc}). Check format= or fix the file."
            ) from exc
        names = list(parquet.schema_arrow.names)
        missing = [c for c in columns or [] if c not in names]
        if missing:
            raise CampaignError(
                f"columns={shown(columns)}: {missing} not in the Parquet file {shown(path)} {shown(names)}."
            )
        file_columns = columns or names
        types = {}
        for name in file_columns:
            arrow_type = parquet.schema_arrow.field(name).type
            types[name] = _arrow_to_pg(pa, arrow_type)
        table = _create_raw(conn, file_columns, path)

        def rows() -> Iterator[list[Any]]:
            for batch in parquet.iter_batches(batch_size=50_000, columns=file_columns):
                data = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
                for values in zip(*data, strict=True):
                    yield [_as_text(v) for v in values]

        CampaignHook.copy_rows_in(conn, table, file_columns, rows())
    return table, file_columns, types


def _arrow_to_pg(pa: Any, arrow_type: Any) -> str:
    checks = [
        (pa.types.is_boolean, "boolean"),
        (pa.types.is_integer, "bigint"),
        (pa.types.is_floating, "double precision"),
        (pa.types.is_decimal, "numeric"),
        (pa.types.is_timestamp, "timestamptz"),
        (pa.types.is_date, "date"),
    ]
    return next((pg for check, pg in checks if check(arrow_type)), "text")


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
