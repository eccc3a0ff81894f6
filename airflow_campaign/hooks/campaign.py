"""CampaignHook: staging tables, COPY in and out, and streaming reads on the campaign database."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import psycopg
from airflow.providers.postgres.hooks.postgres import PostgresHook
from psycopg import sql

STAGING_SCHEMA = "campaign_staging"
_SLUG = re.compile(r"[^a-z0-9]+")


def staging_table_name(dag_id: str, task_id: str, run_id: str, map_index: int = -1, suffix: str = "") -> str:
    """A deterministic table name (at most 63 bytes) for one task try's output.

    The same dag_id, task_id, run_id, map_index and suffix always give the same name, so a
    retried task replaces the table its earlier try made instead of leaving a second one.
    """
    digest = hashlib.sha1(
        f"{dag_id}\x00{task_id}\x00{run_id}\x00{map_index}\x00{suffix}".encode()
    ).hexdigest()
    readable = "_".join(part for part in (_slug(dag_id, 18), _slug(task_id, 18), _slug(suffix, 10)) if part)
    return f"{readable}_{digest[:12]}"


def _slug(text: str, width: int) -> str:
    return _SLUG.sub("_", text.lower()).strip("_")[:width]


def qualified(name: str) -> sql.Composable:
    """``schema.table`` (or ``table``) as a safely quoted identifier."""
    return sql.Identifier(*name.split(".", 1))


class CampaignHook(PostgresHook):
    """A PostgresHook for the campaign database (psycopg 3).

    :param campaign_conn_id: Airflow connection of type postgres (default ``campaign_default``).
    """

    conn_name_attr = "campaign_conn_id"
    default_conn_name = "campaign_default"
    hook_name = "Campaign"

    def __init__(self, campaign_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        kwargs.setdefault("postgres_conn_id", campaign_conn_id)
        super().__init__(**kwargs)
        self.campaign_conn_id = campaign_conn_id

    def connect(self) -> psycopg.Connection:
        """A new psycopg 3 connection to the campaign database, with ``standard_conforming_strings``
        on whatever the server, database or role sets: SQL options are checked as PostgreSQL
        parses them with it on (a backslash in '...' is a character, not an escape)."""
        conn = cast(psycopg.Connection, self.get_conn())
        if conn.info.parameter_status("standard_conforming_strings") != b"on":  # reported at login
            try:
                conn.execute("SET standard_conforming_strings = on")
                if not conn.autocommit:
                    conn.commit()  # the session's setting, not a transaction's
            except BaseException:
                conn.close()
                raise
        return conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A fresh connection in one transaction: committed on success, rolled back on error."""
        conn = self.connect()
        try:
            with conn.transaction():
                yield conn
        finally:
            conn.close()

    # ---- staging tables -------------------------------------------------------------------

    @staticmethod
    def replace_table(
        conn: psycopg.Connection,
        table: str,
        select: sql.Composable,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        identity: dict[str, Any],
        output: str = "",
    ) -> int:
        """Replace ``campaign_staging.<table>`` with the rows of ``select``; return the row count.

        Runs in the caller's transaction: until it commits, readers see the previous table (or
        none), so a failed or retried try never leaves a half-made table behind. The table is
        UNLOGGED (it is a disposable hand-off between tasks) and recorded in
        ``campaign.staging_tables`` for pruning.
        """
        target = sql.Identifier(STAGING_SCHEMA, table)
        with conn.pipeline():  # one round trip; the count is the CREATE's own, not a second scan
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
            cur = conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} AS {}").format(target, select), params)
        count = cur.rowcount
        conn.execute(
            "INSERT INTO campaign.staging_tables (table_name, dag_id, task_id, run_id, map_index, output, row_count)"
            " VALUES (%(table)s, %(dag_id)s, %(task_id)s, %(run_id)s, %(map_index)s, %(output)s, %(count)s)"
            " ON CONFLICT (table_name) DO UPDATE SET row_count = EXCLUDED.row_count, updated_at = now()",
            {"table": f"{STAGING_SCHEMA}.{table}", "count": count, "output": output, **identity},
        )
        return count

    @staticmethod
    def staging_record(conn: psycopg.Connection, schema: str, name: str) -> dict[str, Any] | None:
        """The ``campaign.staging_tables`` row of ``schema.name`` (``row_count``, ``dag_id``,
        ``resource``, ``key_column``), or None when it is not a recorded staging table.

        The registry keys a table by its qualified name, ``campaign_staging.<table>``; a table of
        another schema is never a staging table, whatever the registry holds.
        """
        if schema != STAGING_SCHEMA:
            return None
        row = conn.execute(
            "SELECT row_count, dag_id, resource, key_column FROM campaign.staging_tables WHERE table_name = %s",
            (f"{STAGING_SCHEMA}.{name}",),
        ).fetchone()
        if row is None:
            return None
        return {
            "row_count": None if row[0] is None else int(row[0]),
            "dag_id": row[1],
            "resource": row[2],
            "key_column": row[3],
        }

    @staticmethod
    def drop_staging(conn: psycopg.Connection, table: str) -> None:
        """Drop a staging table and forget it."""
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(qualified(table)))
        conn.execute("DELETE FROM campaign.staging_tables WHERE table_name = %s", (table,))

    @staticmethod
    def prune(conn: psycopg.Connection, older_than_seconds: float, *, dry_run: bool = False) -> list[str]:
        """Drop the staging tables recorded longer ago than ``older_than_seconds``; return their names.

        Each table is dropped in its own transaction, and only if it is still that old then (a
        retried task may have just replaced it). With ``dry_run`` nothing is dropped.
        """
        with conn.transaction():
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT table_name FROM campaign.staging_tables"
                    " WHERE updated_at < now() - make_interval(secs => %s) ORDER BY table_name",
                    (older_than_seconds,),
                )
            ]
        if dry_run:
            return names
        dropped = []
        for name in names:
            with conn.transaction():
                stale = conn.execute(
                    "DELETE FROM campaign.staging_tables WHERE table_name = %s"
                    " AND updated_at < now() - make_interval(secs => %s) RETURNING table_name",
                    (name, older_than_seconds),
                ).fetchone()
                if stale:
                    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(qualified(name)))
                    dropped.append(name)
        return dropped

    def prune_staging(self, older_than_seconds: float) -> list[str]:
        """:meth:`prune` on a connection of this hook."""
        conn = self.connect()
        try:
            return self.prune(conn, older_than_seconds)
        finally:
            conn.close()

    # ---- bulk in and out ------------------------------------------------------------------

    @staticmethod
    def columns_of(conn: psycopg.Connection, table: str) -> list[tuple[str, str]]:
        """``[(column, type)]`` of a table or view in column order; empty when it does not exist."""
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
            " ORDER BY a.attnum",
            (sql.SQL(".").join(sql.Identifier(p) for p in table.split(".", 1)).as_string(conn),),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    @staticmethod
    def relation_types(conn: psycopg.Connection, relation: sql.Composable) -> dict[str, str]:
        """``{column: type}`` of a table or temporary table given as a quoted identifier."""
        rows = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(%s)"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (relation.as_string(conn),),
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    @staticmethod
    def copy_rows_in(
        conn: psycopg.Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> int:
        """COPY ``rows`` (sequences in ``columns`` order) into ``table``; return how many."""
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            qualified(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        )
        count = 0
        with conn.cursor().copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
        return count

    @staticmethod
    def copy_frame_in(conn: psycopg.Connection, table: str, frame: Any) -> int:
        """COPY a pandas DataFrame's rows into ``table`` (its columns by name); return how many.

        Missing values (``NaN``, ``NaT``, ``None``) become NULL; numpy scalars become Python values.
        """
        import pandas as pd

        columns = [str(c) for c in frame.columns]
        clean = frame.astype(object).where(pd.notna(frame), None)
        rows = (
            tuple(v.item() if hasattr(v, "item") else v for v in row) for row in clean.itertuples(index=False)
        )
        return CampaignHook.copy_rows_in(conn, table, columns, rows)

    @staticmethod
    def copy_text_in(
        conn: psycopg.Connection,
        table: str,
        columns: Sequence[str],
        chunks: Iterable[bytes],
        options: sql.Composable,
    ) -> None:
        """COPY raw bytes (CSV or text format, described by ``options``) into ``table``."""
        statement = sql.SQL("COPY {} ({}) FROM STDIN WITH ({})").format(
            qualified(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns), options
        )
        with conn.cursor().copy(statement) as copy:
            for chunk in chunks:
                copy.write(chunk)

    def stream_rows(
        self,
        query: sql.SQL | sql.Composed,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        page_size: int = 10_000,
    ) -> Iterator[tuple[Any, ...]]:
        """Yield the rows of ``query`` through a server-side cursor, ``page_size`` at a time."""
        conn = self.connect()
        try:
            with conn.transaction(), conn.cursor(name="campaign_stream") as cur:
                cur.itersize = page_size
                cur.execute(query, params)
                yield from cur
        finally:
            conn.close()
