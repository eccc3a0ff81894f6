"""Versioned migrations of the `campaign` schema: ordered SQL files applied once each."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from psycopg import sql

SCHEMA = "campaign"
_LOCK_KEY = 7_268_041_551  # pg_advisory_xact_lock key that serialises concurrent upgrades
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found = []
    for entry in resources.files("airflow_campaign.schema").joinpath("versions").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def head() -> int:
    """The newest version this package knows."""
    return migrations()[-1].version


def current_version(conn: Any) -> int:
    """The version the database is at (0 when the schema was never created)."""
    exists = conn.execute("SELECT to_regclass('campaign.schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM campaign.schema_migrations").fetchone()
    return int(row[0])


def pending(conn: Any) -> list[int]:
    """Versions shipped with this package that the database has not had (all, when it has none)."""
    exists = conn.execute("SELECT to_regclass('campaign.schema_migrations') IS NOT NULL").fetchone()[0]
    done = (
        {int(r[0]) for r in conn.execute("SELECT version FROM campaign.schema_migrations")}
        if exists
        else set()
    )
    return [m.version for m in migrations() if m.version not in done]


def require_current(conn: Any, doing: str) -> None:
    """Raise a CampaignError naming the fix when the database is behind this package's schema."""
    from airflow_campaign.errors import CampaignError

    at, want = current_version(conn), head()
    missing = pending(conn)
    if missing:
        state = (
            "has no campaign schema"
            if at == 0
            else f"has the campaign schema at version {at} without migration(s) {missing} (head {want})"
        )
        raise CampaignError(
            f"{doing}: the database {state}; run `airflow-campaign db upgrade` (with the same --url or "
            "--conn-id) first."
        )


def upgrade(conn: Any) -> list[Migration]:
    """Apply the migrations the database lacks, in one transaction; return what was applied.

    Running it again applies nothing. Concurrent upgrades serialise on an advisory lock.
    """
    applied: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS campaign.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now(),"
            " updated_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {int(r[0]) for r in conn.execute("SELECT version FROM campaign.schema_migrations")}
        for migration in migrations():
            if migration.version in done:  # by version, not "above the newest": none is ever skipped
                continue
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO campaign.schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied.append(migration)
    return applied
