"""The Population contract: what flows between tasks, as a staging table or inline rows."""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from airflow_campaign.errors import CampaignError, shown
from airflow_campaign.hooks.campaign import CampaignHook
from airflow_campaign.resources import MAX_NAME, Resource, check_not_protected, find_relation

Kind = Literal["table", "inline"]
INPUT_KINDS: tuple[str, ...] = ("table", "inline")
_TEMP_NAMES = itertools.count()
MAX_COLUMN = 63  # bytes: PostgreSQL's identifier length (NAMEDATALEN - 1)
TABLE_KINDS = ("r", "p", "v", "m", "f")
#: the DAG of the task running now (set around each campaign operator's execute): a staging table
#: made by another DAG is not a population of this one
CURRENT_DAG: ContextVar[str | None] = ContextVar("campaign_current_dag", default=None)
#: what inline rows from a dict may claim to be: rows of profiles keyed by id, or of no resource
DICT_RESOURCES = {None: None, "profiles": "id"}  # pg_class.relkind a trusted table may be: tables and views


@dataclass
class Population:
    """A set of rows keyed into a resource, passed between tasks as a small dict.

    * ``table``: rows live in a staging table of the campaign database; XCom carries only
      ``{kind, table, key, resource, columns, count}``, whatever the row count.
    * ``inline``: rows travel in XCom (for small populations a ``@task`` returns); operators
      COPY them into a temporary table and run the same SQL.

    A table population read from a dict (XCom, ``dag_run.conf``) must name a staging table
    recorded in ``campaign.staging_tables``; only a Population built in the DAG file with
    :meth:`from_table` ``(..., trusted=True)`` may name another table. See "What is checked"
    in docs/populations.md.

    :param key: the column that identifies a row of ``resource`` (``id`` for profiles).
    :param resource: ``"profiles"``, ``"schema.table"``, or ``None`` for rows not tied to one.
    :param trusted: the table was declared in code by the DAG author, not read from a dict; never
        set from a dict, never emitted by :meth:`to_dict`.
    """

    kind: Kind
    key: str
    resource: str | None
    columns: list[str]
    count: int
    table: str | None = None
    rows: list[dict[str, Any]] | None = field(default=None, repr=False)
    trusted: bool = field(default=False, compare=False)
    #: the count is unknown until bind() measures it (from_table without count=)
    _count_at_bind: bool = field(default=False, init=False, repr=False, compare=False)

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def inline(
        cls, rows: Sequence[Mapping[str, Any]], key: str = "id", resource: str | None = "profiles"
    ) -> Population:
        """Rows carried in XCom. ``key`` must be one of their columns."""
        records = [dict(r) for r in rows]
        columns = list(dict.fromkeys(itertools.chain.from_iterable(records))) if records else [key]
        if key not in columns:
            raise CampaignError(
                f"population: inline rows have no key column {key!r} (columns: {columns}); "
                f"pass Population.inline(rows, key='<column>', resource=...) naming the key."
            )
        return cls(
            kind="inline", key=key, resource=resource, columns=columns, count=len(records), rows=records
        )

    @classmethod
    def from_table(
        cls,
        table: str,
        *,
        key: str = "id",
        resource: str | None = "profiles",
        count: int | None = None,
        trusted: bool = False,
    ) -> Population:
        """A table population declared in the DAG file.

        Without ``trusted``, ``table`` must be a staging table recorded in
        ``campaign.staging_tables``. With ``trusted=True`` it may be any table of yours (not
        one of the campaign's bookkeeping tables, nor a PostgreSQL catalog): say so only for a
        table you name in code, never for a name read from XCom or ``dag_run.conf``. Columns
        are read from the database when a task uses it; so is the row count unless given.
        """
        option = "Population.from_table"
        _check_name(f"{option}: table", table, MAX_NAME)
        _check_name(f"{option}: key", key, MAX_COLUMN)
        _check_resource(f"{option}: resource", resource)
        if count is not None:
            _check_count(f"{option}: count", count)
        pop = cls(
            kind="table",
            key=key,
            resource=resource,
            columns=[key],
            count=count or 0,
            table=table,
            trusted=trusted is True,
        )
        pop._count_at_bind = count is None
        return pop

    @classmethod
    def from_value(cls, value: Any, option: str = "population") -> Population:
        """Accept a Population, its dict form, a list of dicts or a pandas DataFrame.

        A dict is checked field by field here; whether the table it names may be used is
        checked by :meth:`bind`, on the connection that uses it.
        """
        if isinstance(value, Population):
            return value
        if isinstance(value, Mapping):
            return cls._from_dict(value, option)
        if isinstance(value, (list, tuple)):
            if all(isinstance(r, Mapping) for r in value):
                return cls.inline(_check_rows(option, value))
        pd = sys.modules.get("pandas")  # a DataFrame exists only once pandas is imported
        if pd is not None and isinstance(value, pd.DataFrame):
            frame = value.astype(object).where(value.notna(), None)
            return cls.inline(_check_rows(option, frame.to_dict("records")))
        raise CampaignError(
            f"{option}: expected a Population, its dict, an XComArg, a list of dicts or a DataFrame; "
            f"got {type(value).__name__}."
        )

    @classmethod
    def _from_dict(cls, value: Mapping[Any, Any], option: str) -> Population:
        kind = value.get("kind")
        if not isinstance(kind, str) or kind not in INPUT_KINDS:
            raise CampaignError(
                f"{option}: a dict must be a population's dict form (with kind 'table' or 'inline'); "
                f"got keys {shown(sorted(map(str, value)))}. Pass the upstream task's output (an XComArg) "
                "instead."
            )
        if "trusted" in value:
            raise CampaignError(
                f"{option}: the population dict has a 'trusted' key ({shown(value['trusted'])}); trust "
                "cannot come from XCom or dag_run.conf. A table that is not a staging table must be "
                "declared in the DAG file: Population.from_table('schema.table', key=..., resource=..., "
                "trusted=True)."
            )
        needed = ("key", "table") if kind == "table" else ("key", "rows")
        missing = [k for k in needed if value.get(k) is None]
        if missing:
            raise CampaignError(
                f"{option}: the population dict lacks {missing}; pass the dict an upstream "
                "campaign task returned (or its XComArg), unchanged."
            )
        key = _check_name(f"{option}: key", value["key"], MAX_COLUMN)
        resource = _check_resource(f"{option}: resource", value.get("resource"))
        columns = _check_columns(f"{option}: columns", value.get("columns"))
        if kind == "table":
            count = value.get("count")
            return cls(
                kind="table",
                key=key,
                resource=resource,
                columns=columns,
                count=0 if count is None else _check_count(f"{option}: count", count),
                table=_check_name(f"{option}: table", value["table"], MAX_NAME),
            )
        if value.get("count") is not None:
            _check_count(f"{option}: count", value["count"])
        rows = _check_rows(f"{option}: rows", value["rows"])
        seen = list(dict.fromkeys(itertools.chain(columns, itertools.chain.from_iterable(rows))))
        columns = seen or [key]
        if key not in columns:
            raise CampaignError(
                f"{option}: the inline rows have no key column {shown(key)} (columns: {shown(columns)}); "
                "give key= one of the rows' columns."
            )
        _check_claim(option, resource, key)
        return cls(kind="inline", key=key, resource=resource, columns=columns, count=len(rows), rows=rows)

    def serialize(self) -> dict[str, Any]:
        """Airflow's XCom serialisation of a Population object: its dict form (never ``trusted``)."""
        return self.to_dict()

    @staticmethod
    def deserialize(data: dict[str, Any], version: int) -> Population:
        """Read back what :meth:`serialize` wrote, as any dict is read: untrusted."""
        return Population.from_value(data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable XCom form (O(1) in size for table populations)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "key": self.key,
            "resource": self.resource,
            "columns": self.columns,
            "count": self.count,
        }
        if self.kind == "table":
            out["table"] = self.table
        else:
            out["rows"] = self.rows
        return out

    # ---- use in SQL -----------------------------------------------------------------------

    def bind(self, conn: psycopg.Connection, option: str = "population") -> sql.Composable:
        """A relation holding the rows, usable in SQL on ``conn``; every check before any write.

        The resource, when there is one, must not be a bookkeeping or catalog table. A table
        population must name a staging table recorded in ``campaign.staging_tables`` of this
        database (or, when :attr:`trusted`, a table of the DAG author's that is not bookkeeping
        or catalog); it is resolved to its OID, and the relation returned is the one checked.
        Its columns are then read from the database (not taken from the dict), its key must be
        one of them, and it is checked to still exist and hold rows. Inline rows are COPYed into
        a temporary table dropped at the end of the transaction.
        """
        if self.resource is not None:
            Resource.check_name(conn, self.resource, f"{option}: resource")
        if self.kind == "table":
            return self._bind_table(conn, option)
        rows = self.rows or []
        types = _infer_types(self.columns, rows)
        name = f"inline_{next(_TEMP_NAMES)}"
        temp = sql.Identifier(name)
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
                temp,
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(types[c])) for c in self.columns
                ),
            )
        )

        def values() -> Any:
            for number, r in enumerate(rows):
                out = [_adapt(r.get(c), types[c]) for c in self.columns]
                for column, value in zip(self.columns, out, strict=True):
                    if isinstance(value, str) and "\x00" in value:
                        raise CampaignError(
                            f"{option}: row {number} has a NUL character in {column!r} "
                            f"({shown(value, 60)}); PostgreSQL text cannot hold one. Remove it upstream."
                        )
                yield out

        try:
            CampaignHook.copy_rows_in(conn, name, self.columns, values())
        except psycopg.DataError as exc:
            raise CampaignError(
                f"{option}: the inline rows cannot be loaded ({shown(str(exc), 300, quote=False)}). "
                "Give values of one type per column (numbers, text, dates or JSON)."
            ) from exc
        return temp

    def _check_provenance(self, record: dict[str, Any], option: str) -> None:
        """A dict naming a staging table cannot relabel its rows nor reach another DAG's table."""
        current = CURRENT_DAG.get()
        if current is not None and record["dag_id"] != current:
            raise CampaignError(
                f"{option}: staging table {shown(self.table, quote=False)} was made by DAG "
                f"{shown(record['dag_id'])}, not by this DAG ({shown(current)}); a population passes "
                "between tasks of one DAG. Share rows across DAGs as a saved audience "
                "(SaveAudienceOperator, then ReadAudienceOperator in the other DAG)."
            )
        if record["key_column"] is None:  # recorded before provenance was kept: read as a dict's claim
            _check_claim(option, self.resource, self.key)
            return
        if (self.resource, self.key) != (record["resource"], record["key_column"]):
            raise CampaignError(
                f"{option}: the population dict says resource={shown(self.resource)}, key={shown(self.key)}, "
                f"but the task that made {shown(self.table, quote=False)} recorded resource="
                f"{shown(record['resource'])}, key={shown(record['key_column'])}; a dict cannot relabel a "
                "staging table's rows. Pass the upstream task's output unchanged."
            )

    def _bind_table(self, conn: psycopg.Connection, option: str) -> sql.Composable:
        assert self.table is not None
        check_not_protected(conn, f"{option}: table", self.table)
        relation = find_relation(conn, self.table)
        if relation is None:
            raise CampaignError(
                f"{option}: staging table {shown(self.table, quote=False)} no longer exists (pruned, or "
                "dropped by hand); clear and re-run the upstream task that produced it."
                if not self.trusted
                else f"{option}: table {shown(self.table, quote=False)} does not exist in the campaign "
                "database; create it, or fix the name given to Population.from_table."
            )
        if self.trusted and relation.kind not in TABLE_KINDS:
            raise CampaignError(
                f"{option}: {shown(self.table, quote=False)} is not a table or view; name one in "
                "Population.from_table."
            )
        if not self.trusted:
            record = (
                CampaignHook.staging_record(conn, relation.schema, relation.name)
                if relation.kind == "r"
                else None
            )
            if record is None:
                raise CampaignError(
                    f"{option}: table={shown(self.table)} is not a staging table recorded in "
                    "campaign.staging_tables of this database, so a population dict (from XCom or "
                    "dag_run.conf) cannot name it. Pass the output of the campaign task that made it; for a "
                    "table of yours, declare it in the DAG file: Population.from_table('schema.table', "
                    "key=..., resource=..., trusted=True)."
                )
            self._check_provenance(record, option)
            if record["row_count"] is not None:
                self.count = record["row_count"]
        columns = list(CampaignHook.relation_types(conn, relation.ident))
        if self.key not in columns:
            raise CampaignError(
                f"{option}: key={shown(self.key)} is not a column of {relation.qualified_name} "
                f"(columns: {shown(columns)}); give key= one of them."
            )
        self.columns = columns
        ident = relation.ident
        if self._count_at_bind:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()
            self.count = int(row[0]) if row else 0
        if self.trusted:
            return ident
        found = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(ident)).fetchone()
        if self.count and not (found and found[0]):
            raise CampaignError(
                f"{option}: staging table {shown(self.table, quote=False)} is empty, but the task that made "
                f"it wrote {self.count} row(s). Staging tables are UNLOGGED, and PostgreSQL empties them "
                "after a crash or an immediate shutdown; clear and re-run the upstream task that produced it."
            )
        return ident


_PG_TYPES: list[tuple[type | tuple[type, ...], str]] = [
    (bool, "boolean"),
    (int, "bigint"),
    ((float, decimal.Decimal), "numeric"),
    (dt.datetime, "timestamptz"),
    (dt.date, "date"),
    ((dict, list), "jsonb"),
]


def _infer_types(columns: list[str], rows: list[dict[str, Any]]) -> dict[str, str]:
    types = {}
    for column in columns:
        sample = next((r[column] for r in rows if r.get(column) is not None), None)
        types[column] = next((pg for py, pg in _PG_TYPES if isinstance(sample, py)), "text")
    return types


def _adapt(value: Any, pg_type: str) -> Any:
    if value is None:
        return None
    if pg_type == "jsonb":
        return json.dumps(value)
    if pg_type == "text" and not isinstance(value, str):
        return str(value)
    return value


# ---- checks of a dict's fields (values from XCom or dag_run.conf are not trusted) -------------


def _check_name(option: str, value: Any, limit: int) -> str:
    """A non-empty string of at most ``limit`` characters (bytes, for a column), without NUL."""
    if isinstance(value, str):
        size = len(value.encode()) if limit == MAX_COLUMN else len(value)
    if not isinstance(value, str) or not value or size > limit or "\x00" in value:
        what = "a column name" if limit == MAX_COLUMN else "a name"
        raise CampaignError(
            f"{option}={shown(value)}: give {what}, a non-empty string of at most {limit} "
            f"{'bytes' if limit == MAX_COLUMN else 'characters'}."
        )
    return value


def _check_resource(option: str, value: Any) -> str | None:
    if value is None:
        return None
    return _check_name(option, value, MAX_NAME)


def _check_count(option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CampaignError(
            f"{option}={shown(value)}: give the row count, a whole number >= 0 (not a string)."
        )
    return value


def _check_columns(option: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise CampaignError(f"{option}={shown(value)}: give a list of column names (strings).")
    return list(dict.fromkeys(_check_name(option, c, MAX_COLUMN) for c in value))


def _check_rows(option: str, value: Any) -> list[dict[str, Any]]:
    """Inline rows: a list of dicts whose keys are column names."""
    if not isinstance(value, (list, tuple)):
        raise CampaignError(f"{option}={shown(value)}: give the rows as a list of dicts.")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, Mapping):
            raise CampaignError(f"{option}[{i}]={shown(row)}: each row must be a dict of column: value.")
        for name in row:
            _check_name(f"{option}[{i}]: column", name, MAX_COLUMN)
        rows.append(dict(row))
    return rows


def coerce(value: Any, option: str = "population") -> Population:
    """Shorthand for :meth:`Population.from_value`."""
    return Population.from_value(value, option)


def _check_claim(option: str, resource: str | None, key: str) -> None:
    """Rows from a dict (XCom, ``dag_run.conf``) may say they are profiles (by id) or of no
    resource; which other table they are written to or joined with is named in code."""
    if resource in DICT_RESOURCES and (resource is None or key == DICT_RESOURCES[resource]):
        return
    raise CampaignError(
        f"{option}: inline rows from a dict (XCom, dag_run.conf) say resource={shown(resource)}, "
        f"key={shown(key)}; such rows may be profiles keyed by 'id', or of no resource (resource=None). "
        "A dict cannot choose the table its rows are written to or joined with: name it in the DAG "
        "(e.g. UpdateDataOperator(table=...) for rows of no resource), or build the population in the "
        "DAG file with Population.inline(rows, key=..., resource=...)."
    )
