"""Writing a query's rows to a file (local or s3://; CSV, text, JSON Lines, Parquet; gzip; OpenPGP), streamed.

:func:`write_query` is the one entry point. CSV, text and JSON Lines are formatted by
PostgreSQL itself (``COPY (SELECT …) TO STDOUT``) and compressed in-process as the bytes
arrive; for Parquet, pyarrow parses that stream into typed batches. Memory stays flat in
the row count. The file is written under a temporary name (next to the destination, or
locally before an S3 upload) and appears under its final name only when complete: a failed
write leaves the destination as it was.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Literal

import psycopg
from psycopg import sql

from airflow_campaign.errors import CampaignError
from airflow_campaign.extras import needs
from airflow_campaign.files import split_s3

FileFormat = Literal["csv", "text", "jsonl", "parquet"]
Compression = Literal["gzip"]
Encoding = Literal["utf-8", "latin-1"]
Quoting = Literal["minimal", "all"]
LineEnding = Literal["lf", "crlf"]

FORMATS: tuple[str, ...] = ("csv", "text", "jsonl", "parquet")
COMPRESSIONS: tuple[Any, ...] = (None, "gzip")
ENCODINGS: tuple[str, ...] = ("utf-8", "latin-1")
QUOTINGS: tuple[str, ...] = ("minimal", "all")
LINE_ENDINGS: tuple[str, ...] = ("lf", "crlf")
DELIMITED = ("csv", "text")

MULTIPART_CHUNK = 64 * 1024 * 1024
PARQUET_BLOCK = 8 << 20  # bytes of CSV per Parquet row group (about 80,000 rows of profiles)
PROGRESS_SECONDS = 10.0
_BUFFER = 1 << 20
_TIMESTAMP = "%Y%m%d_%H%M%S"
_PG_ENCODING = {"utf-8": "UTF8", "latin-1": "LATIN1"}
_NOT_LATIN1 = "[^\\u0001-\\u00ff]"
_ROW_NUMBER = "_campaign_extract_row"
_KEY_PREFIXES = ("variable:", "connection:")
_KEY_BLOCK = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
_ORDER = re.compile(r"^(?P<name>.+?)(?:\s+(?P<dir>ASC|DESC))?(?:\s+NULLS\s+(?P<nulls>FIRST|LAST))?$", re.I)

log = logging.getLogger(__name__)


@dataclass
class WriteResult:
    """What :func:`write_query` wrote.

    :param path: the final local path or ``s3://`` URI (after the timestamp), or ``""`` when
        no file was written (an empty result with ``skip_if_empty``).
    :param rows: data rows written (a header line is not counted).
    :param bytes: size of the final file, after compression and encryption.
    """

    path: str
    rows: int
    bytes: int


# ---- options -------------------------------------------------------------------------------


def check_options(
    *,
    format: str = "csv",
    delimiter: str | None = None,
    quote: str = '"',
    quoting: str = "minimal",
    line_ending: str = "lf",
    encoding: str = "utf-8",
    compression: str | None = None,
    compression_level: int = 1,
    encrypt_with: str | None = None,
    decimal_separator: str = ".",
) -> None:
    """Raise a CampaignError for options that cannot work together (no database needed).

    Operators call it when the DAG file is parsed, :func:`write_query` again before writing.
    """
    _choice("format", format, FORMATS)
    _choice("compression", compression, COMPRESSIONS)
    _choice("encoding", encoding, ENCODINGS)
    _choice("quoting", quoting, QUOTINGS)
    _choice("line_ending", line_ending, LINE_ENDINGS)
    if format == "parquet":
        if compression:
            raise CampaignError(
                f"compression={compression!r}: a Parquet file compresses its own pages (snappy); "
                "leave compression=None for format='parquet'."
            )
        if encoding != "utf-8":
            raise CampaignError(
                f"encoding={encoding!r}: Parquet text is always UTF-8; use encoding='utf-8' with format='parquet'."
            )
    if delimiter is not None:
        if format not in DELIMITED:
            raise CampaignError(
                f"delimiter={delimiter!r}: only format='csv' or 'text' has a delimiter; leave it out for "
                f"format={format!r}."
            )
        _one_byte("delimiter", delimiter)
    _one_byte("quote", quote)
    if format == "csv" and (delimiter or ",") == quote:
        raise CampaignError(f"quote={quote!r} is also the delimiter; choose two different characters.")
    if format == "text" and delimiter == "\\":
        raise CampaignError("delimiter='\\\\': the text format escapes with a backslash; choose another.")
    if not isinstance(compression_level, int) or not 1 <= compression_level <= 9:
        raise CampaignError(
            f"compression_level={compression_level!r}: give a whole number from 1 (fastest) to 9 (smallest)."
        )
    if not isinstance(decimal_separator, str) or len(decimal_separator) != 1:
        raise CampaignError(f"decimal_separator={decimal_separator!r}: give one character, e.g. ','.")
    if encrypt_with is not None:
        check_key_reference(encrypt_with)


def _choice(option: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise CampaignError(f"{option}={value!r} is not valid; use one of {list(choices)}.")


def _one_byte(option: str, value: Any) -> None:
    if not isinstance(value, str) or len(value) != 1 or not value.isascii() or value in "\r\n":
        raise CampaignError(
            f"{option}={value!r}: give one ASCII character other than a line break, e.g. ',', ';', '|' "
            "or '\\t' (PostgreSQL's COPY writes the file)."
        )


def check_key_reference(encrypt_with: str) -> None:
    """``encrypt_with`` must name a Variable or a connection, or be an armored public key."""
    text = str(encrypt_with).strip()
    if text.startswith(_KEY_BLOCK) or any(text.startswith(p) and len(text) > len(p) for p in _KEY_PREFIXES):
        return
    raise CampaignError(
        f"encrypt_with={encrypt_with!r}: write 'variable:<name>' (an Airflow Variable holding the "
        "armored public key), 'connection:<conn_id>' (a connection whose extra 'public_key' or password "
        "holds it), or the armored key block itself."
    )


def stamped(path: str, when: dt.datetime) -> str:
    """``path`` with ``_YYYYMMDD_HHMMSS`` (``when`` in UTC) before its extensions.

    ``/out/audience.csv.gz`` becomes ``/out/audience_20260115_060000.csv.gz``; the compression and
    encryption suffixes (``.gz``, ``.gpg``, ``.pgp``, ``.asc``) and one extension stay at the end.
    """
    head, _, name = path.rpartition("/")
    stem, ext = name, ""
    while True:
        base, dot, suffix = stem.rpartition(".")
        if not dot or not base or f".{suffix.lower()}" not in (".gz", ".gpg", ".pgp", ".asc"):
            break
        stem, ext = base, f".{suffix}{ext}"
    base, dot, suffix = stem.rpartition(".")
    if dot and base:
        stem, ext = base, f".{suffix}{ext}"
    when_utc = when.astimezone(dt.timezone.utc) if when.tzinfo else when
    return f"{head}{'/' if head or path.startswith('/') else ''}{stem}_{when_utc.strftime(_TIMESTAMP)}{ext}"


def parse_order(entry: str) -> tuple[str, str]:
    """Split a sort entry (``"name"``, ``"name DESC"``, ``"name ASC NULLS FIRST"``) into the name and the rest."""
    found = _ORDER.match(str(entry).strip())
    if not found:
        raise CampaignError(f"sort: cannot read {entry!r}; write 'column', 'column DESC' or 'column ASC'.")
    rest = " ".join(
        part
        for part in (
            (found.group("dir") or "").upper(),
            f"NULLS {found.group('nulls').upper()}" if found.group("nulls") else "",
        )
        if part
    )
    return found.group("name").strip(), rest


# ---- the public key --------------------------------------------------------------------------


def public_key(encrypt_with: str) -> Any:
    """The OpenPGP certificate named by ``encrypt_with``, checked to be able to encrypt."""
    check_key_reference(encrypt_with)
    with needs("pgp", "encrypt_with"):
        import pysequoia

    text = str(encrypt_with).strip()
    if text.startswith("variable:"):
        from airflow.sdk import Variable

        name = text.removeprefix("variable:")
        armored = Variable.get(name, default=None)
        if not armored:
            raise CampaignError(
                f"encrypt_with={encrypt_with!r}: no Airflow Variable {name!r}; create it with the "
                "recipient's armored public key."
            )
    elif text.startswith("connection:"):
        from airflow.sdk import Connection

        conn_id = text.removeprefix("connection:")
        try:
            connection = Connection.get(conn_id)
        except Exception as exc:
            raise CampaignError(
                f"encrypt_with={encrypt_with!r}: no Airflow connection {conn_id!r}; create one whose extra "
                "'public_key' (or password) holds the recipient's armored public key."
            ) from exc
        armored = (connection.extra_dejson or {}).get("public_key") or connection.password
        if not armored:
            raise CampaignError(
                f"encrypt_with={encrypt_with!r}: connection {conn_id!r} has no extra 'public_key' and no "
                "password; put the recipient's armored public key in one of them."
            )
    else:
        armored = text
    try:
        cert = pysequoia.Cert.from_bytes(str(armored).encode("utf-8"))
    except Exception as exc:
        raise CampaignError(
            f"encrypt_with={encrypt_with!r}: not an OpenPGP public key ({exc}). Export it with "
            "'gpg --armor --export <recipient>' and store the whole block."
        ) from exc
    if cert.has_secret_keys:
        raise CampaignError(
            f"encrypt_with={encrypt_with!r} holds a secret key; store only the recipient's public key "
            "('gpg --armor --export <recipient>'), never a private one."
        )
    problem = (
        "is revoked"
        if cert.is_revoked
        else f"expired on {cert.expiration:%Y-%m-%d}"
        if cert.expiration and cert.expiration <= dt.datetime.now(dt.timezone.utc)
        else None
    )
    if problem:
        raise CampaignError(
            f"encrypt_with={encrypt_with!r}: key {cert.fingerprint} {problem}; ask the recipient for a current "
            "public key and store it instead."
        )
    try:
        pysequoia.encrypt(b"", recipients=[cert], armor=False)
    except Exception as exc:
        raise CampaignError(
            f"encrypt_with={encrypt_with!r}: key {cert.fingerprint} cannot be used to encrypt ({exc}); it may "
            "be expired, revoked or signing-only. Ask the recipient for a current encryption key."
        ) from exc
    return cert


# ---- destinations ------------------------------------------------------------------------------


class _Destination:
    """Where the finished file goes: temporary files first, the final name only on success."""

    def __init__(self, path: str, aws_conn_id: str | None, multipart_chunk_size: int) -> None:
        self.path = path
        self.aws_conn_id = aws_conn_id
        self.multipart_chunk_size = multipart_chunk_size
        self.is_s3 = path.startswith("s3://")
        self._temps: list[str] = []
        self._spool: str | None = None
        if self.is_s3:
            self.bucket, self.key = split_s3(path)
            self._check_bucket()
            self._spool = tempfile.mkdtemp(prefix="campaign-extract-")
            self.folder = self._spool
            self.name = os.path.basename(self.key) or "extract"
        else:
            self._check_local()

    def _check_local(self) -> None:
        if not self.path.strip():
            raise CampaignError("path='': give a local file path or s3://bucket/key.")
        if self.path.endswith(("/", os.sep)) or os.path.isdir(self.path):
            raise CampaignError(
                f"path={self.path!r} is a directory; give a file path such as {self.path.rstrip('/')}/extract.csv."
            )
        self.folder = os.path.dirname(os.path.abspath(self.path))
        self.name = os.path.basename(self.path)
        try:
            os.makedirs(self.folder, exist_ok=True)
            probe = self.temp(".probe")
            os.unlink(probe)
            self._temps.remove(probe)
        except OSError as exc:
            raise CampaignError(
                f"path={self.path!r}: cannot write in {self.folder} ({exc.strerror}); choose a writable "
                "directory or fix its permissions. Nothing was written."
            ) from exc
        if os.path.exists(self.path) and not os.access(self.path, os.W_OK):
            raise CampaignError(
                f"path={self.path!r}: the existing file is read-only for this worker; fix its permissions."
            )

    def _client(self) -> Any:
        with needs("amazon", f"path={self.path!r}"):
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id).get_conn()

    def _check_bucket(self) -> None:
        check_bucket("path", self.path, self.bucket, self.aws_conn_id)

    def temp(self, suffix: str = "") -> str:
        """A new empty temporary file beside the destination (hidden, ``.part``), with the umask's mode."""
        path = os.path.join(self.folder, f".{self.name}.{secrets.token_hex(6)}{suffix}.part")
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        self._temps.append(path)
        return path

    def publish(self, local: str) -> int:
        """Move the finished temporary file to the destination; return its size in bytes."""
        size = os.path.getsize(local)
        if not self.is_s3:
            descriptor = os.open(local, os.O_RDONLY)
            try:
                os.fsync(descriptor)  # on disk before it takes the final name
            finally:
                os.close(descriptor)
            os.replace(local, self.path)
            self._temps.remove(local)
            return size
        with needs("amazon", f"path={self.path!r}"):
            from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self.multipart_chunk_size,
            multipart_chunksize=self.multipart_chunk_size,
            max_concurrency=4,
        )
        try:
            self._client().upload_file(local, self.bucket, self.key, Config=config)
        except Exception as exc:
            raise CampaignError(
                f"path={self.path!r}: the upload failed ({exc}); check that aws_conn_id={self.aws_conn_id!r} "
                "may write to the bucket. The destination was left as it was."
            ) from exc
        return size

    def discard(self) -> None:
        """Remove whatever temporary files are left."""
        for path in self._temps:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._temps.clear()
        if self._spool:
            shutil.rmtree(self._spool, ignore_errors=True)


# ---- byte pipeline ----------------------------------------------------------------------------


class _Sink:
    """Bytes to a file: optional CRLF line endings (quote-aware for CSV), optional gzip."""

    def __init__(self, handle: IO[bytes], *, crlf: bool, quote: bytes | None, gzip_level: int | None) -> None:
        self.handle = handle
        self.crlf = crlf
        self.quote = quote
        self.inside = False
        self.zip = zlib.compressobj(gzip_level, zlib.DEFLATED, 31) if gzip_level else None

    def write(self, data: bytes | bytearray) -> None:
        if self.crlf:
            data = self._crlf(bytes(data))
        if self.zip is not None:
            data = self.zip.compress(data)
        self.handle.write(data)

    def close(self) -> None:
        if self.zip is not None:
            self.handle.write(self.zip.flush())
        self.handle.flush()

    def _crlf(self, data: bytes) -> bytes:
        if self.quote is None:
            return data.replace(b"\n", b"\r\n")
        # a line break inside a quoted CSV field is data: only those outside quotes end a line
        parts = data.split(self.quote)
        for i in range(1 if self.inside else 0, len(parts), 2):
            parts[i] = parts[i].replace(b"\n", b"\r\n")
        if (len(parts) - 1) % 2:
            self.inside = not self.inside
        return self.quote.join(parts)


class _Progress:
    """Logs rows written and the rate every PROGRESS_SECONDS, and a summary at the end."""

    def __init__(self, logger: Any, path: str) -> None:
        self.log = logger
        self.path = path
        self.started = self.last = time.monotonic()

    def tick(self, rows: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            self.log.info(
                "extract %s: %s rows so far, %s rows/s", self.path, f"{rows:,}", self._rate(rows, now)
            )

    def done(self, rows: int, size: int) -> None:
        now = time.monotonic()
        self.log.info(
            "extract %s: %s rows, %s bytes in %.1fs (%s rows/s)",
            self.path,
            f"{rows:,}",
            f"{size:,}",
            now - self.started,
            self._rate(rows, now),
        )

    def _rate(self, rows: int, now: float) -> str:
        return f"{rows / max(now - self.started, 1e-6):,.0f}"


# ---- the query -----------------------------------------------------------------------------------


@dataclass
class _Column:
    name: str
    type: str | None  # PostgreSQL type name (psycopg's), None when not a built-in type
    precision: int | None
    scale: int | None


def describe(conn: psycopg.Connection, query: sql.Composable) -> list[_Column]:
    """The result columns of ``query`` (planned with LIMIT 0, so SQL errors show before any write)."""
    from psycopg.postgres import types

    cur = conn.execute(sql.SQL("SELECT * FROM ({}) q LIMIT 0").format(query))
    out = []
    for column in cur.description or []:
        info = types.get(column.type_code)
        out.append(_Column(column.name, info.name if info else None, column.precision, column.scale))
    return out


_DATES = ("date",)
_TIMESTAMPS = ("timestamp", "timestamptz")
_NUMBERS = ("numeric", "float4", "float8")
_ARROW_NATIVE = (
    "bool",
    "int2",
    "int4",
    "int8",
    "float4",
    "float8",
    "date",
    "timestamp",
    "timestamptz",
    "time",
    "text",
    "varchar",
    "bpchar",
    "name",
)


def _formatted(
    query: sql.Composable,
    columns: list[_Column],
    *,
    date_format: str | None,
    timestamp_format: str | None,
    number_format: str | None,
    decimal_separator: str,
    parquet: bool,
) -> tuple[sql.Composable, list[_Column]]:
    """``query`` with the date, timestamp and number formats applied (and Parquet-unfriendly types as text)."""
    items: list[sql.Composable] = []
    out: list[_Column] = []
    changed = False
    for column in columns:
        ident = sql.SQL("q.{}").format(sql.Identifier(column.name))
        expr: sql.Composable = ident
        kind = column.type
        pattern = (
            date_format
            if kind in _DATES
            else timestamp_format
            if kind in _TIMESTAMPS
            else number_format
            if kind in _NUMBERS
            else None
        )
        if pattern:
            expr = sql.SQL("to_char({}, {})").format(expr, sql.Literal(pattern))
            kind = "text"
        if column.type in _NUMBERS and decimal_separator != ".":
            expr = sql.SQL("replace({}::text, '.', {})").format(expr, sql.Literal(decimal_separator))
            kind = "text"
        if parquet and kind not in _ARROW_NATIVE and not _decimal_fits(column, kind):
            expr = sql.SQL("{}::text").format(expr)
            kind = "text"
        if expr is not ident:
            changed = True
            expr = sql.SQL("{} AS {}").format(expr, sql.Identifier(column.name))
        items.append(expr)
        out.append(_Column(column.name, kind, column.precision, column.scale))
    if not changed:
        return query, out
    return sql.SQL("SELECT {} FROM ({}) q").format(sql.SQL(", ").join(items), query), out


def _decimal_fits(column: _Column, kind: str | None) -> bool:
    return kind == "numeric" and column.precision is not None and 0 < column.precision <= 38


# ---- writing -------------------------------------------------------------------------------------


def check_bucket(option: str, path: str, bucket: str, aws_conn_id: str | None) -> None:
    """Raise naming ``option`` when the S3 bucket of ``path`` does not exist or cannot be reached.

    A bucket the connection may not inspect (403) is left to the upload itself.
    """
    with needs("amazon", f"{option}={path!r}"):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    try:
        S3Hook(aws_conn_id=aws_conn_id).get_conn().head_bucket(Bucket=bucket)
    except Exception as exc:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__))
        if code in ("403", "AccessDenied", "Forbidden"):
            log.warning("%s=%r: cannot check bucket %r (%s); trying the upload", option, path, bucket, code)
            return
        problem = (
            "does not exist" if code in ("404", "NoSuchBucket", "NotFound") else f"cannot be reached ({code})"
        )
        raise CampaignError(
            f"{option}={path!r}: the bucket {bucket!r} {problem}. Create it, fix the path, or check "
            f"that aws_conn_id={aws_conn_id!r} may write to it. Nothing was written."
        ) from exc


def write_query(
    conn: psycopg.Connection,
    query: sql.Composable,
    path: str,
    *,
    format: str = "csv",
    header: bool = True,
    delimiter: str | None = None,
    compression: str | None = None,
    aws_conn_id: str | None = "aws_default",
    skip_if_empty: bool = False,
    quote: str = '"',
    quoting: str = "minimal",
    line_ending: str = "lf",
    encoding: str = "utf-8",
    date_format: str | None = None,
    timestamp_format: str | None = None,
    number_format: str | None = None,
    decimal_separator: str = ".",
    compression_level: int = 1,
    encrypt_with: str | None = None,
    timestamp: dt.datetime | None = None,
    multipart_chunk_size: int = MULTIPART_CHUNK,
    logger: Any = None,
) -> WriteResult:
    """Stream the rows of ``query`` to a file at ``path`` (local, or ``s3://bucket/key``).

    Runs in the caller's transaction on ``conn`` (inside a savepoint) and writes nothing to the
    database. Options are checked first; then the key (``encrypt_with``), the query (planned by
    PostgreSQL) and the destination (directory writable, bucket exists), all before the first
    byte is written. The file goes to a temporary name and reaches ``path`` only when complete.

    :param format: ``"csv"``, ``"text"`` (delimited, no quotes, backslash escapes: PostgreSQL's
        text format), ``"jsonl"`` (one JSON object per row) or ``"parquet"``.
    :param header: a first line naming the columns (csv and text).
    :param delimiter: one ASCII character; default ``,`` for csv, tab for text.
    :param compression: ``"gzip"``, or ``None``: gzip when ``path`` ends in ``.gz`` (before any
        ``.gpg``), else none. Not for Parquet, which compresses its pages itself.
    :param aws_conn_id: AWS connection for ``s3://`` paths (the Amazon provider's S3 hook).
    :param skip_if_empty: write no file when the query returns no row (the result's ``path`` is ``""``).
    :param quote: CSV quote character (doubled inside a quoted value).
    :param quoting: ``"minimal"`` (quote values that need it) or ``"all"`` (every non-NULL value).
    :param line_ending: ``"lf"`` (``\\n``) or ``"crlf"`` (``\\r\\n``), for csv, text and jsonl.
    :param encoding: ``"utf-8"`` or ``"latin-1"`` (csv, text and jsonl).
    :param date_format: PostgreSQL ``to_char`` pattern for ``date`` columns, e.g. ``"DD/MM/YYYY"``.
    :param timestamp_format: ``to_char`` pattern for timestamp columns, e.g. ``"YYYY-MM-DD HH24:MI:SS"``.
    :param number_format: ``to_char`` pattern for numeric, real and double precision columns, e.g. ``"FM999990.00"``.
    :param decimal_separator: written instead of ``.`` in numeric, real and double precision values.
    :param compression_level: gzip level, 1 (fastest, the default) to 9 (smallest).
    :param encrypt_with: encrypt the finished file (after compression) to an OpenPGP public key:
        ``"variable:<name>"``, ``"connection:<conn_id>"`` or the armored key itself.
    :param timestamp: when given, ``_YYYYMMDD_HHMMSS`` of it (UTC) is added to the file name.
    :param multipart_chunk_size: S3 uploads larger than this go in parts of this size.
    :param logger: where progress goes (default: this module's logger).
    """
    check_options(
        format=format,
        delimiter=delimiter,
        quote=quote,
        quoting=quoting,
        line_ending=line_ending,
        encoding=encoding,
        compression=compression,
        compression_level=compression_level,
        encrypt_with=encrypt_with,
        decimal_separator=decimal_separator,
    )
    if format == "parquet":
        with needs("parquet", "format='parquet'"):  # before anything is read or written
            import pyarrow.parquet  # noqa: F401
    logger = logger or log
    final = stamped(path, timestamp) if timestamp is not None else path
    if compression is None and format != "parquet" and _plain_name(final).endswith(".gz"):
        compression = "gzip"
    cert = public_key(encrypt_with) if encrypt_with else None
    columns = describe(conn, query)
    _check_names(columns, format, encoding)
    formatted, columns = _formatted(
        query,
        columns,
        date_format=date_format,
        timestamp_format=timestamp_format,
        number_format=number_format,
        decimal_separator=decimal_separator,
        parquet=format == "parquet",
    )
    destination = _Destination(final, aws_conn_id, multipart_chunk_size)
    progress = _Progress(logger, final)
    try:
        local = destination.temp()
        with conn.transaction():
            if format == "parquet":
                rows = _write_parquet(conn, formatted, columns, local, progress)
            else:
                with open(local, "wb") as handle:
                    sink = _Sink(
                        handle,
                        crlf=line_ending == "crlf",
                        quote=quote.encode() if format == "csv" else None,
                        gzip_level=compression_level if compression == "gzip" else None,
                    )
                    if header and format in DELIMITED:
                        sink.write(_header(columns, format, delimiter, quote, quoting, encoding))
                    rows = _copy_out(
                        conn,
                        formatted,
                        columns,
                        sink,
                        progress,
                        format=format,
                        delimiter=delimiter,
                        quote=quote,
                        quoting=quoting,
                        encoding=encoding,
                    )
                    sink.close()
        if rows == 0 and skip_if_empty:
            logger.info("extract %s: no rows; no file written (skip_if_empty)", final)
            return WriteResult(path="", rows=0, bytes=0)
        if cert is not None:
            local = _encrypt(destination, local, cert)
        size = destination.publish(local)
    except psycopg.errors.UntranslatableCharacter as exc:
        raise _not_encodable(conn, formatted, columns, encoding) from exc
    finally:
        destination.discard()
    progress.done(rows, size)
    return WriteResult(path=final, rows=rows, bytes=size)


def _plain_name(path: str) -> str:
    name = path.lower()
    for suffix in (".gpg", ".pgp", ".asc"):
        name = name.removesuffix(suffix)
    return name


def _check_names(columns: list[_Column], format: str, encoding: str) -> None:
    names = [c.name for c in columns]
    if not names:
        raise CampaignError("the query returns no column; select at least one.")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CampaignError(
            f"the query returns duplicate column names {dupes}; give each column of the file its own name."
        )
    if encoding != "utf-8" and format != "parquet":
        for name in names:
            try:
                name.encode(encoding)
            except UnicodeEncodeError as exc:
                raise CampaignError(
                    f"encoding={encoding!r}: the column name {name!r} has {name[exc.start]!r}, which "
                    f"{encoding} cannot represent; rename the column or use encoding='utf-8'."
                ) from exc


def _header(
    columns: list[_Column], format: str, delimiter: str | None, quote: str, quoting: str, encoding: str
) -> bytes:
    names = [c.name for c in columns]
    if format == "text":
        escaped = [
            n.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
            for n in names
        ]
        if delimiter and delimiter != "\t":
            escaped = [n.replace(delimiter, "\\" + delimiter) for n in escaped]
        return ((delimiter or "\t").join(escaped) + "\n").encode(encoding)
    out = io.StringIO()
    csv.writer(
        out,
        delimiter=delimiter or ",",
        quotechar=quote,
        quoting=csv.QUOTE_ALL if quoting == "all" else csv.QUOTE_MINIMAL,
        lineterminator="\n",
    ).writerow(names)
    return out.getvalue().encode(encoding)


def _copy_out(
    conn: psycopg.Connection,
    query: sql.Composable,
    columns: list[_Column],
    sink: _Sink,
    progress: _Progress,
    *,
    format: str,
    delimiter: str | None,
    quote: str,
    quoting: str,
    encoding: str,
) -> int:
    """COPY the rows out, formatted by PostgreSQL; return how many."""
    options: list[sql.Composable] = [sql.SQL("ENCODING {}").format(sql.Literal(_PG_ENCODING[encoding]))]
    if format == "csv":
        options += [
            sql.SQL("FORMAT csv"),
            sql.SQL("DELIMITER {}").format(sql.Literal(delimiter or ",")),
            sql.SQL("QUOTE {}").format(sql.Literal(quote)),
        ]
        if quoting == "all":
            options.append(sql.SQL("FORCE_QUOTE *"))
    elif format == "text":
        options += [
            sql.SQL("FORMAT text"),
            sql.SQL("DELIMITER {}").format(sql.Literal(delimiter or "\t")),
            sql.SQL("NULL ''"),
        ]
    else:
        # one JSON object per row: JSON text holds no raw control characters, so a CSV COPY
        # with control characters as quote and delimiter writes it verbatim, one per line
        query = sql.SQL("SELECT row_to_json(q)::text FROM ({}) q").format(query)
        options += [sql.SQL("FORMAT csv"), sql.SQL("QUOTE E'\\x01'"), sql.SQL("DELIMITER E'\\x02'")]
    statement = sql.SQL("COPY ({}) TO STDOUT WITH ({})").format(query, sql.SQL(", ").join(options))
    rows = 0
    buffer = bytearray()
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for data in copy:  # one row per message
            buffer += data
            rows += 1
            if len(buffer) >= _BUFFER:
                sink.write(buffer)
                buffer.clear()
                progress.tick(rows)
        sink.write(buffer)
    return rows


_ARROW_TYPES: dict[str, Callable[[Any], Any]] = {
    "bool": lambda pa: pa.bool_(),
    "int2": lambda pa: pa.int16(),
    "int4": lambda pa: pa.int32(),
    "int8": lambda pa: pa.int64(),
    "float4": lambda pa: pa.float32(),
    "float8": lambda pa: pa.float64(),
    "date": lambda pa: pa.date32(),
    "timestamp": lambda pa: pa.timestamp("us"),
    "timestamptz": lambda pa: pa.timestamp("us", tz="UTC"),
    "time": lambda pa: pa.time64("us"),
}


def _arrow_type(pa: Any, column: _Column) -> Any:
    if column.type == "numeric" and column.precision:
        return pa.decimal128(column.precision, column.scale or 0)
    return _ARROW_TYPES.get(column.type or "", lambda pa: pa.string())(pa)


class _CopyReader(io.RawIOBase):
    """A COPY TO STDOUT read as a binary file (for pyarrow's streaming CSV reader); counts the rows."""

    def __init__(self, copy: Any) -> None:
        self._rows = iter(copy)
        self._buffer = bytearray()
        self._done = False
        self.rows = 0

    def readable(self) -> bool:
        return True

    def empty(self) -> bool:
        """True when the COPY has no row at all."""
        self._fill(1)
        return not self._buffer

    def readinto(self, target: Any) -> int:
        want = len(target)
        buffer = self._buffer
        self._fill(want)
        size = min(want, len(buffer))
        target[:size] = buffer[:size]
        del buffer[:size]
        return size

    def _fill(self, want: int) -> None:
        while len(self._buffer) < want and not self._done:
            try:
                self._buffer += next(self._rows)  # one row per message
                self.rows += 1
            except StopIteration:
                self._done = True


def _write_parquet(
    conn: psycopg.Connection, query: sql.Composable, columns: list[_Column], local: str, progress: _Progress
) -> int:
    """COPY the rows out as CSV and let pyarrow parse them into typed batches, one row group each.

    PostgreSQL's text output of the native types (ISO dates with DateStyle ISO, shortest exact
    floats, ``t``/``f``) is what pyarrow's CSV reader parses; an unquoted empty field is NULL and a
    quoted one an empty string, as COPY writes them.
    """
    with needs("parquet", "format='parquet'"):
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

    schema = pa.schema([pa.field(c.name, _arrow_type(pa, c)) for c in columns])
    statement = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(query)
    rows = 0
    with _settings(conn, DateStyle="ISO, YMD", extra_float_digits="3"):
        with conn.cursor() as cur, cur.copy(statement) as copy, pq.ParquetWriter(local, schema) as writer:
            reader = _CopyReader(copy)
            if reader.empty():
                return 0  # the writer leaves a file with the schema and no row group
            try:
                batches = pcsv.open_csv(
                    reader,
                    read_options=pcsv.ReadOptions(column_names=schema.names, block_size=PARQUET_BLOCK),
                    parse_options=pcsv.ParseOptions(newlines_in_values=True),
                    convert_options=pcsv.ConvertOptions(
                        column_types={f.name: f.type for f in schema},
                        true_values=["t"],
                        false_values=["f"],
                        null_values=[""],
                        strings_can_be_null=True,
                        quoted_strings_can_be_null=False,
                    ),
                )
                for batch in batches:
                    writer.write_batch(batch)
                    rows += batch.num_rows
                    progress.tick(rows)
            except pa.ArrowInvalid as exc:
                raise CampaignError(
                    f"format='parquet': a value does not fit its column's Parquet type ({exc}). Cast that "
                    "column to text (or another type) with an expr in columns. Nothing was written."
                ) from exc
    return rows


@contextmanager
def _settings(conn: psycopg.Connection, **settings: str) -> Iterator[None]:
    """Set session settings for the current transaction, and put the previous values back after."""
    previous = {
        name: conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]  # type: ignore[index]
        for name in settings
    }
    for name, value in settings.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))
    try:
        yield
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            for name, value in previous.items():
                conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def _encrypt(destination: _Destination, plain: str, cert: Any) -> str:
    """Encrypt ``plain`` (streamed, binary OpenPGP) into a new temporary file; return it."""
    with needs("pgp", "encrypt_with"):
        import pysequoia

    sealed = destination.temp(".gpg")
    pysequoia.encrypt_file(input=plain, output=sealed, recipients=[cert], armor=False)
    os.unlink(plain)
    return sealed


def _not_encodable(
    conn: psycopg.Connection, query: sql.Composable, columns: list[_Column], encoding: str
) -> CampaignError:
    """Find the first value ``encoding`` cannot represent and say where it is."""
    values = sql.SQL(", ").join(
        sql.SQL("({}, s.{}::text)").format(sql.Literal(c.name), sql.Identifier(c.name)) for c in columns
    )
    found = conn.execute(
        sql.SQL(
            "SELECT s.{n}, v.c, v.t FROM (SELECT row_number() OVER () AS {n}, q.* FROM ({q}) q) s"
            " CROSS JOIN LATERAL (VALUES {values}) v(c, t) WHERE v.t ~ {pattern} ORDER BY s.{n} LIMIT 1"
        ).format(n=sql.Identifier(_ROW_NUMBER), q=query, values=values, pattern=sql.Literal(_NOT_LATIN1))
    ).fetchone()
    if found is None:
        return CampaignError(
            f"encoding={encoding!r}: a value cannot be represented in {encoding}; use encoding='utf-8'. "
            "Nothing was written."
        )
    row, column, value = found
    char = next(ch for ch in value if ord(ch) > 0xFF)
    return CampaignError(
        f"encoding={encoding!r}: row {row}, column {column!r} holds {char!r} (U+{ord(char):04X}) in {value[:60]!r}, "
        f"which {encoding} cannot represent. Use encoding='utf-8', or replace the character with an expression "
        f"in columns (e.g. translate({column}, '{char}', '?')). Nothing was written."
    )
