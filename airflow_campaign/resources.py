"""Resources: the table a population's keys point into (the built-in profiles, or a user table).

This module also holds the one rule on which tables a population may name: the campaign's own
bookkeeping tables and PostgreSQL's catalogs are never a resource, a destination of a write, or
a table population (see :func:`check_not_protected`).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from airflow_campaign.errors import CampaignError, shown
from airflow_campaign.hooks.campaign import CampaignHook, qualified

BUILTIN = {"profiles": ("campaign.profiles", "id")}

CAMPAIGN_SCHEMA = "campaign"
#: Tables of schema ``campaign`` a DAG author may name as a resource or write to (UpdateData).
#: Every other table of the schema is bookkeeping: the delivery ledger, audiences, staging
#: registry, subscription history, migrations... Subscriptions and services are changed only
#: through SubscriptionServicesOperator, which keeps their history in subscription_events.
WRITABLE_CAMPAIGN_TABLES = ("profiles", "quarantine", "app_subscriptions")
CATALOG_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
MAX_NAME = 255  # characters of a table or resource name (a schema and a table of 63 bytes each, quoted)

ALLOWED = (
    "'profiles' (campaign.profiles), campaign.quarantine, campaign.app_subscriptions, or a table of "
    "yours in another schema (not pg_catalog, information_schema or any pg_* schema)"
)


@dataclass(frozen=True)
class Relation:
    """A table or view as PostgreSQL resolved it: its OID and real schema and name."""

    oid: int
    schema: str
    name: str
    kind: str  # pg_class.relkind: r table, p partitioned, v view, m materialized view, f foreign

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)


_LOOKUP = (
    "SELECT c.oid::bigint, n.nspname::text, c.relname::text, c.relkind::text FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)"
)


def find_relation(conn: psycopg.Connection, table: str) -> Relation | None:
    """The relation ``table`` names as this package quotes it (``schema.table``, each part an
    exact identifier; no schema: the search_path), or None when there is none."""
    if not _well_formed(table):
        return None
    row = conn.execute(_LOOKUP, (qualified(table).as_string(conn),)).fetchone()
    return Relation(int(row[0]), row[1], row[2], row[3]) if row else None


def _as_sql_name(conn: psycopg.Connection, text: str) -> Relation | None:
    """The relation ``text`` names when read as SQL would read it (unquoted parts folded to lower
    case, quotes honoured, search_path for a bare name); None when it names none or is not a name."""
    if not text or len(text) > MAX_NAME or "\x00" in text:
        return None
    try:
        with conn.transaction():  # a savepoint: a malformed name must not abort the caller's transaction
            row = conn.execute(_LOOKUP, (text,)).fetchone()
    except psycopg.Error:
        return None
    return Relation(int(row[0]), row[1], row[2], row[3]) if row else None


def _well_formed(table: str) -> bool:
    return (
        isinstance(table, str)
        and 0 < len(table) <= MAX_NAME
        and "\x00" not in table
        and all(part for part in table.split(".", 1))
    )


def is_catalog(schema: str) -> bool:
    """PostgreSQL's own schemas: pg_catalog, information_schema, pg_toast, any pg_* (temp schemas too)."""
    return schema in CATALOG_SCHEMAS or schema.startswith("pg_")


def protection(relation: Relation) -> str | None:
    """Why ``relation`` may not be named by a population or written to, or None when it may."""
    if is_catalog(relation.schema):
        return f"{relation.qualified_name} is a PostgreSQL system catalog table"
    if relation.schema == CAMPAIGN_SCHEMA and relation.name not in WRITABLE_CAMPAIGN_TABLES:
        return f"{relation.qualified_name} is one of the campaign's own bookkeeping tables"
    return None


def check_not_protected(conn: psycopg.Connection, option: str, name: str, table: str | None = None) -> None:
    """Refuse, naming ``option``, when ``name`` (looked up as ``table``, default ``name``) is a
    bookkeeping or catalog table, however it is spelled.

    The name is resolved both as this package quotes it and as SQL would read it, to an OID,
    and the real schema and table name are compared: ``Campaign.Delivery_Logs``,
    ``"campaign"."delivery_logs"`` or a bare ``delivery_logs`` (for a table population, read on
    the search_path) reaching schema campaign are all refused.
    """
    target = name if table is None else table
    for relation in (find_relation(conn, target), _as_sql_name(conn, target)):
        reason = relation and protection(relation)
        if reason:
            raise CampaignError(
                f"{option}={shown(name)}: {reason}, which a population can never name and no task may "
                f"write to. Allowed: {ALLOWED}."
            )


@dataclass(frozen=True)
class Resource:
    """A named table with a key column.

    ``profiles`` is the built-in ``campaign.profiles`` (key ``id``). Any other name is read as
    ``schema.table`` (``public`` when no schema is given), keyed by ``key`` (default ``id``).
    The campaign's bookkeeping tables and PostgreSQL's catalogs are never a resource.
    """

    name: str
    table: str
    key: str
    columns: dict[str, str]

    @property
    def ident(self) -> sql.Composable:
        return qualified(self.table)

    @staticmethod
    def table_of(name: str) -> str:
        """The ``schema.table`` a resource name stands for."""
        if name in BUILTIN:
            return BUILTIN[name][0]
        return name if "." in name else f"public.{name}"

    @classmethod
    def check_name(cls, conn: psycopg.Connection, name: str, option: str = "resource") -> None:
        """Refuse a resource name that is not a sane string, or names a bookkeeping or catalog table.

        A name that names no table passes: the operator that needs the resource says so.
        """
        if not (isinstance(name, str) and _well_formed(cls.table_of(name))):
            raise CampaignError(
                f"{option}={shown(name)}: a resource is 'profiles' or 'schema.table' (a string of at "
                f"most {MAX_NAME} characters); pass one of {ALLOWED}."
            )
        check_not_protected(conn, option, name, cls.table_of(name))

    @classmethod
    def resolve(
        cls, conn: psycopg.Connection, name: str, key: str | None = None, *, option: str = "resource"
    ) -> Resource:
        """Look the resource up in the database; a clear error when it or its key is missing, or
        when it is a bookkeeping or catalog table."""
        cls.check_name(conn, name, option)
        table = cls.table_of(name)
        default_key = BUILTIN[name][1] if name in BUILTIN else "id"
        columns = dict(CampaignHook.columns_of(conn, table))
        if not columns:
            raise CampaignError(
                f"{option}={shown(name)}: no table {shown(table, quote=False)} in the campaign database. "
                "Use 'profiles' or 'schema.table' of an existing table (run 'airflow-campaign db upgrade' "
                "for profiles)."
            )
        key = key or default_key
        if key not in columns:
            raise CampaignError(
                f"{option}={shown(name)} has no key column {shown(key)}; pass key= one of {sorted(columns)}."
            )
        return cls(name=name, table=table, key=key, columns=columns)

    def check_columns(self, option: str, names: list[str]) -> None:
        """Raise naming ``option`` when one of ``names`` is not a column of this resource."""
        unknown = [n for n in names if n not in self.columns]
        if unknown:
            raise CampaignError(
                f"{option}: unknown column(s) {unknown} in resource {self.name!r}; "
                f"available: {sorted(self.columns)}."
            )
