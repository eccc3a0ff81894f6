"""The campaign schema's migrations: order, idempotence, and the shape of the data model."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from airflow_campaign.errors import CampaignError
from airflow_campaign.schema import migrate

TABLES = {
    "profiles",
    "services",
    "subscriptions",
    "subscription_events",
    "audiences",
    "audience_members",
    "audience_sizes",
    "deliveries",
    "delivery_occurrences",
    "delivery_logs",
    "delivery_claims",
    "quarantine",
    "app_subscriptions",
    "phone_numbers",
    "feedback_events",
    "ui_events",
    "staging_tables",
    "incremental_state",
    "incremental_history",
    "update_progress",
    "subscription_runs",
    "schema_migrations",
}


def catalog(conn: psycopg.Connection) -> dict[str, Any]:
    """Everything the migrations define, as comparable values."""
    return {
        "columns": conn.execute(
            "SELECT table_schema, table_name, column_name, data_type, column_default, is_nullable"
            " FROM information_schema.columns WHERE table_schema IN ('campaign', 'campaign_staging') ORDER BY 1, 2, 3"
        ).fetchall(),
        "indexes": conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'campaign' ORDER BY 1"
        ).fetchall(),
        "constraints": conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE connamespace = 'campaign'::regnamespace ORDER BY 1, 2"
        ).fetchall(),
        "schemas": conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'campaign%' ORDER BY 1"
        ).fetchall(),
        "migrations": conn.execute(
            "SELECT version, name, created_at FROM campaign.schema_migrations"
        ).fetchall(),
    }


def test_migrations_are_numbered_from_one_without_gaps():
    versions = [m.version for m in migrate.migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert migrate.head() == versions[-1]
    assert migrate.migrations()[0].name == "initial"
    assert "CREATE TABLE campaign.profiles" in migrate.migrations()[0].sql


def test_upgrade_from_nothing_then_again_changes_nothing(fresh_database):
    with psycopg.connect(fresh_database(), autocommit=True) as conn:
        assert migrate.current_version(conn) == 0
        applied = migrate.upgrade(conn)
        assert [m.version for m in applied] == [m.version for m in migrate.migrations()]
        assert migrate.current_version(conn) == migrate.head()
        before = catalog(conn)
        assert migrate.upgrade(conn) == []
        assert catalog(conn) == before
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'campaign'")}
        assert tables == TABLES


def test_every_table_has_created_and_updated_timestamps(db):
    missing = db.execute(
        "SELECT t.tablename, c.column_name FROM pg_tables t"
        " CROSS JOIN (VALUES ('created_at'), ('updated_at')) c(column_name)"
        " WHERE t.schemaname = 'campaign' AND NOT EXISTS (SELECT 1 FROM information_schema.columns i"
        " WHERE i.table_schema = 'campaign' AND i.table_name = t.tablename AND i.column_name = c.column_name"
        " AND i.data_type = 'timestamp with time zone' AND i.column_default = 'now()')"
    ).fetchall()
    assert missing == []


def test_a_file_audience_needs_a_file_uri_and_a_list_audience_none(db):
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("INSERT INTO campaign.audiences (name, type) VALUES ('schema_file_no_uri', 'file')")
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "INSERT INTO campaign.audiences (name, type, file_uri) VALUES ('schema_list_uri', 'list', '/x.csv')"
        )


def test_the_delivery_log_has_one_row_per_recipient_and_run_key(db):
    with db.transaction(force_rollback=True):
        delivery = db.execute(
            "INSERT INTO campaign.deliveries (name, channel) VALUES ('schema_test', 'email') RETURNING id"
        ).fetchone()[0]
        occurrence = db.execute(
            "INSERT INTO campaign.delivery_occurrences (delivery_id, run_key) VALUES (%s, 'k') RETURNING id",
            (delivery,),
        ).fetchone()[0]
        insert = (
            "INSERT INTO campaign.delivery_logs (delivery_id, occurrence_id, run_key, recipient_key, channel)"
            " VALUES (%s, %s, 'k', '1', 'email')"
        )
        db.execute(insert, (delivery, occurrence))
        with pytest.raises(psycopg.errors.UniqueViolation):
            with db.transaction():
                db.execute(insert, (delivery, occurrence))
        with pytest.raises(psycopg.errors.CheckViolation):
            db.execute(
                "UPDATE campaign.delivery_logs SET status = 'bounced' WHERE delivery_id = %s", (delivery,)
            )


def test_a_migration_that_lands_after_a_newer_one_is_still_applied(fresh_database, monkeypatch):
    shipped = migrate.migrations()
    later = [m for m in shipped if m.version != 3]
    with psycopg.connect(fresh_database(), autocommit=True) as conn:
        monkeypatch.setattr(migrate, "migrations", lambda: later)
        migrate.upgrade(conn)
        monkeypatch.setattr(migrate, "migrations", lambda: shipped)
        assert migrate.current_version(conn) == migrate.head()
        assert migrate.pending(conn) == [3]
        with pytest.raises(
            CampaignError, match=r"without migration\(s\) \[3\] .*run `airflow-campaign db upgrade`"
        ):
            migrate.require_current(conn, "task")
        assert [m.version for m in migrate.upgrade(conn)] == [3]
        assert migrate.pending(conn) == []
        migrate.require_current(conn, "task")
