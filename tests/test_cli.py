"""The `airflow-campaign` command: db upgrade/version, targets (--url, --conn-id, env), errors."""

from __future__ import annotations

import json

import psycopg
import pytest

from airflow_campaign import cli, embedded
from airflow_campaign.schema import migrate
from tests.test_schema import catalog


def test_db_upgrade_twice_changes_nothing_and_version_prints_it(fresh_database, capsys):
    url = fresh_database()
    assert cli.main(["db", "version", "--url", url]) == 0
    assert capsys.readouterr().out.strip() == "0"

    assert cli.main(["db", "upgrade", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "applied 0001_initial" in out
    assert f"campaign schema at version {migrate.head()} (head {migrate.head()})" in out
    with psycopg.connect(url) as conn:
        before = catalog(conn)

    assert cli.main(["db", "upgrade", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "applied" not in out
    assert f"at version {migrate.head()}" in out
    with psycopg.connect(url) as conn:
        assert catalog(conn) == before

    assert cli.main(["db", "version", "--url", url]) == 0
    assert capsys.readouterr().out.strip() == str(migrate.head())


def test_target_from_the_environment_or_an_airflow_connection(fresh_database, monkeypatch, capsys):
    url = fresh_database()
    monkeypatch.setenv(cli.URL_ENV, url)
    assert cli.main(["db", "version"]) == 0
    assert capsys.readouterr().out.strip() == "0"
    # --conn-id wins over the environment: campaign_default is the migrated test database
    assert cli.main(["db", "version", "--conn-id", "campaign_default"]) == 0
    assert capsys.readouterr().out.strip() == str(migrate.head())


def test_an_unreachable_database_is_a_short_error(capsys):
    url = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
    assert cli.main(["db", "version", "--url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("airflow-campaign: cannot reach the campaign database")
    assert "check --url, --conn-id or $CAMPAIGN_DATABASE_URL" in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["db"],
        ["db", "migrate"],
        ["db", "version", "--url", "x", "--conn-id", "y"],
        ["incremental", "show"],
        ["dev"],
        ["dev", "my_dag.py", "--seed", "many"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "usage: airflow-campaign" in capsys.readouterr().err


def test_conn_id_finds_a_connection_in_the_metadata_database(fresh_database, airflow_db, capsys):
    url = fresh_database()
    assert cli.main(["db", "upgrade", "--url", url]) == 0
    capsys.readouterr()
    conn_id = "campaign_in_metadata"
    # written to Airflow's metadata database in-process (a subprocess `airflow connections add`
    # costs 9 s of CLI start-up and reads the same table)
    from airflow.models import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        session.add(Connection.from_json(json.dumps(embedded.connection_fields(url)), conn_id=conn_id))
    try:
        assert cli.main(["db", "version", "--conn-id", conn_id]) == 0
        assert capsys.readouterr().out.strip() == str(migrate.head())
    finally:
        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == conn_id).delete()


def test_an_unknown_conn_id_names_the_fix(capsys):
    assert cli.main(["db", "version", "--conn-id", "no_such_connection"]) == 1
    err = capsys.readouterr().err
    assert "--conn-id: no Airflow connection 'no_such_connection'" in err
    assert "airflow connections add" in err


def test_seed_before_upgrade_says_to_upgrade_and_writes_nothing(fresh_database, capsys):
    url = fresh_database()
    assert cli.main(["seed", "--profiles", "10", "--url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "airflow-campaign: seed: the database has no campaign schema; run `airflow-campaign db upgrade`"
    )
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regnamespace('campaign')").fetchone()[0] is None
