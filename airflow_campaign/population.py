"""The Population contract: what flows between tasks, as a staging table or inline rows."""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from airflow_campaign.errors import CampaignError
from airflow_campaign.hooks.campaign import CampaignHook, qualified

Kind = Literal["table", "inline"]
INPUT_KINDS: tuple[str, ...] = ("table", "inline")
_TEMP_NAMES = itertools.count()


@dataclass
class Population:
    """A set of rows keyed into a resource, passed between tasks as a small dict.

    * ``table``: rows live in a staging table of the campaign database; XCom carries only
      ``{kind, table, key, resource, columns, count}``, whatever the row count.
    * ``inline``: rows travel in XCom (for small populations a ``@task`` returns); operators
      COPY them into a temporary table and run the same SQL.

    :param key: the column that identifies a row of ``resource`` (``id`` for profiles).
    :param resource: ``"profiles"``, ``"schema.table"``, or ``None`` for rows not tied to one.
    """

    kind: Kind
    key: str
    resource: str | None
    columns: list[str]
    count: int
    table: str | None = None
    rows: list[dict[str, Any]] | None = field(default=None, repr=False)

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
    def from_value(cls, value: Any, option: str = "population") -> Population:
        """Accept a Population, its dict form, a list of dicts or a pandas DataFrame."""
        if isinstance(value, Population):
            return value
        if isinstance(value, Mapping):
            if value.get("kind") in INPUT_KINDS:
                needed = ("key", "table") if value["kind"] == "table" else ("key", "rows")
                missing = [k for k in needed if value.get(k) is None]
                if missing:
                    raise CampaignError(
                        f"{option}: the population dict lacks {missing}; pass the dict an upstream "
                        "campaign task returned (or its XComArg), unchanged."
                    )
                return cls(
                    kind=value["kind"],
                    key=value["key"],
                    resource=value.get("resource"),
                    columns=list(value.get("columns") or []),
                    count=int(value.get("count") or 0),
                    table=value.get("table"),
                    rows=value.get("rows"),
                )
            raise CampaignError(
                f"{option}: a dict must be a population's dict form (with kind 'table' or 'inline'); "
                f"got keys {sorted(value)}. Pass the upstream task's output (an XComArg) instead."
            )
        if isinstance(value, (list, tuple)):
            if all(isinstance(r, Mapping) for r in value):
                return cls.inline(value)
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover
            pd = None
        if pd is not None and isinstance(value, pd.DataFrame):
            frame = value.astype(object).where(value.notna(), None)
            return cls.inline(frame.to_dict("records"))
        raise CampaignError(
            f"{option}: expected a Population, its dict, an XComArg, a list of dicts or a DataFrame; "
            f"got {type(value).__name__}."
        )

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
        """A relation holding the rows, usable in SQL on ``conn``.

        A table population is checked to still exist; inline rows are COPYed into a temporary
        table dropped at the end of the transaction.
        """
        if self.kind == "table":
            assert self.table is not None
            if not CampaignHook.columns_of(conn, self.table):
                raise CampaignError(
                    f"{option}: staging table {self.table} no longer exists (pruned, or dropped by "
                    "hand); clear and re-run the upstream task that produced it."
                )
            found = conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(qualified(self.table))
            ).fetchone()
            if self.count and not (found and found[0]):
                raise CampaignError(
                    f"{option}: staging table {self.table} is empty, but the task that made it wrote "
                    f"{self.count} row(s). Staging tables are UNLOGGED, and PostgreSQL empties them after "
                    "a crash or an immediate shutdown; clear and re-run the upstream task that produced it."
                )
            return qualified(self.table)
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
        CampaignHook.copy_rows_in(
            conn,
            name,
            self.columns,
            ([_adapt(r.get(c), types[c]) for c in self.columns] for r in rows),
        )
        return temp


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


def coerce(value: Any, option: str = "population") -> Population:
    """Shorthand for :meth:`Population.from_value`."""
    return Population.from_value(value, option)
