"""Test fixtures: one real Postgres per session (embedded, or $CAMPAIGN_TEST_DATABASE_URL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="campaign-test-airflow-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_HOME}/airflow.db")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).parent.parent / "dags_examples"))

import psycopg  # noqa: E402
import pytest  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from airflow_campaign.embedded import connection_fields  # noqa: E402

SEED_PROFILES = 3000


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[Any]:
    """The embedded Postgres the tests run on, or None when $CAMPAIGN_TEST_DATABASE_URL is set."""
    if os.environ.get("CAMPAIGN_TEST_DATABASE_URL"):
        yield None
        return
    from airflow_campaign import embedded

    # a short path: the server's Unix socket lives in the data directory
    server = embedded.start(Path(tempfile.mkdtemp(prefix="cpg-", dir="/tmp")) / "pg")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(embedded_server: Any) -> str:
    """URL of the test Postgres, migrated; sets AIRFLOW_CONN_CAMPAIGN_DEFAULT to it."""
    url = os.environ.get("CAMPAIGN_TEST_DATABASE_URL") or embedded_server.url
    os.environ["AIRFLOW_CONN_CAMPAIGN_DEFAULT"] = json.dumps(connection_fields(url))
    from airflow_campaign.schema import migrate

    with psycopg.connect(url, autocommit=True) as conn:
        migrate.upgrade(conn)
    return url


@pytest.fixture(scope="session")
def seeded(database_url: str) -> str:
    """The database with SEED_PROFILES deterministic profiles (seed 42)."""
    from airflow_campaign.seed import seed

    with psycopg.connect(database_url, autocommit=True) as conn:
        seed(conn, SEED_PROFILES, 42, force=True)  # a database the tests may throw away
    return database_url


@pytest.fixture
def db(seeded: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the seeded test database."""
    with psycopg.connect(seeded, autocommit=True) as conn:
        yield conn


class FakeTaskInstance(SimpleNamespace):
    """The few task-instance attributes operators read, with XCom pushes kept in a dict."""

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


@pytest.fixture
def context() -> Any:
    """Make an execution context for calling ``operator.execute`` directly.

    ``context(task_id)`` gives a fresh run id per test; pass ``run_id=`` to simulate a retry.
    """
    test_run = f"test__{uuid.uuid4().hex[:10]}"

    def make(
        task_id: str = "task", *, dag_id: str = "test_dag", run_id: str | None = None, map_index: int = -1
    ) -> dict[str, Any]:
        ti = FakeTaskInstance(
            dag_id=dag_id,
            task_id=task_id,
            run_id=run_id or test_run,
            map_index=map_index,
            try_number=1,
            xcoms={},
        )
        return {"ti": ti, "run_id": ti.run_id}

    return make


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's own metadata database (SQLite), migrated once, for dag.test()."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[Any]:
    """Make empty databases on the test server: ``fresh_database()`` returns a new one's URL.

    Each is dropped at the end of the test; the shared seeded database is left alone.
    """
    made: list[str] = []

    def make() -> str:
        name = f"campaign_t_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(name)
        return make_conninfo(database_url, dbname=name)

    yield make
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def scratch_template(database_url: str) -> Iterator[str]:
    """A migrated database seeded like the shared one, never connected to after: a template."""
    from airflow_campaign.schema import migrate
    from airflow_campaign.seed import seed

    name = f"campaign_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(make_conninfo(database_url, dbname=name), autocommit=True) as conn:
        migrate.upgrade(conn)
        seed(conn, SEED_PROFILES, 42)
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def scratch(database_url: str, scratch_template: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A private copy of the seeded database for a test that changes profiles, subscriptions...

    ``scratch.conn_id`` ("campaign_scratch") is an Airflow connection to it: pass it as
    ``campaign_conn_id``; ``scratch.url`` and ``scratch.db`` (an autocommit connection) reach it too.
    """
    name = f"campaign_s_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(scratch_template)
            )
        )
    url = make_conninfo(database_url, dbname=name)
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_SCRATCH", json.dumps(connection_fields(url)))
    with psycopg.connect(url, autocommit=True) as conn:
        yield SimpleNamespace(url=url, conn_id="campaign_scratch", db=conn)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server over real HTTP; AIRFLOW_CONN_AWS_DEFAULT points boto3 at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    previous = os.environ.get("AIRFLOW_CONN_AWS_DEFAULT")
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
        {
            "conn_type": "aws",
            "login": "testing-access-key",
            "password": "testing-secret-key",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
    )
    yield endpoint
    if previous is None:
        os.environ.pop("AIRFLOW_CONN_AWS_DEFAULT", None)
    else:
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = previous
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    """A boto3 S3 client on the moto server (independent of the code under test)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing-access-key",
        aws_secret_access_key="testing-secret-key",
    )


def count(conn: psycopg.Connection, query: str, *params: Any) -> int:
    """First column of the first row of ``query``."""
    return int(conn.execute(query, params or None).fetchone()[0])


def ids(conn: psycopg.Connection, population: dict[str, Any], column: str | None = None) -> list[Any]:
    """The sorted values of ``column`` (default the key) in a table population's staging table."""
    column = column or population["key"]
    schema, table = population["table"].split(".")
    rows = conn.execute(
        sql.SQL("SELECT {} FROM {} ORDER BY 1").format(sql.Identifier(column), sql.Identifier(schema, table))
    ).fetchall()
    return [r[0] for r in rows]


def rows(conn: psycopg.Connection, population: dict[str, Any], order_by: str | None = None) -> list[dict]:
    """Every row of a table population's staging table as dicts, ordered by the key."""
    schema, table = population["table"].split(".")
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        sql.SQL("SELECT * FROM {} ORDER BY {}").format(
            sql.Identifier(schema, table), sql.Identifier(order_by or population["key"])
        )
    ).fetchall()


def staged(
    conn: psycopg.Connection, ctx: dict[str, Any], suffixes: tuple[str, ...] = ("", "rejects")
) -> list[str]:
    """What a task try left in the database: its campaign.staging_tables rows, its staging
    tables (by the deterministic names its outputs get), and any unrecorded staging table."""
    from airflow_campaign.hooks.campaign import STAGING_SCHEMA, staging_table_name

    ti = ctx["ti"]
    found = [
        f"recorded {r[0]}"
        for r in conn.execute(
            "SELECT table_name FROM campaign.staging_tables WHERE dag_id = %s AND task_id = %s AND run_id = %s",
            (ti.dag_id, ti.task_id, ti.run_id),
        )
    ]
    for suffix in suffixes:
        name = (
            f"{STAGING_SCHEMA}.{staging_table_name(ti.dag_id, ti.task_id, ti.run_id, ti.map_index, suffix)}"
        )
        if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None:
            found.append(f"table {name}")
    found += [f"unrecorded {t}" for t in orphans(conn)]
    return found


def orphans(conn: psycopg.Connection) -> list[str]:
    """Tables in the staging schema that campaign.staging_tables does not record."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'campaign_staging' AND c.relkind = 'r' AND NOT EXISTS"
            " (SELECT 1 FROM campaign.staging_tables s WHERE s.table_name = n.nspname || '.' || c.relname)"
        )
    ]
