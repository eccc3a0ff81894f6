"""Subscription services: subscribe or unsubscribe a population's profiles, one event per change."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from airflow_campaign import options as opt
from airflow_campaign.errors import CampaignError
from airflow_campaign.hooks.campaign import CampaignHook
from airflow_campaign.operators.base import (
    CampaignBaseOperator,
    check_choice,
    literal_choices,
    run_identity,
    sql_errors,
)
from airflow_campaign.population import Population

Operation = Literal["subscribe", "unsubscribe"]
Duplicates = Literal["latest", "fail"]
Rejects = Literal["skip", "fail"]

_WORK = sql.Identifier("subscription_work")
_CHANGES = sql.Identifier("subscription_changes")
_SAMPLE = 5
_INTEGERS = {"smallint", "integer", "bigint"}
_NUMBERS = _INTEGERS | {"numeric", "real", "double precision"}
_TEXTS = {"text", "character varying", "character"}
_DATES = {"timestamp with time zone", "timestamp without time zone", "date"} | _TEXTS


class SubscriptionServicesOperator(CampaignBaseOperator):
    """Subscribe profiles to a subscription service, or unsubscribe them, recording every change.

    :param population: a population of profiles (resource ``profiles``, key ``id``).
    :param service: the service's name, the same for every row (templated).
    :param service_column: instead of ``service``: the population column naming each row's service.
    :param operation: ``"subscribe"`` or ``"unsubscribe"``, the same for every row.
    :param operation_column: instead of ``operation``: a boolean, integer or text column holding
        1/true (subscribe) or 0/false (unsubscribe) per row; any other value, NULL included,
        fails the task before anything is written.
    :param date_column: the date of each row's change (timestamptz, timestamp, date, or text
        holding one); NULL, or no column, is the time of the task's transaction.
    :param origin: the origin recorded with each change (templated); default
        ``"<dag_id>.<task_id>"``.
    :param origin_column: instead of ``origin``: the population column holding each row's origin.
    :param duplicates: when a profile appears more than once for one service: ``"latest"``
        keeps the row with the latest date (at equal dates an unsubscribe wins over a subscribe,
        then the smallest origin); ``"fail"`` fails the task.
    :param rejects: rows whose id is NULL or names no profile: ``"skip"`` counts them as
        ``rejected`` and goes on, ``"fail"`` fails the task.

    Subscribing a subscriber and unsubscribing a non-subscriber change nothing. Every change
    appends a row to ``campaign.subscription_events``. Returns the counts ``{"rows",
    "subscribed", "unsubscribed", "unchanged", "rejected", "duplicates"}`` and pushes the
    profiles whose subscription changed to XCom under the key ``changed`` (a population with
    columns ``id``, ``service``, ``operation``, ``event_at``). A re-run of the same task
    instance reports the changes its earlier tries made, and writes nothing twice.
    """

    template_fields: Sequence[str] = ("population", "service", "origin")

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "service": opt.optional(opt.name),
        "service_column": opt.optional(opt.name),
        "operation_column": opt.optional(opt.name),
        "date_column": opt.optional(opt.name),
        "origin": opt.optional(opt.text),
        "origin_column": opt.optional(opt.name),
    }

    def __init__(
        self,
        *,
        population: Any,
        service: str | None = None,
        service_column: str | None = None,
        operation: Operation | None = None,
        operation_column: str | None = None,
        date_column: str | None = None,
        origin: str | None = None,
        origin_column: str | None = None,
        duplicates: Duplicates = "latest",
        rejects: Rejects = "skip",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _exactly_one("service", service, "service_column", service_column, '"newsletter"')
        _exactly_one("operation", operation, "operation_column", operation_column, '"subscribe"')
        if operation is not None:
            check_choice("operation", operation, literal_choices(Operation))
        if origin is not None and origin_column is not None:
            raise CampaignError(
                f"origin={origin!r} and origin_column={origin_column!r}: give one of them (or neither, "
                "for the default origin '<dag_id>.<task_id>')."
            )
        for option, value in (
            ("service_column", service_column),
            ("operation_column", operation_column),
            ("date_column", date_column),
            ("origin_column", origin_column),
        ):
            if value is not None and (not isinstance(value, str) or not value):
                raise CampaignError(f"{option}={value!r}: give the name of a column of the population.")
        check_choice("duplicates", duplicates, literal_choices(Duplicates))
        check_choice("rejects", rejects, literal_choices(Rejects))
        self.population = population
        self.service = service
        self.service_column = service_column
        self.operation = operation
        self.operation_column = operation_column
        self.date_column = date_column
        self.origin = origin
        self.origin_column = origin_column
        self.duplicates = duplicates
        self.rejects = rejects

    def execute(self, context: Any) -> dict[str, int]:
        counts, changed, replayed = self.run_in_transaction(lambda conn: self._apply(conn, context))
        context["ti"].xcom_push(key="changed", value=changed.to_dict())
        self.log.info(
            "%s: %d row(s): %d subscribed, %d unsubscribed, %d unchanged, %d rejected (no such profile), "
            "%d duplicate(s) dropped%s",
            self.task_id,
            counts["rows"],
            counts["subscribed"],
            counts["unsubscribed"],
            counts["unchanged"],
            counts["rejected"],
            counts["duplicates"],
            f"; {replayed} change(s) made by an earlier try of this task instance" if replayed else "",
        )
        return counts

    # ---- one transaction ------------------------------------------------------------------

    def _apply(self, conn: psycopg.Connection, context: Any) -> tuple[dict[str, int], Population, int]:
        """Check, resolve, write the changes and the ``changed`` population; (counts, changed, replayed).

        Everything a user can get wrong is checked before the first write to ``campaign``.
        """
        pop = Population.from_value(self.population, "population")
        _check_profiles(pop)
        identity = run_identity(context)
        service_id = self._service_id(conn) if self.service_column is None else None
        rel = pop.bind(conn, "population")
        types = CampaignHook.relation_types(conn, rel)
        empty = not _has_rows(conn, rel)
        if empty:
            self.check_empty(dataclasses.replace(pop, count=0), "population")
        if not (empty and pop.kind == "inline"):  # empty inline rows have no columns to check
            self._check_columns(pop, types)
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} (service_id integer, profile_id bigint, subscribe boolean,"
                " event_at timestamptz) ON COMMIT DROP"
            ).format(_CHANGES)
        )
        rows = rejected = duplicates = replayed = 0
        if not empty:
            rows, rejected = self._build_work(conn, rel, types, service_id)
            if rejected and self.rejects == "fail":
                raise _rejected_error(conn, rejected)
            if rejected:
                self.log.warning(
                    "%s: %d row(s) name no existing profile and are skipped (rejects='skip'), e.g. ids %s",
                    self.task_id,
                    rejected,
                    _rejected_sample(conn),
                )
            duplicates = self._drop_duplicates(conn)
            rerun = _committed_before(conn, identity)
            self._write_changes(conn, identity)
            replayed = _replay(conn, identity) if rerun else 0
        subscribed, unsubscribed = conn.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE subscribe), count(*) FILTER (WHERE NOT subscribe) FROM {}"
            ).format(_CHANGES)
        ).fetchone() or (0, 0)
        changed = self.save(
            conn,
            context,
            sql.SQL(
                "SELECT c.profile_id AS id, v.name AS service,"
                " CASE WHEN c.subscribe THEN 'subscribe' ELSE 'unsubscribe' END AS operation, c.event_at"
                " FROM {} c JOIN campaign.services v ON v.id = c.service_id"
            ).format(_CHANGES),
            key="id",
            resource="profiles",
            option="population",
        )
        counts = {
            "rows": rows,
            "subscribed": subscribed,
            "unsubscribed": unsubscribed,
            "unchanged": rows - rejected - duplicates - subscribed - unsubscribed,
            "rejected": rejected,
            "duplicates": duplicates,
        }
        _record_run(conn, identity, counts)
        return counts, changed, replayed

    def _check_columns(self, pop: Population, types: dict[str, str]) -> None:
        """Every column option names a population column of a usable type."""
        if _base_type(types.get(pop.key, "")) not in _INTEGERS:
            raise CampaignError(
                f"population: its key column {pop.key!r} is of type {types.get(pop.key)!r}; profile ids are "
                "integers: pass the ids as numbers."
            )
        for option in ("service_column", "operation_column", "date_column", "origin_column"):
            column = getattr(self, option)
            if column is not None and column not in types:
                raise CampaignError(
                    f"{option}={column!r}: no such column in the population; its columns: {list(types)}."
                )
        if self.operation_column is not None:
            _operation_expr(self.operation_column, types[self.operation_column])
        if self.date_column is not None and _base_type(types[self.date_column]) not in _DATES:
            raise CampaignError(
                f"date_column={self.date_column!r} is of type {types[self.date_column]!r}; give a timestamptz, "
                "timestamp, date or text column."
            )

    def _service_id(self, conn: psycopg.Connection) -> int:
        row = conn.execute("SELECT id FROM campaign.services WHERE name = %s", (self.service,)).fetchone()
        if row is None:
            raise CampaignError(
                f"service={self.service!r} does not exist; known services: {_known_services(conn)}. "
                "Nothing was written; use one of them, or add the service to campaign.services first."
            )
        return int(row[0])

    def _build_work(
        self, conn: psycopg.Connection, rel: sql.Composable, types: dict[str, str], service_id: int | None
    ) -> tuple[int, int]:
        """``subscription_work``: one row per input row, resolved and checked; return (rows, rejected).

        Unknown services and operation values other than 1/true and 0/false fail here, before
        anything is written.
        """
        select: list[sql.Composable] = [
            sql.SQL("p.id::bigint AS profile_id"),
            sql.SQL("{} AS service_id").format(
                sql.SQL("v.id") if service_id is None else sql.Literal(service_id)
            ),
            sql.SQL("{} AS subscribe").format(self._subscribe_expr(types)),
        ]
        if self.date_column is not None:
            select.append(
                sql.SQL("coalesce(p.{}::timestamptz, now()) AS event_at").format(
                    sql.Identifier(self.date_column)
                )
            )
        if self.origin_column is not None:
            select.append(sql.SQL("p.{}::text AS origin").format(sql.Identifier(self.origin_column)))
        select.append(
            sql.SQL("EXISTS (SELECT 1 FROM campaign.profiles r WHERE r.id = p.id::bigint) AS known")
        )
        with sql_errors(f"date_column={self.date_column!r}" if self.date_column else "population"):
            conn.execute(
                sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} p{}").format(
                    _WORK, sql.SQL(", ").join(select), rel, self._service_join()
                )
            )
        conn.execute(sql.SQL("ANALYZE {}").format(_WORK))
        rows, bad_services, bad_operations, rejected = conn.execute(
            sql.SQL(
                "SELECT count(*), count(*) FILTER (WHERE service_id IS NULL),"
                " count(*) FILTER (WHERE subscribe IS NULL), count(*) FILTER (WHERE NOT known) FROM {}"
            ).format(_WORK)
        ).fetchone() or (0, 0, 0, 0)
        if bad_services:
            raise self._unknown_services_error(conn, rel, bad_services)
        if bad_operations:
            raise self._bad_operations_error(conn, rel, types, bad_operations)
        return rows, rejected

    def _service_join(self) -> sql.Composable:
        if self.service_column is None:
            return sql.SQL("")
        return sql.SQL(" LEFT JOIN campaign.services v ON v.name = p.{}::text").format(
            sql.Identifier(self.service_column)
        )

    def _subscribe_expr(self, types: dict[str, str]) -> sql.Composable:
        if self.operation_column is None:
            return sql.Literal(self.operation == "subscribe")
        return _operation_expr(self.operation_column, types[self.operation_column])

    def _unknown_services_error(self, conn: psycopg.Connection, rel: sql.Composable, n: int) -> CampaignError:
        column = sql.Identifier(self.service_column or "")
        names = [
            r[0]
            for r in conn.execute(
                sql.SQL(
                    "SELECT DISTINCT p.{}::text FROM {} p{} WHERE v.id IS NULL ORDER BY 1 NULLS FIRST LIMIT 10"
                ).format(column, rel, self._service_join())
            )
        ]
        return CampaignError(
            f"service_column={self.service_column!r}: unknown service(s) {names} in {n} row(s); known "
            f"services: {_known_services(conn)}. Nothing was written; fix the values, or add the services "
            "to campaign.services first."
        )

    def _bad_operations_error(
        self, conn: psycopg.Connection, rel: sql.Composable, types: dict[str, str], n: int
    ) -> CampaignError:
        column = self.operation_column or ""
        sample = conn.execute(
            sql.SQL(
                "SELECT p.id, p.{} FROM {} p WHERE ({}) IS NULL ORDER BY p.id NULLS FIRST LIMIT {}"
            ).format(
                sql.Identifier(column), rel, _operation_expr(column, types[column]), sql.Literal(_SAMPLE)
            )
        ).fetchall()
        shown = ", ".join(f"id {key}: {_shown(value)}" for key, value in sample)
        return CampaignError(
            f"operation_column={column!r}: {n} row(s) hold a value that is neither 1/true (subscribe) nor "
            f"0/false (unsubscribe), e.g. {shown}. Nothing was written; fix those values upstream or "
            "filter the rows out."
        )

    def _drop_duplicates(self, conn: psycopg.Connection) -> int:
        """Keep one row per profile and service (``duplicates``); return how many were dropped."""
        try:  # the common case, no duplicates, costs one index build (sorted in maintenance_work_mem)
            with conn.transaction():
                conn.execute(
                    sql.SQL("CREATE UNIQUE INDEX ON {} (service_id, profile_id) WHERE known").format(_WORK)
                )
            return 0
        except psycopg.errors.UniqueViolation:
            pass
        if self.duplicates == "fail":
            raise _duplicates_error(conn)
        # latest date first; then false (unsubscribe) sorts before true; then the smallest origin
        event_at = sql.SQL("event_at DESC, " if self.date_column else "")
        origin = sql.SQL(", origin" if self.origin_column else "")
        cur = conn.execute(
            sql.SQL(
                "DELETE FROM {work} WHERE ctid IN (SELECT ctid FROM (SELECT ctid, row_number() OVER"
                " (PARTITION BY service_id, profile_id ORDER BY {event_at}subscribe{origin}) AS rn"
                " FROM {work} WHERE known) d WHERE rn > 1)"
            ).format(work=_WORK, event_at=event_at, origin=origin)
        )
        return cur.rowcount

    def _write_changes(self, conn: psycopg.Connection, identity: dict[str, Any]) -> None:
        """Insert and delete subscriptions and append their events, in one statement.

        Only the rows whose subscription really changes come out of the INSERT (``ON CONFLICT DO
        NOTHING``) and the DELETE, so only they get an event; ``subscription_changes`` lists them.
        """
        event_at = sql.SQL("w.event_at" if self.date_column else "now()")
        if self.origin_column is not None:
            origin: sql.Composable = sql.SQL("w.origin")
        else:
            origin = sql.Literal(self.origin or f"{identity['dag_id']}.{identity['task_id']}")
        parts: list[sql.Composable] = []
        if self.operation != "unsubscribe":
            parts.append(
                sql.SQL(
                    "INSERT INTO campaign.subscriptions AS s (service_id, profile_id, subscribed_at, origin)"
                    " SELECT w.service_id, w.profile_id, {event_at}, {origin} FROM {work} w"
                    " WHERE w.known AND w.subscribe ON CONFLICT (service_id, profile_id) DO NOTHING"
                    " RETURNING s.service_id, s.profile_id, true AS subscribe, s.subscribed_at AS event_at,"
                    " s.origin"
                ).format(event_at=event_at, origin=origin, work=_WORK)
            )
        if self.operation != "subscribe":
            parts.append(
                sql.SQL(
                    "DELETE FROM campaign.subscriptions s USING {work} w WHERE w.known AND NOT w.subscribe"
                    " AND s.service_id = w.service_id AND s.profile_id = w.profile_id"
                    " RETURNING s.service_id, s.profile_id, false AS subscribe, {event_at} AS event_at,"
                    " {origin}::text AS origin"
                ).format(event_at=event_at, origin=origin, work=_WORK)
            )
        conn.execute(
            sql.SQL(
                "WITH {ctes}, changed AS ({union}), events AS ("
                " INSERT INTO campaign.subscription_events"
                " (service_id, profile_id, operation, event_at, origin, dag_id, run_id, task_id, map_index)"
                " SELECT service_id, profile_id, CASE WHEN subscribe THEN 'subscribe' ELSE 'unsubscribe' END,"
                " event_at, origin, {dag_id}, {run_id}, {task_id}, {map_index} FROM changed)"
                " INSERT INTO {changes} (service_id, profile_id, subscribe, event_at)"
                " SELECT service_id, profile_id, subscribe, event_at FROM changed"
            ).format(
                ctes=sql.SQL(", ").join(
                    sql.SQL("change_{} AS ({})").format(sql.SQL(str(i)), part) for i, part in enumerate(parts)
                ),
                union=sql.SQL(" UNION ALL ").join(
                    sql.SQL("SELECT * FROM change_{}").format(sql.SQL(str(i))) for i in range(len(parts))
                ),
                changes=_CHANGES,
                dag_id=sql.Literal(identity["dag_id"]),
                run_id=sql.Literal(identity["run_id"]),
                task_id=sql.Literal(identity["task_id"]),
                map_index=sql.Literal(identity["map_index"]),
            )
        )


# ---- checks and helpers --------------------------------------------------------------------


def _exactly_one(option: str, value: Any, column_option: str, column: Any, example: str) -> None:
    if (value is None) == (column is None):
        given = "both" if value is not None else "neither"
        raise CampaignError(
            f"{option}={value!r}, {column_option}={column!r}: {given} given; pass exactly one: {option}= "
            f"(the same for every row, e.g. {option}={example}) or {column_option}= (a population column)."
        )


def _check_profiles(pop: Population) -> None:
    if (pop.resource, pop.key) != ("profiles", "id"):
        raise CampaignError(
            f"population: a population of resource {pop.resource!r} keyed by {pop.key!r}; subscriptions "
            "belong to profiles, so pass a population of resource 'profiles' keyed by 'id' (map rows of "
            "another table to profile ids upstream, e.g. with a QueryOperator whose sql= joins your table to "
            "campaign.profiles)."
        )


def _base_type(pg_type: str) -> str:
    """``numeric(10,2)`` -> ``numeric``; ``character varying(20)`` -> ``character varying``."""
    return pg_type.split("(", 1)[0].strip()


def _has_rows(conn: psycopg.Connection, rel: sql.Composable) -> bool:
    row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(rel)).fetchone()
    return bool(row and row[0])


def _operation_expr(column: str, pg_type: str) -> sql.Composable:
    """SQL over alias ``p``: true (subscribe), false (unsubscribe) or NULL (an invalid value)."""
    col = sql.SQL("p.{}").format(sql.Identifier(column))
    base = _base_type(pg_type)
    if base == "boolean":
        return col
    if base in _NUMBERS:
        return sql.SQL("CASE {} WHEN 1 THEN true WHEN 0 THEN false END").format(col)
    if base in _TEXTS:
        return sql.SQL(
            "CASE lower(btrim({})) WHEN '1' THEN true WHEN 'true' THEN true"
            " WHEN '0' THEN false WHEN 'false' THEN false END"
        ).format(col)
    raise CampaignError(
        f"operation_column={column!r} is of type {pg_type!r}; give a boolean, integer or text column holding "
        "1/true (subscribe) or 0/false (unsubscribe)."
    )


def _shown(value: Any) -> str:
    """A value in a message: NULL, a quoted text, or a number or boolean as written."""
    if value is None:
        return "NULL"
    return repr(value) if isinstance(value, str) else str(value)


def _known_services(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM campaign.services ORDER BY name LIMIT 50")]


def _rejected_sample(conn: psycopg.Connection) -> list[int | None]:
    return [
        r[0]
        for r in conn.execute(
            sql.SQL("SELECT profile_id FROM {} WHERE NOT known ORDER BY 1 NULLS FIRST LIMIT {}").format(
                _WORK, sql.Literal(_SAMPLE)
            )
        )
    ]


def _rejected_error(conn: psycopg.Connection, n: int) -> CampaignError:
    return CampaignError(
        f"population: {n} row(s) name no existing profile (ids {_rejected_sample(conn)}) and "
        "rejects='fail'. Nothing was written; remove those rows upstream, or use rejects='skip' to "
        "count them as rejected."
    )


def _duplicates_error(conn: psycopg.Connection) -> CampaignError:
    groups = conn.execute(
        sql.SQL(
            "SELECT w.profile_id, v.name, count(*), count(*) OVER () FROM {} w"
            " JOIN campaign.services v ON v.id = w.service_id WHERE w.known"
            " GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 2, 1 LIMIT {}"
        ).format(_WORK, sql.Literal(_SAMPLE))
    ).fetchall()
    shown = ", ".join(f"id {p} {n} times for {s!r}" for p, s, n, _ in groups)
    return CampaignError(
        f"population: {groups[0][3]} profile(s) appear more than once for a service ({shown}) and "
        "duplicates='fail'. Nothing was written; deduplicate upstream (DeduplicationOperator), or use "
        "duplicates='latest'."
    )


def _committed_before(conn: psycopg.Connection, identity: dict[str, Any]) -> bool:
    """Whether an earlier try of this task instance committed (this try is a re-run)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM campaign.subscription_runs WHERE dag_id = %(dag_id)s"
        " AND task_id = %(task_id)s AND run_id = %(run_id)s AND map_index = %(map_index)s)",
        identity,
    ).fetchone()
    return bool(row and row[0])


def _record_run(conn: psycopg.Connection, identity: dict[str, Any], counts: dict[str, int]) -> None:
    """Record that this task instance committed (with this try's transaction), and its counts."""
    conn.execute(
        "INSERT INTO campaign.subscription_runs (dag_id, task_id, run_id, map_index, counts)"
        " VALUES (%(dag_id)s, %(task_id)s, %(run_id)s, %(map_index)s, %(counts)s)"
        " ON CONFLICT (dag_id, task_id, run_id, map_index)"
        " DO UPDATE SET counts = EXCLUDED.counts, updated_at = now()",
        {**identity, "counts": Jsonb(counts)},
    )


def _replay(conn: psycopg.Connection, identity: dict[str, Any]) -> int:
    """Add to ``subscription_changes`` the rows an earlier try of this task instance changed.

    Such a row is unchanged now (its subscription is already as asked); reporting it as changed
    gives a re-run the counts and the ``changed`` population of a single clean try.
    """
    cur = conn.execute(
        sql.SQL(
            "INSERT INTO {changes} (service_id, profile_id, subscribe, event_at)"
            " SELECT DISTINCT ON (w.service_id, w.profile_id) w.service_id, w.profile_id, w.subscribe, e.event_at"
            " FROM {work} w JOIN campaign.subscription_events e"
            " ON e.service_id = w.service_id AND e.profile_id = w.profile_id"
            " AND e.operation = CASE WHEN w.subscribe THEN 'subscribe' ELSE 'unsubscribe' END"
            " WHERE w.known AND e.dag_id = %(dag_id)s AND e.run_id = %(run_id)s AND e.task_id = %(task_id)s"
            " AND e.map_index = %(map_index)s AND NOT EXISTS (SELECT 1 FROM {changes} c"
            " WHERE c.service_id = w.service_id AND c.profile_id = w.profile_id)"
            " ORDER BY w.service_id, w.profile_id, e.id DESC"
        ).format(changes=_CHANGES, work=_WORK),
        identity,
    )
    return cur.rowcount
