"""Targeting operators: build populations with set-based SQL in the campaign database."""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import psycopg
from psycopg import sql

from airflow_campaign import options as opt
from airflow_campaign import sqlcheck
from airflow_campaign.errors import CampaignError
from airflow_campaign.files import FORMATS, LINE_COLUMN, infer_format, load_raw
from airflow_campaign.hooks.campaign import CampaignHook, qualified
from airflow_campaign.operators.base import (
    CampaignBaseOperator,
    check_choice,
    input_labels,
    literal_choices,
    run_identity,
    sql_errors,
)
from airflow_campaign.population import INPUT_KINDS, Population
from airflow_campaign.resources import Resource

_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")


def _on_columns(option: str, value: Any) -> list[str] | None:
    """``on``: the columns compared; an empty list is "not given" (the key)."""
    return opt.names(option, value) or None


def _joins(option: str, value: Any) -> list[dict[str, Any]]:
    """EnrichmentOperator's ``joins``: dicts, each with table, alias and on, and a known kind."""
    joins = opt.list_of_mappings(option, value)
    for i, join in enumerate(joins):
        missing = [k for k in ("table", "alias", "on") if not join.get(k)]
        if missing:
            raise CampaignError(f"{option}[{i}]: missing {missing}; each join needs table, alias and on.")
        check_choice(f"{option}[{i}].kind", join.get("kind", "optional"), literal_choices(JoinKind))
    return joins


def _idents(names: Sequence[str], alias: str | None = None) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, n) if alias else sql.Identifier(n) for n in names)


def _key_is_unique(conn: psycopg.Connection, table: str, key: str) -> bool:
    """True when ``key`` alone is the primary key, or NOT NULL with a (full, valid) unique index."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a"
        " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indisvalid AND i.indpred IS NULL"
        " AND i.indnatts = 1 AND a.attnotnull AND a.attname = %s)",
        (sql.SQL(".").join(sql.Identifier(p) for p in table.split(".", 1)).as_string(conn), key),
    ).fetchone()
    return bool(row and row[0])


def _same_resource(pops: Sequence[Population], labels: Sequence[str]) -> None:
    first = pops[0]
    for label, pop in zip(labels[1:], pops[1:], strict=True):
        if (pop.resource, pop.key) != (first.resource, first.key):
            raise CampaignError(
                f"{label} is a population of resource {pop.resource!r} (key {pop.key!r}), not "
                f"{first.resource!r} (key {first.key!r}) like {labels[0]}; combine populations of one "
                "resource, or compare by columns with on=[...]."
            )


def _check_columns(option: str, names: Sequence[str], available: Sequence[str]) -> None:
    unknown = [n for n in names if n not in available]
    if unknown:
        raise CampaignError(f"{option}: unknown column(s) {unknown}; available: {list(available)}.")


class QueryOperator(CampaignBaseOperator):
    """Select profiles (or rows of any resource) into a population.

    :param resource: ``"profiles"`` (default) or ``"schema.table"`` of a user table.
    :param key: key column of the resource (default ``id``).
    :param where: SQL condition on the resource's columns (templated), e.g.
        ``"country = 'FR' AND birth_date IS NOT NULL"``.
    :param columns: resource columns to carry in the population (the key is always included).
    :param additional: extra SQL select list, e.g. ``"date_part('year', birth_date) AS birth_year"``.
    :param distinct: drop duplicate rows (skipped when the key is already unique in the resource,
        since every row is then distinct).
    :param limit: keep at most this many rows (ordered by ``order_by``, then the key).
    :param order_by: SQL ORDER BY list used with ``limit``, over the resource's columns (alias
        ``r``), e.g. ``"loyalty_points DESC"``. With ``sql=``, or when ``distinct`` applies to a
        resource whose key is not unique, it orders the selected columns instead.
    :param sql: a whole SELECT instead of ``where``/``columns``; it must return the key column.
    :param parameters: values for ``%(name)s`` placeholders in ``sql``, ``where``, ``additional``
        and ``order_by`` (a literal ``%`` is then written ``%%``), e.g.
        ``where="country = %(country)s", parameters={"country": "{{ dag_run.conf['country'] }}"}``.

    Each SQL option is checked alone: ``where`` is one expression, ``additional`` a select list,
    ``order_by`` an ORDER BY list and ``sql`` one SELECT that reads only.
    """

    template_fields: Sequence[str] = (
        "resource",
        "where",
        "columns",
        "additional",
        "sql",
        "parameters",
        "order_by",
    )
    template_ext: Sequence[str] = (".sql",)

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "resource": opt.name,
        "key": opt.optional(opt.name),
        "where": opt.optional(opt.text),
        "columns": opt.defaulted(opt.names, list),
        "additional": opt.optional(opt.text),
        "distinct": opt.flag,
        "limit": opt.optional(opt.integer(0)),
        "order_by": opt.optional(opt.text),
        "sql": opt.optional(opt.text),
        "parameters": opt.optional(opt.mapping),
    }

    def __init__(
        self,
        *,
        resource: str = "profiles",
        key: str | None = None,
        where: str | None = None,
        columns: Sequence[str] | None = None,
        additional: str | None = None,
        distinct: bool = True,
        limit: int | None = None,
        order_by: str | None = None,
        sql: str | None = None,
        parameters: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if sql and (where or columns or additional):
            raise CampaignError(
                "sql= is a whole SELECT: do not combine it with where=, columns= or additional=."
            )
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise CampaignError(f"limit={limit!r}: give a whole number >= 0, or None for no limit.")
        self.resource = resource
        self.key = key
        self.where = where
        self.columns = opt.unless_templated(columns, lambda v: list(v or []))
        self.additional = additional
        self.distinct = distinct
        self.limit = limit
        self.order_by = order_by
        self.sql = sql
        self.parameters = parameters
        sqlcheck.check_at_parse(self.sql_options(), parameters, self.template_ext)

    def sql_options(self) -> list[tuple[sqlcheck.Check, str, Any]]:
        """The SQL options, each with its check: run at DAG-parse time and again in execute()."""
        return [
            (sqlcheck.query, "sql", self.sql),
            (sqlcheck.expression, "where", self.where),
            (sqlcheck.select_list, "additional", self.additional),
            (sqlcheck.order_list, "order_by", self.order_by),
        ]

    def user_sql_option(self) -> str:
        """The option(s) holding user-written SQL, with the value when there is only one."""
        given = [
            (o, getattr(self, o)) for o in ("sql", "where", "additional", "order_by") if getattr(self, o)
        ]
        if len(given) == 1:
            return f"{given[0][0]}={given[0][1]!r}"
        return "/".join(o for o, _ in given) or "sql"

    def select_statement(self, conn: psycopg.Connection, resource: Resource, context: Any) -> sql.Composable:
        """The SELECT that defines this query's population."""
        key = sql.Identifier(resource.key)
        if self.sql:
            query: sql.Composable = sql.SQL(
                "SELECT DISTINCT * FROM ({}) q" if self.distinct else "SELECT * FROM ({}) q"
            ).format(sqlcheck.query("sql", self.sql, self.parameters))
            return self._limited(query, key)
        columns = self.selected_columns(resource)
        names = [resource.key] + [c for c in columns if c != resource.key]
        select_list: list[sql.Composable] = [_idents(names, "r")]
        if self.additional:
            select_list.append(sqlcheck.select_list("additional", self.additional, self.parameters))
        conditions = self.conditions(conn, resource, context)
        distinct = self.distinct and not _key_is_unique(conn, resource.table, resource.key)
        query = sql.SQL("SELECT {distinct}{select} FROM {table} r{where}").format(
            distinct=sql.SQL("DISTINCT " if distinct else ""),
            select=sql.SQL(", ").join(select_list),
            table=resource.ident,
            where=sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL(""),
        )
        if distinct:
            return self._limited(query, key)
        return self._limited(query, sql.SQL("r.{}").format(key), in_place=True)

    def selected_columns(self, resource: Resource) -> list[str]:
        """The resource columns the population carries besides the key."""
        resource.check_columns("columns", self.columns)
        return self.columns

    def conditions(self, conn: psycopg.Connection, resource: Resource, context: Any) -> list[sql.Composable]:
        return [sqlcheck.expression("where", self.where, self.parameters)] if self.where else []

    def _limited(
        self, query: sql.Composable, tiebreak: sql.Composable, *, in_place: bool = False
    ) -> sql.Composable:
        """``query`` cut to ``limit`` rows in ``order_by`` order, ties broken by the key.

        ``in_place`` orders the query itself (``order_by`` may then name any column of the
        resource, alias ``r``); otherwise the query's result is ordered by its own columns.
        """
        if self.limit is None:
            return query
        order = [sqlcheck.order_list("order_by", self.order_by, self.parameters)] if self.order_by else []
        clause = sql.SQL(" ORDER BY {} LIMIT {}").format(
            sql.SQL(", ").join([*order, tiebreak]), sql.Literal(self.limit)
        )
        if in_place:
            return sql.Composed([query, clause])
        return sql.SQL("SELECT * FROM ({}) l{}").format(query, clause)

    def execute(self, context: Any) -> dict[str, Any]:
        sqlcheck.check_at_run(self.sql_options(), self.parameters)

        def work(conn: psycopg.Connection) -> Population:
            resource = Resource.resolve(conn, self.resource, self.key)
            select = self.select_statement(conn, resource, context)
            pop = self.save(
                conn,
                context,
                select,
                key=resource.key,
                resource=resource.name,
                option=self.user_sql_option(),
            )
            self.after_save(conn, pop, resource, context)
            self.check_empty(pop)
            return pop

        pop = self.run_in_transaction(work)
        self.log.info("%s: %d rows of %s into %s", self.task_id, pop.count, pop.resource, pop.table)
        return pop.to_dict()

    def after_save(self, conn: psycopg.Connection, pop: Population, resource: Resource, context: Any) -> None:
        """Hook for subclasses, run in the same transaction as the save."""


IncrementalMode = Literal["exclude", "watermark"]


class IncrementalQueryOperator(QueryOperator):
    """A query that remembers what it returned in earlier runs of the same task.

    :param mode: ``"exclude"`` drops every row returned by an earlier run of this task;
        ``"watermark"`` keeps rows whose ``date_column`` is after the stored watermark, then
        moves the watermark to the newest date returned.
    :param date_column: resource column compared with the watermark (mode ``"watermark"``).
    :param initial_watermark: lower bound of the first run (ISO timestamp; default: no bound).

    In mode ``"watermark"`` rows whose ``date_column`` is NULL are never returned, and a
    ``limit`` takes the earliest rows by ``date_column`` plus every row sharing the last date
    taken (so the result may exceed ``limit`` by the ties); the next run starts after that
    date, so no row is skipped. ``order_by`` cannot be combined with a limit in this mode.

    A retried try of the same run sees the same history as the first try did. Inspect, edit
    or reset the state with ``airflow-campaign incremental show|set|reset``.
    All other parameters are those of :class:`QueryOperator`.
    """

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "date_column": opt.optional(opt.name),
        "initial_watermark": opt.optional(opt.timestamp),
    }

    def __init__(
        self,
        *,
        mode: IncrementalMode = "exclude",
        date_column: str | None = None,
        initial_watermark: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("mode", mode, literal_choices(IncrementalMode))
        if mode == "watermark" and not date_column:
            raise CampaignError("mode='watermark' needs date_column= naming a timestamp or date column.")
        if self.sql:
            raise CampaignError("IncrementalQueryOperator works on a resource: use where=, not sql=.")
        if mode == "watermark" and self.limit is not None and self.order_by:
            raise CampaignError(
                f"order_by={self.order_by!r}: in mode 'watermark' a limit takes the earliest rows by "
                "date_column, so that the watermark never passes rows not yet returned; leave order_by out."
            )
        self.mode = mode
        self.date_column = date_column
        self.initial_watermark = initial_watermark
        self._lower: Any = None

    def conditions(self, conn: psycopg.Connection, resource: Resource, context: Any) -> list[sql.Composable]:
        conds = super().conditions(conn, resource, context)
        ident = run_identity(context)
        if self.mode == "exclude":
            conn.execute(
                "DELETE FROM campaign.incremental_history WHERE dag_id = %s AND task_id = %s AND run_id = %s",
                (ident["dag_id"], ident["task_id"], ident["run_id"]),
            )
            conds.append(
                sql.SQL(
                    "NOT EXISTS (SELECT 1 FROM campaign.incremental_history h WHERE h.dag_id = {} "
                    "AND h.task_id = {} AND h.member_key = r.{}::text)"
                ).format(
                    sql.Literal(ident["dag_id"]), sql.Literal(ident["task_id"]), sql.Identifier(resource.key)
                )
            )
            return conds
        assert self.date_column
        resource.check_columns("date_column", [self.date_column])
        row = conn.execute(
            "SELECT watermark, previous_watermark, last_run_id FROM campaign.incremental_state"
            " WHERE dag_id = %s AND task_id = %s FOR UPDATE",
            (ident["dag_id"], ident["task_id"]),
        ).fetchone()
        if row is None:
            lower = self.initial_watermark
        else:
            lower = row[1] if row[2] == ident["run_id"] else row[0]
        self._lower = lower
        # a row without a date can never be placed against the watermark: it is never returned
        conds.append(sql.SQL("r.{} IS NOT NULL").format(sql.Identifier(self.date_column)))
        if lower is not None:
            conds.append(
                sql.SQL("r.{} > {}::timestamptz").format(
                    sql.Identifier(self.date_column), sql.Literal(str(lower))
                )
            )
        return conds

    def _limited(
        self, query: sql.Composable, tiebreak: sql.Composable, *, in_place: bool = False
    ) -> sql.Composable:
        if self.mode != "watermark" or self.limit is None:
            return super()._limited(query, tiebreak, in_place=in_place)
        # the earliest rows by date, and every row sharing the last date taken (WITH TIES): the
        # next run starts after that date, so a row cut by the limit is never skipped
        date = sql.SQL("{}.{}").format(
            sql.SQL("r" if in_place else "l"), sql.Identifier(self.date_column or "")
        )
        clause = sql.SQL(" ORDER BY {} FETCH FIRST {} ROWS WITH TIES").format(date, sql.Literal(self.limit))
        if in_place:
            return sql.Composed([query, clause])
        return sql.SQL("SELECT * FROM ({}) l{}").format(query, clause)

    def selected_columns(self, resource: Resource) -> list[str]:
        columns = super().selected_columns(resource)
        if self.mode != "watermark" or not self.date_column:
            return columns
        resource.check_columns("date_column", [self.date_column])
        return columns if self.date_column in columns else [*columns, self.date_column]

    def after_save(self, conn: psycopg.Connection, pop: Population, resource: Resource, context: Any) -> None:
        ident = run_identity(context)
        table = qualified(pop.table or "")
        if self.mode == "exclude":
            conn.execute(
                sql.SQL(
                    "INSERT INTO campaign.incremental_history (dag_id, task_id, member_key, run_id) "
                    "SELECT {}, {}, {}::text, {} FROM {} ON CONFLICT DO NOTHING"
                ).format(
                    sql.Literal(ident["dag_id"]),
                    sql.Literal(ident["task_id"]),
                    sql.Identifier(resource.key),
                    sql.Literal(ident["run_id"]),
                    table,
                )
            )
            return
        newest = conn.execute(
            sql.SQL("SELECT max({})::timestamptz FROM {}").format(
                sql.Identifier(self.date_column or ""), table
            )
        ).fetchone()
        watermark = newest[0] if newest and newest[0] is not None else self._lower
        conn.execute(
            "INSERT INTO campaign.incremental_state AS s (dag_id, task_id, watermark, previous_watermark, last_run_id)"
            " VALUES (%s, %s, %s::timestamptz, %s::timestamptz, %s)"
            " ON CONFLICT (dag_id, task_id) DO UPDATE SET watermark = EXCLUDED.watermark,"
            " previous_watermark = EXCLUDED.previous_watermark, last_run_id = EXCLUDED.last_run_id, updated_at = now()",
            (ident["dag_id"], ident["task_id"], watermark, self._lower, ident["run_id"]),
        )
        self.log.info("%s: watermark %s -> %s", self.task_id, self._lower, watermark)


class ReadAudienceOperator(CampaignBaseOperator):
    """Read a saved audience (list or file) as a population of its resource.

    :param audience: the audience's name (templated).
    :param columns: resource columns to carry (the key is always included).
    :param aws_conn_id: AWS connection for file audiences stored on s3://.
    """

    template_fields: Sequence[str] = ("audience", "columns")

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "audience": opt.name,
        "columns": opt.defaulted(opt.names, list),
        "aws_conn_id": opt.optional(opt.name),
    }

    def __init__(
        self,
        *,
        audience: str,
        columns: Sequence[str] | None = None,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.audience = audience
        self.columns = opt.unless_templated(columns, lambda v: list(v or []))
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        def work(conn: psycopg.Connection) -> Population:
            row = conn.execute(
                "SELECT id, type, resource, key_column, file_uri, file_format FROM campaign.audiences WHERE name = %s",
                (self.audience,),
            ).fetchone()
            if row is None:
                known = [
                    r[0] for r in conn.execute("SELECT name FROM campaign.audiences ORDER BY name LIMIT 20")
                ]
                raise CampaignError(f"audience={self.audience!r} does not exist; known audiences: {known}.")
            audience_id, kind, resource_name, key_column, file_uri, file_format = row
            resource = Resource.resolve(conn, resource_name, key_column)
            resource.check_columns("columns", self.columns)
            names = [resource.key] + [c for c in self.columns if c != resource.key]
            key_type = sql.SQL(resource.columns[resource.key])
            if kind == "list":
                source: sql.Composable = sql.SQL(
                    "campaign.audience_members m WHERE m.audience_id = {} AND"
                ).format(sql.Literal(audience_id))
                member: sql.Composable = sql.SQL("m.member_key")
            else:
                raw, file_columns, _ = load_raw(
                    conn, file_uri, format=file_format or infer_format(file_uri), aws_conn_id=self.aws_conn_id
                )
                if key_column not in file_columns:
                    raise CampaignError(
                        f"audience={self.audience!r}: its file {file_uri} has no key column {key_column!r}."
                    )
                source = sql.SQL("{} m WHERE").format(sql.Identifier(raw))
                member = sql.SQL("m.{}").format(sql.Identifier(key_column))
            select = sql.SQL(
                "SELECT {cols} FROM {table} r WHERE r.{key} IN (SELECT {member}::{type} FROM {source} {member} IS NOT NULL)"
            ).format(
                cols=_idents(names, "r"),
                table=resource.ident,
                key=sql.Identifier(resource.key),
                member=member,
                type=key_type,
                source=source,
            )
            pop = self.save(
                conn, context, select, key=resource.key, resource=resource.name, option="audience"
            )
            self.check_empty(pop, f"audience {self.audience!r}")
            return pop

        pop = self.run_in_transaction(work)
        self.log.info("%s: audience %r has %d members", self.task_id, self.audience, pop.count)
        return pop.to_dict()


_MATCH_KEY = "_match_key"
Unmatched = Literal["reject", "keep"]
Rejects = Literal["output", "skip", "fail"]


class LoadFileOperator(CampaignBaseOperator):
    """Load a file (local or s3://; CSV, TSV, JSONL or Parquet, optionally .gz) as a population.

    :param path: local path or ``s3://bucket/key`` (templated, e.g. ``/in/{{ ds_nodash }}.csv``).
    :param format: ``csv``, ``tsv``, ``jsonl`` or ``parquet``; inferred from the extension when None.
    :param columns: the file's columns (needed when a CSV has no header; otherwise a subset check).
    :param types: ``{column: postgres type}``, e.g. ``{"points": "integer"}``; others stay text
        (Parquet columns keep their own types).
    :param header: whether a CSV/TSV file starts with a header line.
    :param delimiter: field delimiter of CSV/TSV (default ``,`` / tab).
    :param encoding: ``utf-8`` (default) or ``latin-1``.
    :param reconcile_on: match rows with the resource: a column name present in both, or
        ``{file_column: resource_column}``. The population then carries the resource's key.
    :param resource: the resource to reconcile with (default ``profiles``).
    :param unmatched: ``"reject"`` (default) or ``"keep"`` rows that match no resource row
        (kept rows have a NULL key).
    :param key: when not reconciling, the file column that identifies a row (default: the first).
    :param rejects: ``"output"`` (default: rejected rows become a second population, XCom
        key ``rejects``), ``"skip"`` (count them, keep only the accepted rows) or ``"fail"``
        (any reject fails the task, nothing is written).
    :param aws_conn_id: AWS connection for s3:// paths.

    Rows are rejected with a reason when a value does not convert to its type (PostgreSQL 16
    or newer), when they match no resource row, or when they match several.
    """

    template_fields: Sequence[str] = ("path", "columns", "reconcile_on", "types")

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "path": opt.text,
        "columns": opt.optional(opt.names),
        "types": opt.defaulted(opt.string_mapping, dict),
        "header": opt.flag,
        "delimiter": opt.optional(opt.delimiter),
        "encoding": opt.text,
        "reconcile_on": opt.optional(opt.name_or_mapping),
        "resource": opt.name,
        "key": opt.optional(opt.name),
        "aws_conn_id": opt.optional(opt.name),
    }

    def __init__(
        self,
        *,
        path: str,
        format: str | None = None,
        columns: Sequence[str] | None = None,
        types: dict[str, str] | None = None,
        header: bool = True,
        delimiter: str | None = None,
        encoding: str = "utf-8",
        reconcile_on: str | dict[str, str] | None = None,
        resource: str = "profiles",
        unmatched: Unmatched = "reject",
        key: str | None = None,
        rejects: Rejects = "output",
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if format is not None:
            check_choice("format", format, FORMATS)
        check_choice("unmatched", unmatched, literal_choices(Unmatched))
        check_choice("rejects", rejects, literal_choices(Rejects))
        self.path = path
        self.format = format
        self.columns = opt.unless_templated(columns, lambda v: list(v) if v else None)
        self.types = opt.unless_templated(types, lambda v: dict(v or {}))
        self.header = header
        self.delimiter = delimiter
        self.encoding = encoding
        self.reconcile_on = reconcile_on
        self.resource = resource
        self.unmatched = unmatched
        self.key = key
        self.rejects = rejects
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        result = self.run_in_transaction(lambda conn: self._load(conn, context))
        pop, rejected, rejects = result
        self.log.info("%s: loaded %d rows from %s, %d rejected", self.task_id, pop.count, self.path, rejected)
        if rejects is not None:
            context["ti"].xcom_push(key="rejects", value=rejects.to_dict())
        return pop.to_dict()

    def reconcile_mapping(self) -> dict[str, str]:
        """``{file_column: resource_column}`` from ``reconcile_on`` (empty when not reconciling)."""
        if not self.reconcile_on:
            return {}
        if isinstance(self.reconcile_on, str):
            return {self.reconcile_on: self.reconcile_on}
        if isinstance(self.reconcile_on, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.reconcile_on.items()
        ):
            return dict(self.reconcile_on)
        raise CampaignError(
            f"reconcile_on={self.reconcile_on!r}: give a column name present in the file and the "
            "resource, or {file_column: resource_column}."
        )

    def _load(self, conn: psycopg.Connection, context: Any) -> tuple[Population, int, Population | None]:
        fmt = self.format or infer_format(self.path)
        raw, file_columns, file_types = load_raw(
            conn,
            self.path,
            format=fmt,
            columns=self.columns,
            header=self.header,
            delimiter=self.delimiter,
            encoding=self.encoding,
            aws_conn_id=self.aws_conn_id,
        )
        wanted = self.columns or file_columns
        _check_columns("types", list(self.types), wanted)
        _check_type_names(conn, "types", self.types)
        types = {c: self.types.get(c) or file_types.get(c) or "text" for c in wanted}
        mapping = self.reconcile_mapping()
        resource: Resource | None = None
        checks = [(c, t) for c, t in types.items() if t != "text"]
        if mapping:
            option = f"reconcile_on={self.reconcile_on!r}"
            _check_columns(option, list(mapping), wanted)
            resource = Resource.resolve(conn, self.resource)
            resource.check_columns(option, list(mapping.values()))
            checks += [
                (fc, resource.columns[rc])
                for fc, rc in mapping.items()
                if resource.columns[rc] != "text" and (fc, resource.columns[rc]) not in checks
            ]
        f = sql.Identifier("f")
        line = sql.Identifier(LINE_COLUMN)
        invalid = [
            (c, sql.SQL("NOT pg_input_is_valid({}.{}, {})").format(f, sql.Identifier(c), sql.Literal(t)))
            for c, t in checks
            if conn.info.server_version >= 160000
        ]
        reasons: list[tuple[sql.Composable, str]] = [(cond, f"invalid {c}") for c, cond in invalid]
        typed = {
            c: sql.SQL("{}.{}::{} AS {}").format(f, sql.Identifier(c), sql.SQL(t), sql.Identifier(c))
            for c, t in types.items()
        }
        source: sql.Composable = sql.SQL("{} f").format(sql.Identifier(raw))
        match_key: sql.Composable = sql.SQL("")
        if resource is not None:
            self._match(conn, raw, mapping, resource, [cond for _, cond in invalid])
            source = sql.SQL("{} f LEFT JOIN file_matches m ON m.line = f.{}").format(
                sql.Identifier(raw), line
            )
            match_key = sql.SQL(", m.key AS {}").format(sql.Identifier(_MATCH_KEY))
            reasons.append((sql.SQL("m.n > 1"), "ambiguous: matches several rows"))
            if self.unmatched == "reject":
                reasons.append((sql.SQL("m.line IS NULL"), "unmatched"))
            key, resource_name = resource.key, resource.name
            select_list = [
                sql.SQL("f.{} AS {}").format(sql.Identifier(_MATCH_KEY), sql.Identifier(key)),
                *(expr for c, expr in typed.items() if c != key),
            ]
        else:
            key = self.key or wanted[0]
            _check_columns("key", [key], wanted)
            resource_name = None
            select_list = list(typed.values())
        reason_expr = (
            sql.SQL("CASE {} END").format(
                sql.SQL(" ").join(sql.SQL("WHEN {} THEN {}").format(c, sql.Literal(r)) for c, r in reasons)
            )
            if reasons
            else sql.SQL("NULL::text")
        )
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE file_checked ON COMMIT DROP AS SELECT f.*{}, {} AS reject_reason FROM {}"
            ).format(match_key, reason_expr, source)
        )
        row = conn.execute("SELECT count(*) FROM file_checked WHERE reject_reason IS NOT NULL").fetchone()
        rejected = int(row[0]) if row else 0
        if rejected and self.rejects == "fail":
            sample = conn.execute(
                sql.SQL(
                    "SELECT {}, reject_reason FROM file_checked WHERE reject_reason IS NOT NULL ORDER BY 1 LIMIT 5"
                ).format(line)
            ).fetchall()
            raise CampaignError(
                f"path={self.path!r}: {rejected} row(s) rejected and rejects='fail' "
                f"(first: {', '.join(f'row {n}: {r}' for n, r in sample)}). Nothing was written; fix the "
                "file, or use rejects='output' to pass the rejects on as a population."
            )
        rejects = None
        if self.rejects == "output":
            rejects = self.save(
                conn,
                context,
                sql.SQL(
                    "SELECT {line}, reject_reason, {cols} FROM file_checked WHERE reject_reason IS NOT NULL"
                ).format(line=line, cols=_idents(wanted)),
                key=LINE_COLUMN,
                resource=None,
                suffix="rejects",
                option="path",
            )
        accepted = sql.SQL(
            "SELECT {} FROM file_checked f WHERE f.reject_reason IS NULL ORDER BY f.{}"
        ).format(sql.SQL(", ").join(select_list), line)
        pop = self.save(conn, context, accepted, key=key, resource=resource_name, option="path")
        self.check_empty(pop, f"file {self.path}")
        return pop, rejected, rejects

    def _match(
        self,
        conn: psycopg.Connection,
        raw: str,
        mapping: dict[str, str],
        resource: Resource,
        invalid: list[sql.Composable],
    ) -> None:
        """``file_matches``: per file line with valid values, its resource key and match count."""
        join_on = sql.SQL(" AND ").join(
            sql.SQL("r.{} = f.{}::{}").format(
                sql.Identifier(rc), sql.Identifier(fc), sql.SQL(resource.columns[rc])
            )
            for fc, rc in mapping.items()
        )
        conditions: list[sql.Composable] = [sql.SQL("NOT ({})").format(c) for c in invalid]
        valid = sql.SQL(" AND ").join(conditions or [sql.SQL("true")])
        with sql_errors(f"reconcile_on={self.reconcile_on!r}"):
            conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE file_matches ON COMMIT DROP AS SELECT f.{line} AS line,"
                    " (array_agg(r.{key}))[1] AS key, count(*) AS n FROM {raw} f JOIN {res} r ON {on}"
                    " WHERE {valid} GROUP BY f.{line}"
                ).format(
                    line=sql.Identifier(LINE_COLUMN),
                    key=sql.Identifier(resource.key),
                    raw=sql.Identifier(raw),
                    res=resource.ident,
                    on=join_on,
                    valid=valid,
                )
            )
            conn.execute("ANALYZE file_matches")


def _check_type_names(conn: psycopg.Connection, option: str, types: Mapping[str, str]) -> None:
    """Raise naming ``option`` when a value of ``types`` is not a PostgreSQL type."""
    for column, pg_type in types.items():
        try:
            with conn.transaction():
                known = conn.execute("SELECT to_regtype(%s)", (pg_type,)).fetchone()
        except psycopg.Error:
            known = None
        if not known or known[0] is None:
            raise CampaignError(
                f"{option}={{{column!r}: {pg_type!r}}}: {pg_type!r} is not a PostgreSQL type; use e.g. "
                "'integer', 'bigint', 'numeric', 'boolean', 'date' or 'timestamptz'."
            )


class _CombineOperator(CampaignBaseOperator):
    """Shared by the set operations: inputs of one resource compared by key or by columns."""

    template_fields: Sequence[str] = ("populations", "on")

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "populations": opt.items,
        "on": opt.optional(_on_columns),
    }

    def __init__(self, *, populations: Sequence[Any], on: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.populations = populations
        self.on = opt.unless_templated(on, lambda v: list(v) if v else None)
        if isinstance(populations, (list, tuple)):
            self.check_count(list(populations))

    def check_count(self, values: list[Any]) -> None:
        """Two or more inputs (an XComArg list is checked once resolved, at run time)."""
        if len(values) < 2:
            raise CampaignError(
                f"populations: {type(self).__name__} needs two or more populations, got {len(values)}; "
                "pass a list such as [query_a.output, query_b.output]."
            )

    def input_list(self) -> list[Any]:
        if not isinstance(self.populations, (list, tuple)):
            raise CampaignError(
                f"populations: give a list of populations, not {type(self.populations).__name__}."
            )
        values = list(self.populations)
        self.check_count(values)
        return values

    def compare_columns(self, pops: Sequence[Population], labels: Sequence[str]) -> list[str]:
        if self.on is None:
            _same_resource(pops, labels)
            return [pops[0].key]
        for label, pop in zip(labels, pops, strict=True):
            _check_columns(f"on={self.on!r} (in {label})", self.on, pop.columns)
        return self.on

    @staticmethod
    def matches(left: str, right: str, on: Sequence[str]) -> sql.Composable:
        return sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}.{}").format(
                sql.Identifier(left), sql.Identifier(c), sql.Identifier(right), sql.Identifier(c)
            )
            for c in on
        )

    def finish(
        self, conn: psycopg.Connection, context: Any, select: sql.Composable, first: Population
    ) -> Population:
        pop = self.save(conn, context, select, key=first.key, resource=first.resource, option="populations")
        self.check_empty(pop)
        return pop

    def execute(self, context: Any) -> dict[str, Any]:
        pop = self.run_in_transaction(lambda conn: self.combine(conn, context))
        self.log.info("%s: %d rows into %s", self.task_id, pop.count, pop.table)
        return pop.to_dict()

    def combine(self, conn: psycopg.Connection, context: Any) -> Population:
        raise NotImplementedError


class UnionOperator(_CombineOperator):
    """Rows in any of ``populations``; a row found in several keeps the first input's values.

    :param populations: two or more populations of one resource.
    :param on: compare by these columns instead of the key.
    :param limit: cap the result size (rows ordered by the compared columns).

    The result carries the columns common to every input, in the first input's order.
    """

    option_checks: ClassVar[dict[str, opt.Check]] = {"limit": opt.optional(opt.integer(0))}

    def __init__(
        self,
        *,
        populations: Sequence[Any],
        on: Sequence[str] | None = None,
        limit: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(populations=populations, on=on, **kwargs)
        self.limit = limit

    def combine(self, conn: psycopg.Connection, context: Any) -> Population:
        bound = self.inputs(conn, self.input_list(), "populations")
        pops = [p for p, _ in bound]
        on = self.compare_columns(pops, input_labels("populations", len(pops)))
        common = [c for c in pops[0].columns if all(c in p.columns for p in pops[1:])]
        parts = [
            sql.SQL("SELECT {} AS _src, {} FROM {}").format(sql.Literal(i), _idents(common), rel)
            for i, (_, rel) in enumerate(bound)
        ]
        distinct = _idents(on)
        if self.on is not None and pops[0].key in common:
            # as in Intersection/Exclusion, NULL matches nothing: a row with a NULL in an ``on``
            # column merges only with rows of the same key (the same row found in several inputs)
            distinct = sql.SQL("{}, (CASE WHEN {} THEN {} END)").format(
                distinct,
                sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(c)) for c in on),
                sql.Identifier(pops[0].key),
            )
        select = sql.SQL(
            "SELECT DISTINCT ON ({on}) {cols} FROM ({parts}) u ORDER BY {on}, _src{limit}"
        ).format(
            on=distinct,
            cols=_idents(common),
            parts=sql.SQL(" UNION ALL ").join(parts),
            limit=sql.SQL(" LIMIT {}").format(sql.Literal(self.limit))
            if self.limit is not None
            else sql.SQL(""),
        )
        return self.finish(conn, context, select, pops[0])


class IntersectionOperator(_CombineOperator):
    """Rows of the first population whose key (or ``on`` columns) is in every other one.

    :param populations: two or more populations of one resource.
    :param on: compare by these columns instead of the key.
    """

    def combine(self, conn: psycopg.Connection, context: Any) -> Population:
        bound = self.inputs(conn, self.input_list(), "populations")
        pops = [p for p, _ in bound]
        on = self.compare_columns(pops, input_labels("populations", len(pops)))
        exists = [
            sql.SQL("EXISTS (SELECT 1 FROM {} o{} WHERE {})").format(
                rel, sql.SQL(str(i)), self.matches(f"o{i}", "p", on)
            )
            for i, (_, rel) in enumerate(bound[1:], start=1)
        ]
        select = sql.SQL("SELECT p.* FROM {} p WHERE {}").format(bound[0][1], sql.SQL(" AND ").join(exists))
        return self.finish(conn, context, select, pops[0])


class ExclusionOperator(_CombineOperator):
    """Rows of ``primary`` whose key (or ``on`` columns) is in none of ``exclude``.

    :param primary: the population to keep rows from.
    :param exclude: one or more populations to remove (a list of row dicts is one inline
        population).
    :param on: compare by these columns instead of the key (then the inputs may be of other
        resources, e.g. remove by email).
    """

    template_fields: Sequence[str] = ("primary", "exclude", "on")

    def __init__(self, *, primary: Any, exclude: Any, on: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(populations=[primary, *_excluded(exclude)], on=on, **kwargs)
        self.primary = primary
        self.exclude = exclude

    def check_count(self, values: list[Any]) -> None:
        if len(values) < 2:
            raise CampaignError(
                "exclude: give one or more populations to remove (got none); leave the "
                "ExclusionOperator out when there is nothing to exclude."
            )

    def combine(self, conn: psycopg.Connection, context: Any) -> Population:
        excluded = _excluded(self.exclude)
        self.check_count([self.primary, *excluded])
        bound = self.inputs(conn, [self.primary], "primary") + self.inputs(conn, excluded, "exclude")
        pops = [p for p, _ in bound]
        on = self.compare_columns(pops, ["primary", *input_labels("exclude", len(excluded))])
        not_exists = [
            sql.SQL("NOT EXISTS (SELECT 1 FROM {} o{} WHERE {})").format(
                rel, sql.SQL(str(i)), self.matches(f"o{i}", "p", on)
            )
            for i, (_, rel) in enumerate(bound[1:], start=1)
        ]
        select = sql.SQL("SELECT p.* FROM {} p WHERE {}").format(
            bound[0][1], sql.SQL(" AND ").join(not_exists)
        )
        return self.finish(conn, context, select, pops[0])


def _excluded(exclude: Any) -> list[Any]:
    """``exclude`` as a list of inputs: one input, a list of inputs, or a list of inline rows."""
    if not isinstance(exclude, (list, tuple)):
        return [exclude]
    if exclude and all(isinstance(v, Mapping) and v.get("kind") not in INPUT_KINDS for v in exclude):
        return [list(exclude)]
    return list(exclude)


class DeduplicationOperator(CampaignBaseOperator):
    """Keep ``keep`` rows per value of ``on``, preferring rows by ``prefer``.

    :param population: the input population.
    :param on: columns whose equal values make duplicates (default: the key).
    :param keep: how many rows to keep per duplicate group (default 1).
    :param prefer: SQL ORDER BY list choosing the rows kept, e.g. ``"loyalty_points DESC"``;
        ties are broken by the key so the result is deterministic.
    :param parameters: values for ``%(name)s`` placeholders in ``prefer`` (a literal ``%`` is then
        written ``%%``).

    A row with a NULL in an ``on`` column is a duplicate of no other row (as in a UNIQUE
    constraint): deduplicating on ``email`` keeps every profile without an email.
    """

    template_fields: Sequence[str] = ("population", "on", "prefer", "parameters")

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "on": opt.optional(_on_columns),
        "keep": opt.integer(1),
        "prefer": opt.optional(opt.text),
    }

    def __init__(
        self,
        *,
        population: Any,
        on: Sequence[str] | None = None,
        keep: int = 1,
        prefer: str | None = None,
        parameters: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(keep, int) or keep < 1:
            raise CampaignError(f"keep={keep!r}: give a whole number >= 1.")
        self.population = population
        self.on = opt.unless_templated(on, lambda v: list(v) if v else None)
        self.keep = keep
        self.prefer = prefer
        self.parameters = parameters
        sqlcheck.check_at_parse(self.sql_options(), parameters)

    def sql_options(self) -> list[tuple[sqlcheck.Check, str, Any]]:
        return [(sqlcheck.order_list, "prefer", self.prefer)]

    def execute(self, context: Any) -> dict[str, Any]:
        sqlcheck.check_at_run(self.sql_options(), self.parameters)

        def work(conn: psycopg.Connection) -> Population:
            ((pop, rel),) = self.inputs(conn, [self.population], "population")
            on = self.on or [pop.key]
            _check_columns("on", on, pop.columns)
            order: list[sql.Composable] = (
                [sqlcheck.order_list("prefer", self.prefer, self.parameters)] if self.prefer else []
            )
            order.append(sql.Identifier(pop.key))
            select = sql.SQL(
                "SELECT {cols} FROM (SELECT p.*, row_number() OVER (PARTITION BY {on} ORDER BY {order}) AS _rn "
                "FROM {rel} p) d WHERE _rn <= {keep} OR {any_null}"
            ).format(
                cols=_idents(pop.columns),
                on=_idents(on),
                order=sql.SQL(", ").join(order),
                rel=rel,
                keep=sql.Literal(self.keep),
                any_null=sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(c)) for c in on),
            )
            option = f"prefer={self.prefer!r}" if self.prefer else f"on={on!r}"
            out = self.save(conn, context, select, key=pop.key, resource=pop.resource, option=option)
            self.check_empty(out)
            return out

        pop = self.run_in_transaction(work)
        self.log.info("%s: %d rows after deduplication", self.task_id, pop.count)
        return pop.to_dict()


JoinKind = Literal["one", "optional", "many"]


class EnrichmentOperator(CampaignBaseOperator):
    """Add columns to a population from its resource and related tables.

    :param population: the input population (alias ``p``; its resource row is alias ``r``).
    :param columns: ``{name: SQL expression}`` over ``p``, ``r`` and the joins' aliases, e.g.
        ``{"email": "r.email"}``.
    :param joins: related tables, each ``{"table": "schema.table", "alias": "s",
        "on": "s.profile_id = p.id", "kind": "one" | "optional" | "many", "columns": {...}}``.
        ``one``: exactly one row (rows without a match are dropped); ``optional``: zero or one
        (NULLs when missing); ``many``: one-to-many, and its ``columns`` must be aggregates
        (``{"subscriptions": "count(*)"}``). A ``one``/``optional`` join that matches several
        rows for a population row is an error.
    :param parameters: values for ``%(name)s`` placeholders in any of the SQL above (one dict for
        all of them; a literal ``%`` is then written ``%%``).

    Each expression (a column, a join's ``on``) is checked alone to be one SQL expression.
    """

    template_fields: Sequence[str] = ("population", "columns", "joins", "parameters")

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "columns": opt.defaulted(opt.string_mapping, dict),
        "joins": opt.defaulted(_joins, list),
    }

    def __init__(
        self,
        *,
        population: Any,
        columns: dict[str, str] | None = None,
        joins: Sequence[dict[str, Any]] | None = None,
        parameters: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.population = population
        self.columns = opt.unless_templated(columns, lambda v: dict(v or {}))
        self.joins = opt.unless_templated(joins, lambda v: [dict(j) for j in v or []])
        self.parameters = parameters
        if not opt.templated(self.columns) and not opt.templated(self.joins):
            self.check_something_added()
        sqlcheck.check_at_parse(self.sql_options(), parameters)

    def check_options(self) -> None:
        """The option checks on the rendered values, then: at least one column is added."""
        super().check_options()
        self.check_something_added()

    def check_something_added(self) -> None:
        if not self.columns and not any(j.get("columns") for j in self.joins):
            raise CampaignError("columns/joins: give at least one column to add.")

    def sql_options(self) -> list[tuple[sqlcheck.Check, str, Any]]:
        """Every SQL expression of ``columns`` and ``joins``, named as errors name them."""
        out: list[tuple[sqlcheck.Check, str, Any]] = []
        if isinstance(self.columns, Mapping):
            out += [(sqlcheck.expression, f"columns[{n!r}]", e) for n, e in self.columns.items()]
        for i, join in enumerate(self.joins if isinstance(self.joins, list) else []):
            if not isinstance(join, Mapping):
                continue
            out.append((sqlcheck.expression, f"joins[{i}].on", join.get("on")))
            cols = join.get("columns") or {}
            if isinstance(cols, Mapping):
                out += [(sqlcheck.expression, f"joins[{i}].columns[{n!r}]", e) for n, e in cols.items()]
        return out

    def _expr(self, option: str, value: Any) -> sql.Composable:
        return sqlcheck.expression(option, value, self.parameters)

    def execute(self, context: Any) -> dict[str, Any]:
        sqlcheck.check_at_run(self.sql_options(), self.parameters)
        pop = self.run_in_transaction(lambda conn: self._enrich(conn, context))
        self.log.info("%s: %d rows enriched with %d columns", self.task_id, pop.count, len(pop.columns))
        return pop.to_dict()

    def _enrich(self, conn: psycopg.Connection, context: Any) -> Population:
        ((pop, rel),) = self.inputs(conn, [self.population], "population")
        added: dict[str, sql.Composable] = {}
        _add_columns(
            added, "columns", {n: self._expr(f"columns[{n!r}]", e) for n, e in self.columns.items()}, pop
        )
        froms: list[sql.Composable] = [sql.SQL("{} p").format(rel)]
        if pop.resource:
            resource = Resource.resolve(conn, pop.resource, pop.key)
            froms.append(
                sql.SQL("LEFT JOIN {} r ON r.{} = p.{}").format(
                    resource.ident, sql.Identifier(resource.key), sql.Identifier(pop.key)
                )
            )
        for i, join in enumerate(self.joins):
            kind = join.get("kind", "optional")
            alias = sql.Identifier(join["alias"])
            if not CampaignHook.columns_of(conn, join["table"]):
                raise CampaignError(
                    f"joins[{i}].table={join['table']!r}: no such table or view in the campaign database; "
                    "name an existing one as 'schema.table'."
                )
            table = qualified(join["table"])
            on = self._expr(f"joins[{i}].on", join["on"])
            cols = {
                n: self._expr(f"joins[{i}].columns[{n!r}]", e) for n, e in (join.get("columns") or {}).items()
            }
            if kind == "many":
                inner = sql.SQL(", ").join(
                    sql.SQL("{} AS {}").format(e, sql.Identifier(n)) for n, e in cols.items()
                )
                if self._has_one_join():
                    # ``one`` joins drop rows, so the output count cannot tell: probe this join
                    with sql_errors(f"joins[{i}]"):
                        repeats = conn.execute(
                            sql.SQL(
                                "SELECT 1 FROM {} CROSS JOIN LATERAL (SELECT {} FROM {} {} WHERE {} OFFSET 1) {} LIMIT 1"
                            ).format(sql.SQL(" ").join(froms), inner, table, alias, on, alias)
                        ).fetchone()
                    if repeats:
                        raise _not_aggregates(f"joins[{i}]")
                froms.append(
                    sql.SQL("LEFT JOIN LATERAL (SELECT {} FROM {} {} WHERE {}) {} ON true").format(
                        inner, table, alias, on, alias
                    )
                )
                _add_columns(
                    added,
                    f"joins[{i}].columns",
                    {n: sql.SQL("{}.{}").format(alias, sql.Identifier(n)) for n in cols},
                    pop,
                )
                continue
            with sql_errors(f"joins[{i}].on={join['on']!r}"):
                dup = conn.execute(
                    sql.SQL(
                        "SELECT 1 FROM {} JOIN {} {} ON {} GROUP BY p.ctid HAVING count(*) > 1 LIMIT 1"
                    ).format(sql.SQL(" ").join(froms), table, alias, on)
                ).fetchone()
            if dup:
                raise CampaignError(
                    f"joins[{i}] ({join['table']} as {join['alias']}, kind {kind!r}) matches several rows for "
                    "some population rows; use kind='many' with aggregate columns, or a narrower on."
                )
            froms.append(
                sql.SQL("{} {} {} ON {}").format(
                    sql.SQL("JOIN" if kind == "one" else "LEFT JOIN"), table, alias, on
                )
            )
            _add_columns(added, f"joins[{i}].columns", cols, pop)
        select = sql.SQL("SELECT p.*, {} FROM {}").format(
            sql.SQL(", ").join(sql.SQL("{} AS {}").format(e, sql.Identifier(n)) for n, e in added.items()),
            sql.SQL(" ").join(froms),
        )
        out = self.save(conn, context, select, key=pop.key, resource=pop.resource, option="columns/joins")
        self._check_many_joins(conn, pop, out)
        self.check_empty(out)
        return out

    def _check_many_joins(self, conn: psycopg.Connection, pop: Population, out: Population) -> None:
        """Refuse a ``many`` join whose columns are not aggregates (it would repeat population rows).

        Without ``one`` joins (which drop rows) the output has exactly as many rows as the
        population unless a ``many`` join multiplied some, so the counts tell at no cost.
        """
        many = [i for i, j in enumerate(self.joins) if j.get("kind", "optional") == "many"]
        if many and not self._has_one_join() and (out.count or 0) > (pop.count or 0):
            raise _not_aggregates(", ".join(f"joins[{i}]" for i in many))

    def _has_one_join(self) -> bool:
        return any(j.get("kind", "optional") == "one" for j in self.joins)


def _not_aggregates(names: str) -> CampaignError:
    return CampaignError(
        f"{names} (kind 'many'): the columns must be aggregates such as count(*), max(...) or "
        "array_agg(...); a plain column repeats population rows. Nothing was written."
    )


def _add_columns(
    added: dict[str, sql.Composable], option: str, new: dict[str, sql.Composable], pop: Population
) -> None:
    """Add ``new`` output columns, refusing a name the population or an earlier option already has."""
    clash = [n for n in new if n in added or n in pop.columns]
    if clash:
        raise CampaignError(
            f"{option}: column name(s) {clash} already exist in the population {pop.columns} or among "
            f"the columns added before {sorted(added)}; choose other names."
        )
    added.update(new)


_RESERVED_XCOM_KEYS = {"return_value", "skipmixin_key", "_link_AirflowExternalLink"}


class SegmentationOperator(CampaignBaseOperator):
    """Split a population into segments, one population per segment code.

    :param population: the input population.
    :param segments: a list of ``{"code": "A", "where": SQL, "limit": N, "percent": P,
        "random": bool, "order_by": SQL}``; every key but ``code`` is optional. A segment takes
        the rows matching ``where`` (and, without ``overlap``, not taken by an earlier
        segment), ordered randomly (``random``, deterministic for a run) or by ``order_by``
        (default the key), then keeps at most ``limit`` rows and ``percent`` % of them.
    :param overlap: let a row belong to several segments (default False).
    :param complement: add a segment with the rows no segment took (default True).
    :param complement_code: the complement's code (default ``"others"``).
    :param seed: random seed (default: the run id, so a retry draws the same rows).
    :param parameters: values for ``%(name)s`` placeholders in the segments' ``where`` and
        ``order_by`` (one dict for all of them; a literal ``%`` is then written ``%%``).

    Each segment is a population with a ``segment_code`` column, pushed to XCom under its code;
    the return value maps codes to populations.
    """

    template_fields: Sequence[str] = ("population", "segments", "seed", "parameters")

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "segments": opt.list_of_mappings,
        "overlap": opt.flag,
        "complement": opt.flag,
        "complement_code": opt.text,
        "seed": opt.optional(opt.one_of(opt.integer(), opt.text)),
    }

    def __init__(
        self,
        *,
        population: Any,
        segments: Sequence[dict[str, Any]],
        overlap: bool = False,
        complement: bool = True,
        complement_code: str = "others",
        seed: str | None = None,
        parameters: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.population = population
        self.segments = opt.unless_templated(segments, lambda v: [dict(s) for s in v])
        self.parameters = parameters
        self.overlap = overlap
        self.complement = complement
        self.complement_code = complement_code
        self.seed = seed
        if not opt.templated(self.segments):
            self.check_segments()
        sqlcheck.check_at_parse(self.sql_options(), parameters)

    def check_options(self) -> None:
        """The option checks on the rendered values, then each segment's shape and code."""
        super().check_options()
        self.check_segments()

    def check_segments(self) -> None:
        """Codes valid and unique (with the complement's), known keys, percent and limit in range."""
        complement_code = self.complement_code
        codes = [s.get("code") for s in self.segments] + ([complement_code] if self.complement else [])
        if not self.segments:
            raise CampaignError("segments: give at least one segment {'code': ..., 'where': ...}.")
        for i, code in enumerate(codes):
            option = f"segments[{i}].code" if i < len(self.segments) else "complement_code"
            if not isinstance(code, str) or not _CODE.match(code):
                raise CampaignError(f"{option}={code!r}: use letters, digits and _ (starting with a letter).")
            if code in _RESERVED_XCOM_KEYS:
                raise CampaignError(
                    f"{option}={code!r}: each segment is pushed to XCom under its code, and {code!r} is "
                    "Airflow's own key; choose another code."
                )
        if len(set(codes)) != len(codes):
            raise CampaignError(f"segments: codes must be unique (with complement_code); got {codes}.")
        for i, seg in enumerate(self.segments):
            unknown = set(seg) - {"code", "where", "limit", "percent", "random", "order_by"}
            if unknown:
                raise CampaignError(f"segments[{i}]: unknown option(s) {sorted(unknown)}.")
            pct = seg.get("percent")
            if pct is not None and (
                isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 <= pct <= 100
            ):
                raise CampaignError(f"segments[{i}].percent={pct!r}: give a number between 0 and 100.")
            limit = seg.get("limit")
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
                raise CampaignError(
                    f"segments[{i}].limit={limit!r}: give a whole number >= 0, or leave it out for no limit."
                )

    def sql_options(self) -> list[tuple[sqlcheck.Check, str, Any]]:
        """Each segment's ``where`` and ``order_by``."""
        out: list[tuple[sqlcheck.Check, str, Any]] = []
        for i, seg in enumerate(self.segments if isinstance(self.segments, list) else []):
            if isinstance(seg, Mapping):
                out.append((sqlcheck.expression, f"segments[{i}].where", seg.get("where")))
                out.append((sqlcheck.order_list, f"segments[{i}].order_by", seg.get("order_by")))
        return out

    def execute(self, context: Any) -> dict[str, Any]:
        sqlcheck.check_at_run(self.sql_options(), self.parameters)
        outputs = self.run_in_transaction(lambda conn: self._split(conn, context))
        for code, pop in outputs.items():
            context["ti"].xcom_push(key=code, value=pop.to_dict())
            self.log.info("%s: segment %s has %d rows", self.task_id, code, pop.count)
        return {code: pop.to_dict() for code, pop in outputs.items()}

    def _split(self, conn: psycopg.Connection, context: Any) -> dict[str, Population]:
        ((pop, rel),) = self.inputs(conn, [self.population], "population")
        if pop.trusted:
            rel = _read_once(conn, pop, rel)
        columns = [c for c in pop.columns if c != "segment_code"]
        seed = self.seed if self.seed is not None else run_identity(context)["run_id"]
        taken: list[_Taken] = []
        outputs: dict[str, Population] = {}
        # Segment by segment, so that the first statement using a segment's SQL is its own
        # (an error names that segment): its draw, if it is bounded, then its output.
        for i, seg in enumerate(self.segments):
            option = f"segments[{i}]"
            where = (
                sqlcheck.expression(f"{option}.where", seg["where"], self.parameters)
                if seg.get("where")
                else sql.SQL("true")
            )
            earlier = [] if self.overlap else [t.left for t in taken]
            with sql_errors(option):
                if seg.get("limit") is None and seg.get("percent") is None:
                    mine = _Taken.where(where)
                else:
                    mine = self._draw(conn, rel, pop.key, i, seg, seed, earlier, where)
            taken.append(mine)
            condition = [mine.rows] if mine.exact or self.overlap else [*earlier, mine.rows]
            outputs[seg["code"]] = self._output(
                conn, context, rel, pop, columns, seg["code"], condition, option
            )
        if self.complement:
            outputs[self.complement_code] = self._output(
                conn, context, rel, pop, columns, self.complement_code, [t.left for t in taken], "segments"
            )
        if not any(p.count for p in outputs.values()):
            self.check_empty(next(iter(outputs.values())), "segmentation")
        return outputs

    def _output(
        self,
        conn: psycopg.Connection,
        context: Any,
        rel: sql.Composable,
        pop: Population,
        columns: list[str],
        code: str,
        condition: list[sql.Composable],
        option: str,
    ) -> Population:
        """One segment's staging table: the input rows meeting every ``condition``, in one scan."""
        select = sql.SQL("SELECT {cols}, {code}::text AS segment_code FROM {rel} p WHERE {cond}").format(
            cols=_idents(columns, "p"),
            code=sql.Literal(code),
            rel=rel,
            cond=sql.SQL(" AND ").join(condition or [sql.SQL("true")]),
        )
        return self.save(
            conn, context, select, key=pop.key, resource=pop.resource, suffix=code, option=option
        )

    def _draw(
        self,
        conn: psycopg.Connection,
        rel: sql.Composable,
        key: str,
        i: int,
        seg: dict[str, Any],
        seed: Any,
        earlier: list[sql.Composable],
        where: sql.Composable,
    ) -> _Taken:
        """The rows a segment with ``limit`` or ``percent`` keeps among its eligible rows.

        The eligible rows match ``where`` and none of ``earlier``; with ``percent`` they are
        counted first. For a random or key order the segment then becomes a condition on each
        row, "not after the last row kept" in (sort key, row id) order, so its outputs need no
        join: the last row kept comes from one top-N sort of the eligible rows, or, for a random
        share, of the few rows in the hash window the count found it in. Rows ordered by
        ``order_by`` are remembered by row id in a temporary table.
        """
        eligible = sql.SQL(" AND ").join([*earlier, where])
        size, percent = seg.get("limit"), seg.get("percent")
        pk = sql.Identifier("p", key)
        first: sql.Composable = pk
        if seg.get("random"):
            first = sql.SQL("hashtextextended({} || coalesce({}::text, ''), 0)").format(
                sql.Literal(f"{seed}/{seg['code']}/"), pk
            )
        total: int | None = None  # eligible rows, counted when the size is a share of them
        below: tuple[int, sql.Composable] | None = None
        if percent is not None:
            total, below = _count(conn, rel, eligible, first if seg.get("random") else None, percent)
            share = _share(total, percent)
            size = share if size is None else min(size, share)
        assert size is not None
        if total is not None and size >= total:
            return _Taken.where(where)  # every eligible row
        if size == 0:
            return _Taken(rows=sql.SQL("false"), left=sql.SQL("true"))
        if seg.get("order_by") and not seg.get("random"):
            order = sqlcheck.order_list(f"segments[{i}].order_by", seg["order_by"], self.parameters)
            return _picked(conn, rel, i, eligible, [order, pk], size)
        # the last row kept: the size-th in (sort key, row id) order, or, when the count found it
        # below a hash bound, the one that many rows before the bound (a top-N sort of few rows)
        within, order, skip = eligible, sql.SQL("{}, p.ctid").format(first), size - 1
        if below and size <= below[0] < 2 * size:  # (and that is the smaller sort)
            within = sql.SQL("{} AND {}").format(eligible, below[1])
            order, skip = sql.SQL("{} DESC, p.ctid DESC").format(first), below[0] - size
        last = conn.execute(
            sql.SQL(
                "SELECT {first}, {first} IS NULL, p.ctid::text FROM {rel} p WHERE {within} "
                "ORDER BY {order} OFFSET {skip} LIMIT 1"
            ).format(first=first, rel=rel, within=within, order=order, skip=sql.Literal(skip))
        ).fetchone()
        if last is None:
            return _Taken.where(where)  # fewer eligible rows than the size
        ctid = sql.SQL("{}::tid").format(sql.Literal(last[2]))
        if last[1]:  # the cut falls among rows whose key is NULL (sorted last, by row id)
            cut = sql.SQL("({} IS NOT NULL OR p.ctid <= {})").format(first, ctid)
        elif seg.get("random"):
            cut = sql.SQL("({}, p.ctid) <= ({}, {})").format(first, sql.Literal(int(last[0])), ctid)
        else:  # key order: the key of the last row, read back by its row id (so of the key's type)
            cut = sql.SQL(
                "({pk}, p.ctid) <= (SELECT l.{key}, l.ctid FROM {rel} l WHERE l.ctid = {ctid})"
            ).format(pk=pk, key=sql.Identifier(key), rel=rel, ctid=ctid)
        return _Taken.where(sql.SQL("{} AND {}").format(where, cut))


def _count(
    conn: psycopg.Connection,
    rel: sql.Composable,
    eligible: sql.Composable,
    hashed: sql.Composable | None,
    percent: float,
) -> tuple[int, tuple[int, sql.Composable] | None]:
    """How many rows are eligible; for a random draw (``hashed``, the random order) also how
    many have a hash below a bound just past where the share should end, and that condition.

    Hashes are uniform over the 64-bit integers, so the bound (1 % of them past the share's
    end) is past the last row kept unless the rows are few; the caller checks.
    """
    counted: list[sql.Composable] = [sql.SQL("count(*)")]
    if hashed is not None:
        bound = min(-(2**63) + int(2**64 * (float(percent) + 1) / 100), 2**63 - 1)
        under = sql.SQL("{} < {}").format(hashed, sql.Literal(bound))
        counted.append(sql.SQL("count(*) FILTER (WHERE {})").format(under))
    row = conn.execute(
        sql.SQL("SELECT {} FROM {} p WHERE {}").format(sql.SQL(", ").join(counted), rel, eligible)
    ).fetchone()
    assert row is not None
    return int(row[0]), (int(row[1]), under) if hashed is not None else None


def _share(total: int, percent: float) -> int:
    """``ceil(total * percent / 100)``, exactly (``percent`` as written in decimal)."""
    return math.ceil(decimal.Decimal(total) * decimal.Decimal(repr(float(percent))) / 100)


@dataclass(frozen=True)
class _Taken:
    """Which input rows a segment takes, as conditions over the input row ``p``.

    ``rows`` is true for the rows the segment takes (with the rows an earlier segment took,
    unless ``exact``) and ``left`` for the others; both are plain conditions of a WHERE clause.
    """

    rows: sql.Composable
    left: sql.Composable
    exact: bool = False

    @classmethod
    def where(cls, condition: sql.Composable) -> _Taken:
        return cls(rows=sql.SQL("({})").format(condition), left=sql.SQL("({}) IS NOT TRUE").format(condition))


def _read_once(conn: psycopg.Connection, pop: Population, rel: sql.Composable) -> sql.Composable:
    """A table of the DAG author's, copied once so that every segment sees the same rows.

    (A staging table is never written after its task: it is read in place, under the lock
    that reading it takes until the end of the transaction.)
    """
    conn.execute(
        sql.SQL("CREATE TEMP TABLE segment_input ON COMMIT DROP AS SELECT {} FROM {}").format(
            _idents(pop.columns), rel
        )
    )
    return sql.Identifier("segment_input")


def _picked(
    conn: psycopg.Connection,
    rel: sql.Composable,
    i: int,
    eligible: sql.Composable,
    order: list[sql.Composable],
    size: int,
) -> _Taken:
    """The first ``size`` eligible rows in ``order``, remembered by row id in a temporary table."""
    table = sql.Identifier(f"segment_{i}_rows")
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE {table} ON COMMIT DROP AS SELECT p.ctid AS row_id FROM {rel} p WHERE {eligible} "
            "ORDER BY {order}, p.ctid LIMIT {size}"
        ).format(
            table=table, rel=rel, eligible=eligible, order=sql.SQL(", ").join(order), size=sql.Literal(size)
        )
    )
    conn.execute(sql.SQL("ANALYZE {}").format(table))  # its size, for the joins that read it
    member = sql.SQL("EXISTS (SELECT 1 FROM {} t WHERE t.row_id = p.ctid)").format(table)
    return _Taken(rows=member, left=sql.SQL("NOT ") + member, exact=True)
