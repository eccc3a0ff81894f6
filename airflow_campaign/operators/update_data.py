"""UpdateDataOperator: insert, update, upsert or delete rows of a table from a population, set-based."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import psycopg
from psycopg import sql

from airflow_campaign import options as opt
from airflow_campaign import sqlcheck
from airflow_campaign.errors import CampaignError, shown
from airflow_campaign.hooks.campaign import CampaignHook, qualified
from airflow_campaign.operators.base import (
    CampaignBaseOperator,
    check_choice,
    literal_choices,
    run_identity,
    sql_errors,
)
from airflow_campaign.population import Population
from airflow_campaign.resources import Resource, check_not_protected

Operation = Literal["upsert", "insert", "update", "delete"]
Rejects = Literal["fail", "skip", "output"]
Duplicates = Literal["fail", "reject"]

ROW_NUMBER = "_campaign_n"
# the option a failing statement is blamed on
_OPTION_OF = {"matched": "keys", "delete": "keys", "upsert": "fields", "update": "fields", "insert": "fields"}
REASON = "reject_reason"
COUNT_NAMES = ("inserted", "updated", "deleted", "unchanged", "unmatched", "rejected")


@dataclass
class Field:
    """One destination column: its value (a population column or an SQL expression) and condition."""

    column: str
    value: sql.Composable
    source_column: str | None  # set when the value is a plain population column
    when: sql.Composable | None = None


@dataclass
class Plan:
    """What to write where: the destination, reconciliation keys and fields, resolved and checked."""

    table: str
    columns: dict[str, str]
    keys: list[tuple[str, str]]  # (destination column, population column)
    fields: list[Field]
    touch: bool  # set updated_at on written rows
    conflict_ok: bool  # a unique index on the keys lets upsert use INSERT ... ON CONFLICT
    notes: list[str] = field(default_factory=list)

    @property
    def ident(self) -> sql.Composable:
        return qualified(self.table)


def _field_specs(option: str, value: Any) -> dict[str, Any]:
    """``fields``: ``{column: value}``, each value a string (a population column or an SQL
    expression) or ``{"value": ..., "when": ...}``."""
    fields = opt.mapping(option, value)
    for name, spec in fields.items():
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"value", "when"}
            if unknown or not isinstance(spec.get("value"), str):
                raise CampaignError(
                    f"{option}[{name!r}]: a conditional field is {{'value': ..., 'when': ...}} with a string "
                    f"value; got {shown(dict(spec))}."
                )
            if spec.get("when") is not None and not isinstance(spec["when"], str):
                raise CampaignError(
                    f"{option}[{name!r}].when={shown(spec['when'])}: give an SQL condition (a string)."
                )
        elif not isinstance(spec, str):
            raise CampaignError(
                f"{option}[{name!r}]={shown(spec)}: give a population column, an SQL expression, or "
                "{'value': ..., 'when': ...}."
            )
    return fields


class UpdateDataOperator(CampaignBaseOperator):
    """Write a population into a table: insert, update, upsert or delete, by reconciliation keys.

    :param population: the rows to write (a Population, its dict, an XComArg, a list of dicts
        or a DataFrame).
    :param table: the destination table, ``"schema.table"``.
    :param resource: the destination as a resource name (``"profiles"``), instead of ``table``.
        Default (neither given): the population's own resource.
    :param operation: ``"upsert"`` (default: update the rows that reconcile, insert the
        others), ``"insert"`` (only rows that reconcile with no existing row), ``"update"``
        (only existing rows) or ``"delete"`` (remove the rows that reconcile).
    :param keys: reconciliation keys: destination column names the population also has
        (``["email"]``), or ``{destination_column: population_column}``. Default: the
        resource's key, when writing back into the population's own resource.
    :param fields: ``{destination_column: value}``; a value is a population column name, an SQL
        expression over ``src`` (the population row) and ``dest`` (the existing row), or
        ``{"value": ..., "when": SQL condition}`` to change the column only when the condition
        holds. Default: every population column whose name is a destination column. Each
        expression and condition is checked alone to be one SQL expression.
    :param parameters: values for ``%(name)s`` placeholders in the ``fields`` expressions and
        conditions (one dict for all of them; a literal ``%`` is then written ``%%``), e.g.
        ``fields={"tier": "%(tier)s"}, parameters={"tier": "{{ dag_run.conf['tier'] }}"}``.
    :param batch_size: commit every ``batch_size`` rows (in key order); a retried try resumes
        after the last committed batch. Default: one transaction for everything.
    :param rejects: rows that cannot be written (missing key, a value that does not convert to
        the column's type, NULL for a NOT NULL column, duplicate key): ``"fail"`` (default: the
        task fails naming them, nothing is written), ``"skip"`` (count them and go on) or
        ``"output"`` (also pass them on as a population, XCom key ``rejects``).
    :param duplicates: a key found on several input rows: ``"fail"`` (default) or ``"reject"``
        (every row of that key is rejected). Keep one row per key upstream with
        DeduplicationOperator to choose which.
    :param set_updated_at: set the destination's ``updated_at`` column, when it has one and
        ``fields`` does not map it, to the time of the write (default True).
    """

    template_fields: Sequence[str] = ("population", "table", "resource", "keys", "fields", "parameters")
    ui_color = "#fde9c9"

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "table": opt.optional(opt.name),
        "resource": opt.optional(opt.name),
        "keys": opt.optional(opt.names_or_mapping),
        "fields": opt.optional(_field_specs),
        "batch_size": opt.optional(opt.integer(1)),
        "set_updated_at": opt.flag,
    }

    def __init__(
        self,
        *,
        population: Any,
        table: str | None = None,
        resource: str | None = None,
        operation: Operation = "upsert",
        keys: Sequence[str] | Mapping[str, str] | None = None,
        fields: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        rejects: Rejects = "fail",
        duplicates: Duplicates = "fail",
        set_updated_at: bool = True,
        parameters: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("operation", operation, literal_choices(Operation))
        check_choice("rejects", rejects, literal_choices(Rejects))
        check_choice("duplicates", duplicates, literal_choices(Duplicates))
        if table and resource:
            raise CampaignError("table/resource: give one destination, not both.")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise CampaignError(f"batch_size={batch_size!r}: give a whole number of rows >= 1, or None.")
        if operation == "delete" and fields:
            raise CampaignError("fields: a delete writes no field; leave fields out (keys choose the rows).")
        if isinstance(fields, Mapping):  # each value's shape, also when one of them is templated
            _field_specs("fields", fields)
        self.population = population
        self.table = table
        self.resource = resource
        self.operation = operation
        self.keys = keys
        self.fields = fields
        self.batch_size = batch_size
        self.rejects = rejects
        self.duplicates = duplicates
        self.set_updated_at = set_updated_at
        self.parameters = parameters
        sqlcheck.check_at_parse(self.sql_options(), parameters)

    def sql_options(self) -> list[tuple[sqlcheck.Check, str, Any]]:
        """The ``fields`` expressions and conditions, checked before the population is read.

        A value that could name a population column (``"First Name"``) is no SQL if it does:
        it is checked once the population's columns are known (in ``_fields``).
        """
        out: list[tuple[sqlcheck.Check, str, Any]] = []
        for name, spec in self.fields.items() if isinstance(self.fields, Mapping) else ():
            value, when = (spec.get("value"), spec.get("when")) if isinstance(spec, Mapping) else (spec, None)
            if not _maybe_column(value):
                out.append((sqlcheck.expression, f"fields[{name!r}]", value))
            out.append((sqlcheck.expression, f"fields[{name!r}].when", when))
        return out

    # ---- execution ------------------------------------------------------------------------

    def execute(self, context: Any) -> dict[str, Any]:
        sqlcheck.check_at_run(self.sql_options(), self.parameters)
        if self.batch_size is None:
            result = self.run_in_transaction(lambda conn: self._write_at_once(conn, context))
        else:
            result = self._write_in_batches(context)
        rejects = result.pop("rejects_population", None)
        if rejects is not None:
            context["ti"].xcom_push(key="rejects", value=rejects)
        self.log.info(
            "%s: %s into %s: %s",
            self.task_id,
            self.operation,
            result["table"],
            ", ".join(f"{n} {result[n]}" for n in COUNT_NAMES),
        )
        return result

    def _write_at_once(self, conn: psycopg.Connection, context: Any) -> dict[str, Any]:
        ((pop, rel),) = self.inputs(conn, [self.population], "population")
        self.check_empty(pop, "population")
        plan = self._plan(conn, pop)
        if not pop.count:
            return self._result(plan, pop, {}, None)
        self._validate(conn, plan, rel)
        source, counts, rejects = self._screen(conn, context, plan, pop, rel)
        accepted = pop.count - counts["rejected"]
        counts.update(self._apply(conn, plan, source, None, accepted))
        return self._result(plan, pop, counts, rejects)

    def _write_in_batches(self, context: Any) -> dict[str, Any]:
        assert self.batch_size is not None
        ident = run_identity(context)
        conn = self.autocommit_connection()
        try:
            with conn.transaction():
                self.require_schema(conn)
                ((pop, rel),) = self.inputs(conn, [self.population], "population")
                self.check_empty(pop, "population")
                plan = self._plan(conn, pop)
                if not pop.count:
                    return self._result(plan, pop, {}, None)
                signature = self._signature(conn, pop)
                progress = _read_progress(conn, ident)
                resume = (
                    progress is not None
                    and progress["input_signature"] == signature
                    and CampaignHook.columns_of(conn, progress["work_table"])
                    and _row_count(conn, progress["work_table"]) == progress["total_rows"]
                )
                if resume:
                    assert progress is not None
                    self.log.info(
                        "%s: resuming after row %d of %d (a previous try committed them)",
                        self.task_id,
                        progress["done_through"],
                        progress["total_rows"],
                    )
                else:
                    self._validate(conn, plan, rel)
                    progress = self._prepare_work(conn, context, plan, pop, rel, signature)
            work = qualified(progress["work_table"])
            counts = {n: int(progress["counts"].get(n, 0)) for n in COUNT_NAMES}
            total, done = int(progress["total_rows"]), int(progress["done_through"])
            started, first = time.monotonic(), done
            while done < total:
                upper = min(done + self.batch_size, total)
                try:
                    with conn.transaction():
                        batch = self._apply(conn, plan, work, (done, upper), upper - done)
                        for name, value in batch.items():
                            counts[name] += value
                        conn.execute(
                            "UPDATE campaign.update_progress SET done_through = %s, counts = %s, updated_at = now()"
                            " WHERE dag_id = %s AND task_id = %s AND run_id = %s AND map_index = %s",
                            (upper, json.dumps({**progress["counts"], **counts}), *ident.values()),
                        )
                except CampaignError as exc:
                    raise CampaignError(_batch_failed(str(exc), done, upper, total)) from exc
                done = upper
                _log_progress(self.log, self.task_id, done - first, total - first, started)
            with conn.transaction():
                conn.execute(
                    "UPDATE campaign.update_progress SET finished_at = coalesce(finished_at, now())"
                    " WHERE dag_id = %s AND task_id = %s AND run_id = %s AND map_index = %s",
                    tuple(ident.values()),
                )
            rejects = progress["counts"].get("rejects_population")
            return self._result(plan, pop, counts, Population.from_value(rejects) if rejects else None)
        finally:
            conn.close()

    # ---- planning -------------------------------------------------------------------------

    def _plan(self, conn: psycopg.Connection, pop: Population) -> Plan:
        """Resolve the destination, keys and fields; a clear error for anything unknown."""
        if self.table:
            table = self.table if "." in self.table else f"public.{self.table}"
            check_not_protected(conn, "table", self.table, table)
            columns = dict(CampaignHook.columns_of(conn, table))
            if not columns:
                raise CampaignError(
                    f"table={self.table!r}: no such table in the campaign database; name an existing "
                    "table as 'schema.table'."
                )
            own_key = None
        else:
            name = self.resource or pop.resource
            if not name:
                raise CampaignError(
                    "table/resource: the population has no resource to write back to; give table= "
                    "or resource= naming the destination."
                )
            res = Resource.resolve(conn, name)
            table, columns, own_key = res.table, res.columns, res.key
        option = "table" if self.table else "resource"
        keys = self._keys(pop, table, columns, own_key)
        fields = self._fields(pop, table, columns, keys)
        if self.operation in ("upsert", "update") and not fields and pop.count:
            raise CampaignError(
                f"fields: no population column {pop.columns} is a column of {table} besides the keys, so "
                "there is nothing to update; map them with fields={destination: source}."
            )
        touch = (
            self.set_updated_at
            and "updated_at" in columns
            and all(f.column != "updated_at" for f in fields)
            and self.operation != "delete"
        )
        conflict_ok = (
            self.operation == "upsert"
            and bool(keys)
            and all(f.source_column is not None and f.when is None for f in fields)
            and _unique_index_on(conn, table, [d for d, _ in keys])
        )
        plan = Plan(table, columns, keys, fields, touch, conflict_ok)
        self.log.info(
            "%s: %s %s (%s) by %s; fields %s",
            self.task_id,
            self.operation,
            table,
            option,
            [d for d, _ in keys] or "no keys",
            [f.column for f in fields],
        )
        return plan

    def _keys(
        self, pop: Population, table: str, columns: Mapping[str, str], own_key: str | None
    ) -> list[tuple[str, str]]:
        if self.keys is None:
            if own_key is not None and (self.resource is None or self.resource == pop.resource):
                pairs = [(own_key, pop.key)]
            elif self.operation == "insert":
                return []
            else:
                raise CampaignError(
                    f"keys: {self.operation} into {table} needs reconciliation keys; give keys=['column'] "
                    "or keys={'destination_column': 'population_column'}."
                )
        elif isinstance(self.keys, Mapping):
            pairs = [(str(d), str(s)) for d, s in self.keys.items()]
        else:
            pairs = [(str(k), str(k)) for k in self.keys]
        if not pairs and self.operation != "insert":
            raise CampaignError(f"keys: {self.operation} needs at least one reconciliation key.")
        unknown_dest = [d for d, _ in pairs if d not in columns]
        if unknown_dest:
            raise CampaignError(
                f"keys: unknown column(s) {unknown_dest} in {table}; available: {sorted(columns)}."
            )
        unknown_src = [s for _, s in pairs if s not in pop.columns]
        if unknown_src:
            raise CampaignError(
                f"keys: the population has no column(s) {unknown_src} (columns: {pop.columns}); carry "
                "them upstream, or map keys={'destination_column': 'population_column'}."
            )
        return pairs

    def _fields(
        self, pop: Population, table: str, columns: Mapping[str, str], keys: list[tuple[str, str]]
    ) -> list[Field]:
        key_dest = {d for d, _ in keys}
        if self.operation == "delete":
            return []
        if self.fields is None:
            mapped = {c: c for c in pop.columns if c in columns and c not in key_dest}
        else:
            mapped = dict(self.fields)
        unknown = [c for c in mapped if c not in columns]
        if unknown:
            raise CampaignError(
                f"fields: unknown destination column(s) {unknown} in {table}; available: {sorted(columns)}."
            )
        clash = [c for c in mapped if c in key_dest]
        if clash:
            raise CampaignError(f"fields: {clash} are reconciliation keys; a key is matched, not written.")
        out = []
        for column, spec in mapped.items():
            value, when = (spec["value"], spec.get("when")) if isinstance(spec, Mapping) else (spec, None)
            plain = value if value in pop.columns else None
            option = f"fields[{column!r}]"
            expr: sql.Composable = (
                sql.SQL("src.{}").format(sql.Identifier(value))
                if plain
                else sqlcheck.expression(option, value, self.parameters)
            )
            condition = sqlcheck.expression(f"{option}.when", when, self.parameters) if when else None
            out.append(Field(column, expr, plain, condition))
        return out

    def _signature(self, conn: psycopg.Connection, pop: Population) -> str:
        """What identifies this input, so a retry resumes only on the same rows."""
        if pop.kind == "table":
            row = conn.execute(
                "SELECT updated_at FROM campaign.staging_tables WHERE table_name = %s", (pop.table,)
            ).fetchone()
            return f"{pop.table}|{pop.count}|{row[0].isoformat() if row else ''}"
        digest = hashlib.sha256(json.dumps(pop.rows, sort_keys=True, default=str).encode()).hexdigest()
        return f"inline|{pop.count}|{digest}"

    # ---- checks ---------------------------------------------------------------------------

    def _validate(self, conn: psycopg.Connection, plan: Plan, rel: sql.Composable) -> None:
        """Plan (EXPLAIN) every statement on the real source: bad SQL fails before any write."""
        for label, statement in self._statements(plan, rel, None):
            with sql_errors(_OPTION_OF[label]):
                conn.execute(sql.SQL("EXPLAIN {}").format(statement))

    def _reasons(self, conn: psycopg.Connection, plan: Plan, rel: sql.Composable) -> sql.Composable:
        """A CASE naming why a source row cannot be written (NULL when it can)."""
        checks: list[tuple[sql.Composable, str]] = []
        for dest, src in plan.keys:
            checks.append((sql.SQL("src.{} IS NULL").format(sql.Identifier(src)), f"missing {dest}"))
        typed = conn.info.server_version >= 160000
        source_types = CampaignHook.relation_types(conn, rel)
        pairs = [(d, s) for d, s in plan.keys] + [
            (f.column, f.source_column) for f in plan.fields if f.source_column
        ]
        for dest, src in pairs:
            dest_type = plan.columns[dest]
            if typed and source_types.get(src) != dest_type:
                checks.append(
                    (
                        sql.SQL("src.{c} IS NOT NULL AND NOT pg_input_is_valid(src.{c}::text, {t})").format(
                            c=sql.Identifier(src), t=sql.Literal(dest_type)
                        ),
                        f"invalid {dest}",
                    )
                )
        if self.operation != "delete":
            required = _not_null_columns(conn, plan.table)
            for f in plan.fields:
                if f.source_column and f.column in required:
                    checks.append(
                        (
                            sql.SQL("src.{} IS NULL").format(sql.Identifier(f.source_column)),
                            f"missing {f.column}",
                        )
                    )
        if self.duplicates == "reject" and plan.keys and self.operation != "delete":
            srcs = sql.SQL(", ").join(sql.SQL("d.{}").format(sql.Identifier(s)) for _, s in plan.keys)
            row = sql.SQL(", ").join(sql.SQL("src.{}").format(sql.Identifier(s)) for _, s in plan.keys)
            checks.append(
                (
                    sql.SQL("({}) IN (SELECT {} FROM {} d GROUP BY {} HAVING count(*) > 1)").format(
                        sql.SQL("ROW({})").format(row) if len(plan.keys) > 1 else row, srcs, rel, srcs
                    ),
                    "duplicate key",
                )
            )
        if not checks:
            return sql.SQL("NULL::text")
        return sql.SQL("CASE {} END").format(
            sql.SQL(" ").join(sql.SQL("WHEN {} THEN {}").format(c, sql.Literal(r)) for c, r in checks)
        )

    def _screen(
        self,
        conn: psycopg.Connection,
        context: Any,
        plan: Plan,
        pop: Population,
        rel: sql.Composable,
        *,
        batched: bool = False,
    ) -> tuple[sql.Composable, dict[str, int], Population | None]:
        """Split off the rejected rows; return the relation to write from, counts and rejects."""
        reason = self._reasons(conn, plan, rel)
        rejected = 0
        if reason.as_string(conn) != "NULL::text":
            row = conn.execute(
                sql.SQL("SELECT count(*) FILTER (WHERE ({}) IS NOT NULL) FROM {} src").format(reason, rel)
            ).fetchone()
            rejected = int(row[0]) if row else 0
        counts = {n: 0 for n in COUNT_NAMES}
        counts["rejected"] = rejected
        # INSERT ... ON CONFLICT finds duplicates itself (in one statement, not across batches)
        if (
            self.duplicates == "fail"
            and plan.keys
            and self.operation != "delete"
            and (batched or not plan.conflict_ok)
        ):
            self._fail_on_duplicates(conn, plan, rel, reason)
        if not rejected:
            return rel, counts, None
        if self.rejects == "fail":
            self._fail_on_rejects(conn, plan, rel, reason, rejected)
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE update_accepted ON COMMIT DROP AS SELECT src.* FROM {} src WHERE ({}) IS NULL"
            ).format(rel, reason)
        )
        conn.execute("ANALYZE update_accepted")
        rejects = None
        if self.rejects == "output":
            rejects = self.save(
                conn,
                context,
                sql.SQL("SELECT src.*, {} AS {} FROM {} src WHERE ({}) IS NOT NULL").format(
                    reason, sql.Identifier(REASON), rel, reason
                ),
                key=pop.key,
                resource=pop.resource,
                suffix="rejects",
                option="rejects",
            )
        return sql.Identifier("update_accepted"), counts, rejects

    def _fail_on_rejects(
        self, conn: psycopg.Connection, plan: Plan, rel: sql.Composable, reason: sql.Composable, rejected: int
    ) -> None:
        keys = [s for _, s in plan.keys] or list(CampaignHook.relation_types(conn, rel))[:1]
        sample = conn.execute(
            sql.SQL("SELECT {}, ({}) FROM {} src WHERE ({}) IS NOT NULL ORDER BY 1 LIMIT 5").format(
                sql.SQL(", ").join(sql.SQL("src.{}").format(sql.Identifier(k)) for k in keys),
                reason,
                rel,
                reason,
            )
        ).fetchall()
        shown = "; ".join(
            ", ".join(f"{k}={v!r}" for k, v in zip(keys, r[:-1], strict=True)) + f": {r[-1]}" for r in sample
        )
        raise CampaignError(
            f"rejects='fail': {rejected} row(s) cannot be written to {plan.table} (first: {shown}). Nothing "
            "was written; fix the input, or use rejects='skip' or 'output' to write the other rows."
        )

    def _fail_on_duplicates(
        self, conn: psycopg.Connection, plan: Plan, rel: sql.Composable, reason: sql.Composable
    ) -> None:
        srcs = sql.SQL(", ").join(sql.SQL("src.{}").format(sql.Identifier(s)) for _, s in plan.keys)
        dups = conn.execute(
            sql.SQL(
                "SELECT {}, count(*) FROM {} src WHERE ({}) IS NULL GROUP BY {} HAVING count(*) > 1 ORDER BY 1 LIMIT 5"
            ).format(srcs, rel, reason, srcs)
        ).fetchall()
        if dups:
            raise _duplicates_error(plan, [(r[:-1], r[-1]) for r in dups])

    # ---- writing --------------------------------------------------------------------------

    def _prepare_work(
        self,
        conn: psycopg.Connection,
        context: Any,
        plan: Plan,
        pop: Population,
        rel: sql.Composable,
        signature: str,
    ) -> dict[str, Any]:
        """Materialise the accepted rows, numbered in key order, and record the batch progress."""
        ident = run_identity(context)
        source, counts, rejects = self._screen(conn, context, plan, pop, rel, batched=True)
        order = [s for _, s in plan.keys] or [pop.key]
        work = self.save(
            conn,
            context,
            sql.SQL("SELECT src.*, row_number() OVER (ORDER BY {}) AS {} FROM {} src").format(
                sql.SQL(", ").join(sql.SQL("src.{}").format(sql.Identifier(c)) for c in order),
                sql.Identifier(ROW_NUMBER),
                source,
            ),
            key=pop.key,
            resource=pop.resource,
            suffix="work",
            option="population",
        )
        assert work.table is not None
        conn.execute(
            sql.SQL("CREATE INDEX ON {} ({})").format(qualified(work.table), sql.Identifier(ROW_NUMBER))
        )
        conn.execute(sql.SQL("ANALYZE {}").format(qualified(work.table)))
        stored = {**counts, "rejects_population": rejects.to_dict() if rejects else None}
        conn.execute(
            "INSERT INTO campaign.update_progress AS p (dag_id, task_id, run_id, map_index, work_table,"
            " input_signature, total_rows, done_through, counts)"
            " VALUES (%(dag_id)s, %(task_id)s, %(run_id)s, %(map_index)s, %(work)s, %(sig)s, %(total)s, 0, %(counts)s)"
            " ON CONFLICT (dag_id, task_id, run_id, map_index) DO UPDATE SET work_table = EXCLUDED.work_table,"
            " input_signature = EXCLUDED.input_signature, total_rows = EXCLUDED.total_rows, done_through = 0,"
            " counts = EXCLUDED.counts, finished_at = NULL, updated_at = now()",
            {
                **ident,
                "work": work.table,
                "sig": signature,
                "total": work.count,
                "counts": json.dumps(stored),
            },
        )
        return {
            "work_table": work.table,
            "total_rows": work.count,
            "done_through": 0,
            "counts": stored,
            "input_signature": signature,
        }

    def _apply(
        self,
        conn: psycopg.Connection,
        plan: Plan,
        source: sql.Composable,
        batch: tuple[int, int] | None,
        rows: int,
    ) -> dict[str, int]:
        """Run the operation's statements on ``source`` (rows ``batch`` of a work table); return counts."""
        results: dict[str, tuple[int, ...]] = {}
        for label, statement in self._statements(plan, source, batch):
            try:
                with conn.transaction(), sql_errors(_OPTION_OF[label]):
                    row = conn.execute(statement).fetchone()
            except CampaignError as exc:
                if isinstance(exc.__cause__, psycopg.errors.CardinalityViolation):
                    self._fail_on_duplicates(conn, plan, source, sql.SQL("NULL"))  # raises, naming them
                raise
            results[label] = tuple(int(v) for v in row) if row else (0, 0)
        counts = {n: 0 for n in COUNT_NAMES if n != "rejected"}
        if "upsert" in results:
            counts["inserted"], counts["updated"] = results["upsert"][:2]
        counts["inserted"] += results.get("insert", (0,))[0]
        counts["updated"] += results.get("update", (0,))[0]
        counts["deleted"] = results.get("delete", (0,))[0]
        if self.operation in ("upsert", "insert"):
            counts["unchanged"] = rows - counts["inserted"] - counts["updated"]
        else:
            matched = results["matched"][0]
            counts["unchanged"] = matched - counts["updated"] if self.operation == "update" else 0
            counts["unmatched"] = rows - matched
        return counts

    def _statements(
        self, plan: Plan, source: sql.Composable, batch: tuple[int, int] | None
    ) -> list[tuple[str, sql.Composed]]:
        """``(label, statement)`` pairs, each returning one row of counts, in execution order."""
        src = (
            sql.SQL("(SELECT * FROM {} w WHERE w.{n} > {lo} AND w.{n} <= {hi})").format(
                source, n=sql.Identifier(ROW_NUMBER), lo=sql.Literal(batch[0]), hi=sql.Literal(batch[1])
            )
            if batch
            else source
        )
        match = sql.SQL(" AND ").join(
            sql.SQL("dest.{} = src.{}").format(sql.Identifier(d), sql.Identifier(s)) for d, s in plan.keys
        )
        statements: list[tuple[str, sql.Composed]] = []
        if self.operation in ("update", "delete"):
            statements.append(
                (
                    "matched",
                    sql.SQL(
                        "SELECT count(*) FROM {} src WHERE EXISTS (SELECT 1 FROM {} dest WHERE {})"
                    ).format(src, plan.ident, match),
                )
            )
        if self.operation == "delete":
            statements.append(
                (
                    "delete",
                    sql.SQL(
                        "WITH d AS (DELETE FROM {} dest USING {} src WHERE {} RETURNING 1) SELECT count(*) FROM d"
                    ).format(plan.ident, src, match),
                )
            )
            return statements
        if plan.conflict_ok:
            statements.append(("upsert", self._upsert_statement(plan, src)))
            return statements
        if self.operation in ("update", "upsert"):
            statements.append(("update", self._update_statement(plan, src, match)))
        if self.operation in ("insert", "upsert"):
            statements.append(("insert", self._insert_statement(plan, src, match)))
        return statements

    def _cast(self, plan: Plan, f: Field) -> sql.Composable:
        return sql.SQL("({})::{}").format(f.value, sql.SQL(plan.columns[f.column]))

    def _inserted(self, plan: Plan) -> tuple[list[str], list[sql.Composable]]:
        """Columns and values of an inserted row: keys, fields and updated_at."""
        key_fields = [Field(d, sql.SQL("src.{}").format(sql.Identifier(s)), s) for d, s in plan.keys]
        columns = [f.column for f in key_fields + plan.fields]
        values: list[sql.Composable] = [self._cast(plan, f) for f in key_fields + plan.fields]
        if plan.touch:
            columns.append("updated_at")
            values.append(sql.SQL("now()"))
        return columns, values

    def _upsert_statement(self, plan: Plan, src: sql.Composable) -> sql.Composed:
        """INSERT ... ON CONFLICT (keys) DO UPDATE ... WHERE something changed."""
        columns, values = self._inserted(plan)
        sets: list[sql.Composable] = [
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(f.column)) for f in plan.fields
        ]
        if plan.touch:
            sets.append(sql.SQL("updated_at = EXCLUDED.updated_at"))
        return sql.SQL(
            "WITH w AS (INSERT INTO {table} AS dest ({cols}) SELECT {vals} FROM {src} src"
            " ON CONFLICT ({keys}) DO UPDATE SET {sets} WHERE {changed} RETURNING (xmax = 0) AS inserted)"
            " SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM w"
        ).format(
            table=plan.ident,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            vals=sql.SQL(", ").join(values),
            src=src,
            keys=sql.SQL(", ").join(sql.Identifier(d) for d, _ in plan.keys),
            sets=sql.SQL(", ").join(sets),
            changed=_distinct(
                [sql.SQL("dest.{}").format(sql.Identifier(f.column)) for f in plan.fields],
                [sql.SQL("EXCLUDED.{}").format(sql.Identifier(f.column)) for f in plan.fields],
            ),
        )

    def _update_statement(self, plan: Plan, src: sql.Composable, match: sql.Composable) -> sql.Composed:
        """UPDATE ... FROM the source, writing only rows where a value changes."""
        new_values = []
        for f in plan.fields:
            value = self._cast(plan, f)
            if f.when is not None:
                value = sql.SQL("CASE WHEN {} THEN {} ELSE dest.{} END").format(
                    f.when, value, sql.Identifier(f.column)
                )
            new_values.append(value)
        sets: list[sql.Composable] = [
            sql.SQL("{} = {}").format(sql.Identifier(f.column), v)
            for f, v in zip(plan.fields, new_values, strict=True)
        ]
        if plan.touch:
            sets.append(sql.SQL("updated_at = now()"))
        changed = _distinct(
            [sql.SQL("dest.{}").format(sql.Identifier(f.column)) for f in plan.fields], new_values
        )
        return sql.SQL(
            "WITH u AS (UPDATE {table} dest SET {sets} FROM {src} src WHERE {match} AND {changed} RETURNING 1)"
            " SELECT count(*) FROM u"
        ).format(table=plan.ident, sets=sql.SQL(", ").join(sets), src=src, match=match, changed=changed)

    def _insert_statement(self, plan: Plan, src: sql.Composable, match: sql.Composable) -> sql.Composed:
        """INSERT the source rows that reconcile with no existing row (all rows, without keys).

        Field expressions may name ``dest``: for a new row its columns are all NULL.
        """
        columns, values = self._inserted(plan)
        missing = (
            sql.SQL(" WHERE NOT EXISTS (SELECT 1 FROM {} dest WHERE {})").format(plan.ident, match)
            if plan.keys
            else sql.SQL("")
        )
        return sql.SQL(
            "WITH i AS (INSERT INTO {table} ({cols}) SELECT {vals} FROM {src} src"
            " LEFT JOIN (SELECT * FROM {table} WHERE false) dest ON false{missing} RETURNING 1)"
            " SELECT count(*) FROM i"
        ).format(
            table=plan.ident,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            vals=sql.SQL(", ").join(values),
            src=src,
            missing=missing,
        )

    def _result(
        self, plan: Plan, pop: Population, counts: dict[str, int], rejects: Population | None
    ) -> dict[str, Any]:
        return {
            "table": plan.table,
            "operation": self.operation,
            **{n: counts.get(n, 0) for n in COUNT_NAMES},
            "population": pop.to_dict(),
            "rejects_population": rejects.to_dict() if rejects else None,
        }


# ---- helpers ----------------------------------------------------------------------------------


def _maybe_column(value: Any) -> bool:
    """Whether ``value`` could name a population column rather than be SQL (nothing SQL-only in it)."""
    return (
        isinstance(value, str)
        and value.strip() == value
        and not any(mark in value for mark in (";", "(", ")", "'", '"', "--", "/*", "%"))
    )


def _distinct(old: list[sql.Composable], new: list[sql.Composable]) -> sql.Composable:
    """``(old...) IS DISTINCT FROM (new...)``, written so one column works too."""
    if len(old) == 1:
        return sql.SQL("{} IS DISTINCT FROM {}").format(old[0], new[0])
    return sql.SQL("ROW({}) IS DISTINCT FROM ROW({})").format(
        sql.SQL(", ").join(old), sql.SQL(", ").join(new)
    )


def _duplicates_error(plan: Plan, dups: list[tuple[tuple[Any, ...], int]]) -> CampaignError:
    names = [s for _, s in plan.keys]
    shown = "; ".join(
        ", ".join(f"{n}={v!r}" for n, v in zip(names, key, strict=True)) + f" ({n} rows)" for key, n in dups
    )
    return CampaignError(
        f"duplicates='fail': the population has several rows for one key (first: {shown}), so which "
        "values to write is ambiguous. Nothing was written; keep one row per key upstream "
        "(DeduplicationOperator with prefer=...), or use duplicates='reject'."
    )


def _unique_index_on(conn: psycopg.Connection, table: str, columns: list[str]) -> bool:
    """True when a valid, non-partial unique index (or primary key) covers exactly ``columns``."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass(%s) AND i.indisunique"
        " AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL"
        " AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a"
        "      WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)) = %s::text[]"
        " AND i.indnkeyatts = cardinality(%s::text[]))",
        (qualified(table).as_string(conn), sorted(columns), columns),
    ).fetchone()
    return bool(row and row[0])


def _not_null_columns(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
        " AND NOT attisdropped AND attnotnull",
        (qualified(table).as_string(conn),),
    ).fetchall()
    return {r[0] for r in rows}


def _row_count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(qualified(table))).fetchone()
    return int(row[0]) if row else 0


def _read_progress(conn: psycopg.Connection, ident: dict[str, Any]) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT work_table, input_signature, total_rows, done_through, counts FROM campaign.update_progress"
        " WHERE dag_id = %s AND task_id = %s AND run_id = %s AND map_index = %s FOR UPDATE",
        tuple(ident.values()),
    ).fetchone()
    if row is None:
        return None
    names = ("work_table", "input_signature", "total_rows", "done_through", "counts")
    return dict(zip(names, row, strict=True))


def _log_progress(log: Any, task_id: str, done: int, total: int, started: float) -> None:
    elapsed = max(time.monotonic() - started, 1e-9)
    rate = done / elapsed
    eta = (total - done) / rate if rate else 0.0
    log.info("%s: %d/%d rows (%.0f rows/s, ETA %.0fs)", task_id, done, total, rate, eta)


def _batch_failed(message: str, done: int, upper: int, total: int) -> str:
    """A batch's error, saying what earlier batches committed (the batch itself rolled back)."""
    if done == 0:
        return message
    message = message.replace("Nothing was written; ", "").replace("Nothing was written. ", "")
    return (
        f"{message} Rows 1 to {done:,} of {total:,} were written and committed by earlier batches; rows "
        f"{done + 1:,} to {upper:,} (this batch) were rolled back. A retry with the same input resumes after "
        f"row {done:,}; clear the task after fixing the cause."
    )
