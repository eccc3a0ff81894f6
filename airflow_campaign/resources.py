"""Resources: the table a population's keys point into (the built-in profiles, or a user table)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from airflow_campaign.errors import CampaignError
from airflow_campaign.hooks.campaign import CampaignHook, qualified

BUILTIN = {"profiles": ("campaign.profiles", "id")}


@dataclass(frozen=True)
class Resource:
    """A named table with a key column.

    ``profiles`` is the built-in ``campaign.profiles`` (key ``id``). Any other name is read as
    ``schema.table`` (``public`` when no schema is given), keyed by ``key`` (default ``id``).
    """

    name: str
    table: str
    key: str
    columns: dict[str, str]

    @property
    def ident(self) -> sql.Composable:
        return qualified(self.table)

    @classmethod
    def resolve(cls, conn: psycopg.Connection, name: str, key: str | None = None) -> Resource:
        """Look the resource up in the database; a clear error when it or its key is missing."""
        if name in BUILTIN:
            table, default_key = BUILTIN[name]
        else:
            table = name if "." in name else f"public.{name}"
            default_key = "id"
        columns = dict(CampaignHook.columns_of(conn, table))
        if not columns:
            raise CampaignError(
                f"resource={name!r}: no table {table} in the campaign database. Use 'profiles' or "
                "'schema.table' of an existing table (run 'airflow-campaign db upgrade' for profiles)."
            )
        key = key or default_key
        if key not in columns:
            raise CampaignError(
                f"resource={name!r} has no key column {key!r}; pass key= one of {sorted(columns)}."
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
