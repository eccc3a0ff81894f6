"""ExtractFileOperator: write a population (or a query) to a CSV, text, JSON Lines or Parquet file."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from airflow_campaign import options as opt
from airflow_campaign import sqlcheck
from airflow_campaign.errors import CampaignError
from airflow_campaign.extract import (
    Compression,
    Encoding,
    FileFormat,
    LineEnding,
    Quoting,
    check_options,
    describe,
    parse_order,
    write_query,
)
from airflow_campaign.operators.base import CampaignBaseOperator, sql_errors
from airflow_campaign.population import Population

_COLUMN_KEYS = ("name", "expr", "format")


def run_time(context: Any) -> dt.datetime:
    """The DAG run's logical date, or when a run without one was triggered: the same for every try."""
    when = context.get("logical_date")
    if when is None:
        dag_run = context.get("dag_run")
        when = getattr(dag_run, "run_after", None) or getattr(dag_run, "start_date", None)
    return when or dt.datetime.now(dt.timezone.utc)


def _column_specs(columns: Any) -> list[dict[str, Any]] | None:
    """``columns`` as ``[{name, expr?, format?}]``; raise on a malformed entry (None: every column)."""
    if columns is None:
        return None
    if isinstance(columns, (str, Mapping)) or not isinstance(columns, Sequence):
        raise CampaignError(
            f"columns={columns!r}: give a list of column names and/or {{'name': ..., 'expr': ..., "
            "'format': ...}} dicts."
        )
    specs = []
    for i, entry in enumerate(columns):
        spec = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise CampaignError(
                f"columns[{i}]={entry!r}: give a column name, or a dict with a 'name' and optionally "
                "'expr' (SQL over the source's columns) and 'format' (a to_char pattern)."
            )
        unknown = sorted(set(spec) - set(_COLUMN_KEYS))
        if unknown:
            raise CampaignError(f"columns[{i}]: unknown key(s) {unknown}; a column has {list(_COLUMN_KEYS)}.")
        specs.append(dict(spec))
    names = [s["name"] for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CampaignError(f"columns: the file would have duplicate columns {dupes}; name each one once.")
    if not specs:
        raise CampaignError("columns=[]: name at least one column, or leave columns out for all of them.")
    return specs


class ExtractFileOperator(CampaignBaseOperator):
    """Write a population, or the rows of a SELECT, to a file: local or ``s3://``.

    CSV, text and JSON Lines are formatted by PostgreSQL (``COPY … TO STDOUT``) and compressed
    as they stream; Parquet is written one batch at a time from a server-side cursor. Memory
    stays flat in the row count. The file is written under a temporary name and appears under
    its final name only when complete; a failed try leaves the destination as it was.

    :param path: local path or ``s3://bucket/key`` (templated), e.g.
        ``"/data/out/newsletter_{{ ds_nodash }}.csv.gz"``.
    :param population: the population to write (XComArg, dict, Population, list of dicts or
        DataFrame). Give this or ``sql``.
    :param sql: a SELECT whose rows to write (templated), instead of a population; checked to be
        one SELECT that reads only.
    :param format: ``"csv"``, ``"text"``, ``"jsonl"`` or ``"parquet"``.
    :param columns: the file's columns, in order: source column names, or
        ``{"name": ..., "expr": SQL, "format": to_char pattern}`` dicts (templated); each ``expr``
        is checked to be one SQL expression. Default: every column.
    :param parameters: values for ``%(name)s`` placeholders in ``sql`` and the columns' ``expr``
        (one dict for all of them; a literal ``%`` is then written ``%%``).
    :param sort: ``["column", "other DESC"]``: the rows' order (by file or source columns).
    :param header: a first line with the column names (csv and text).
    :param delimiter: one ASCII character; default ``,`` (csv) or tab (text).
    :param quote: the CSV quote character.
    :param quoting: ``"minimal"`` or ``"all"`` (quote every non-empty value).
    :param line_ending: ``"lf"`` or ``"crlf"``.
    :param encoding: ``"utf-8"`` or ``"latin-1"``.
    :param date_format: ``to_char`` pattern for date columns, e.g. ``"DD/MM/YYYY"``.
    :param timestamp_format: ``to_char`` pattern for timestamp columns.
    :param number_format: ``to_char`` pattern for numeric, real and double precision columns.
    :param decimal_separator: written in place of ``.`` in those number columns.
    :param compression: ``"gzip"``, or ``None`` (gzip when ``path`` ends in ``.gz``).
    :param compression_level: gzip level from 1 (fastest) to 9 (smallest).
    :param encrypt_with: OpenPGP-encrypt the file to a public key: ``"variable:<name>"``,
        ``"connection:<conn_id>"`` or the armored key (templated).
    :param timestamp_in_name: add ``_YYYYMMDD_HHMMSS`` (the run's logical date, UTC) to the file name.
    :param skip_if_empty: write no file when there is no row (``path`` is then ``""``).
    :param aws_conn_id: AWS connection for ``s3://`` paths.
    """

    template_fields: Sequence[str] = (
        "population",
        "sql",
        "path",
        "columns",
        "sort",
        "encrypt_with",
        "date_format",
        "timestamp_format",
        "number_format",
        "parameters",
    )
    template_ext: Sequence[str] = (".sql",)
    ui_color = "#e8f4e4"

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "path": opt.text,
        "sql": opt.optional(opt.text),
        "header": opt.flag,
        "compression_level": opt.integer(0, 9),
        "timestamp_in_name": opt.flag,
        "skip_if_empty": opt.flag,
        "aws_conn_id": opt.optional(opt.name),
    }

    def __init__(
        self,
        *,
        path: str,
        population: Any = None,
        sql: str | None = None,
        format: FileFormat = "csv",
        columns: Sequence[str | dict[str, Any]] | None = None,
        sort: Sequence[str] | str | None = None,
        header: bool = True,
        delimiter: str | None = None,
        quote: str = '"',
        quoting: Quoting = "minimal",
        line_ending: LineEnding = "lf",
        encoding: Encoding = "utf-8",
        date_format: str | None = None,
        timestamp_format: str | None = None,
        number_format: str | None = None,
        decimal_separator: str = ".",
        compression: Compression | None = None,
        compression_level: int = 1,
        encrypt_with: str | None = None,
        timestamp_in_name: bool = True,
        skip_if_empty: bool = True,
        aws_conn_id: str | None = "aws_default",
        parameters: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (population is None) == (not sql):
            raise CampaignError(
                "ExtractFileOperator writes either population= (an upstream task's output) or sql= "
                "(a SELECT); give exactly one of them."
            )
        check_options(
            format=format,
            delimiter=delimiter,
            quote=quote,
            quoting=quoting,
            line_ending=line_ending,
            encoding=encoding,
            compression=compression,
            compression_level=compression_level,
            encrypt_with=None if opt.templated(encrypt_with) else encrypt_with,
            decimal_separator=decimal_separator,
        )
        if isinstance(columns, (list, tuple)):
            _column_specs(columns)
        sort_list = [sort] if isinstance(sort, str) else sort
        for entry in sort_list or []:
            parse_order(entry)
        self.path = path
        self.population = population
        self.sql = sql
        self.format = format
        self.columns = columns
        self.sort = sort_list
        self.header = header
        self.delimiter = delimiter
        self.quote = quote
        self.quoting = quoting
        self.line_ending = line_ending
        self.encoding = encoding
        self.date_format = date_format
        self.timestamp_format = timestamp_format
        self.number_format = number_format
        self.decimal_separator = decimal_separator
        self.compression = compression
        self.compression_level = compression_level
        self.encrypt_with = encrypt_with
        self.timestamp_in_name = timestamp_in_name
        self.skip_if_empty = skip_if_empty
        self.aws_conn_id = aws_conn_id
        self.parameters = parameters
        sqlcheck.check_at_parse(self.sql_options(), parameters, self.template_ext)

    def sql_options(self) -> list[tuple[sqlcheck.Check, str, Any]]:
        """``sql`` and each column's ``expr``."""
        out: list[tuple[sqlcheck.Check, str, Any]] = [(sqlcheck.query, "sql", self.sql)]
        for i, spec in enumerate(self.columns if isinstance(self.columns, (list, tuple)) else []):
            if isinstance(spec, Mapping):
                out.append((sqlcheck.expression, f"columns[{i}].expr", spec.get("expr")))
        return out

    def execute(self, context: Any) -> dict[str, Any]:
        when = run_time(context) if self.timestamp_in_name else None
        specs = _column_specs(self.columns)
        sqlcheck.check_at_run(self.sql_options(), self.parameters)

        def work(conn: psycopg.Connection) -> dict[str, Any]:
            source, available = self._source(conn)
            select = self._select(conn, source, available, specs)
            with sql_errors(self._user_sql(specs)):
                result = write_query(
                    conn,
                    select,
                    self.path,
                    format=self.format,
                    header=self.header,
                    delimiter=self.delimiter,
                    compression=self.compression,
                    aws_conn_id=self.aws_conn_id,
                    skip_if_empty=self.skip_if_empty or self.on_empty != "continue",
                    quote=self.quote,
                    quoting=self.quoting,
                    line_ending=self.line_ending,
                    encoding=self.encoding,
                    date_format=self.date_format,
                    timestamp_format=self.timestamp_format,
                    number_format=self.number_format,
                    decimal_separator=self.decimal_separator,
                    compression_level=self.compression_level,
                    encrypt_with=self.encrypt_with,
                    timestamp=when,
                    logger=self.log,
                )
            if not result.rows:
                self.check_empty(Population.inline([]), "extract")
            return dataclasses.asdict(result)

        out = self.run_in_transaction(work)
        self.log.info(
            "%s: %d rows, %d bytes to %s", self.task_id, out["rows"], out["bytes"], out["path"] or "(no file)"
        )
        return out

    def _source(self, conn: psycopg.Connection) -> tuple[sql.Composable, list[str]]:
        """The relation to read (aliased ``p`` by the caller) and its column names."""
        if self.population is not None:
            ((_, relation),) = self.inputs(conn, [self.population], "population")
            with sql_errors("population"):
                names = [c.name for c in describe(conn, sql.SQL("SELECT * FROM {}").format(relation))]
            return relation, names
        query = sqlcheck.query("sql", self.sql, self.parameters)
        relation = sql.SQL("({})").format(query)
        with sql_errors("sql"):
            names = [c.name for c in describe(conn, query)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise CampaignError(
                f"sql: the SELECT returns duplicate column names {dupes}; give each column its own name "
                "(... AS other_name)."
            )
        return relation, names

    def _select(
        self,
        conn: psycopg.Connection,
        source: sql.Composable,
        available: list[str],
        specs: list[dict[str, Any]] | None,
    ) -> sql.Composable:
        """``SELECT <columns> FROM <source> p [ORDER BY …]``, each expression checked by PostgreSQL."""
        specs = specs if specs is not None else [{"name": n} for n in available]
        plain = [s["name"] for s in specs if not s.get("expr")]
        unknown = [n for n in plain if n not in available]
        if unknown:
            raise CampaignError(
                f"columns: unknown column(s) {unknown}; available: {available}. Carry them in the population "
                "upstream (e.g. QueryOperator columns=, EnrichmentOperator), or compute them with "
                "{'name': ..., 'expr': ...}."
            )
        items: list[sql.Composable] = []
        values: dict[str, sql.Composable] = {}
        for i, spec in enumerate(specs):
            value: sql.Composable
            if spec.get("expr"):
                value = sqlcheck.expression(f"columns[{i}].expr", spec["expr"], self.parameters)
            else:
                value = sql.SQL("p.{}").format(sql.Identifier(spec["name"]))
            values[spec["name"]] = value
            if spec.get("format"):
                value = sql.SQL("to_char({}, {})").format(value, sql.Literal(str(spec["format"])))
            if spec.get("expr") or spec.get("format"):
                with sql_errors(f"columns[{i}] ({spec['name']!r})"):
                    conn.execute(sql.SQL("SELECT {} FROM {} p LIMIT 0").format(value, source))
            items.append(sql.SQL("{} AS {}").format(value, sql.Identifier(spec["name"])))
        query = sql.SQL("SELECT {} FROM {} p").format(sql.SQL(", ").join(items), source)
        order = self._order(values, available)
        return sql.Composed([query, order]) if order else query

    def _order(self, outputs: dict[str, sql.Composable], available: list[str]) -> sql.Composable | None:
        """ORDER BY the file's columns (by value, before any format) or the source's."""
        if not self.sort:
            return None
        keys: list[sql.Composable] = []
        unknown = []
        for entry in self.sort:
            name, rest = parse_order(entry)
            if name in outputs:
                key: sql.Composable = outputs[name]
            elif name in available:
                key = sql.SQL("p.{}").format(sql.Identifier(name))
            else:
                unknown.append(name)
                continue
            keys.append(sql.SQL("{} {}").format(key, sql.SQL(rest)) if rest else key)
        if unknown:
            raise CampaignError(
                f"sort: unknown column(s) {unknown}; sort by the file's columns {list(outputs)} or the source's "
                f"{available}."
            )
        return sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(keys))

    def _user_sql(self, specs: list[dict[str, Any]] | None) -> str:
        """The option(s) holding SQL the user wrote, for error messages."""
        given = (["sql"] if self.sql else []) + (
            ["columns"] if any(s.get("expr") for s in specs or []) else []
        )
        return "/".join(given) or "population"
