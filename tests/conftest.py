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

from airflow_campaign.embedded import connection_fields  # noqa: E402

SEED_PROFILES = 3000


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the test Postgres; sets AIRFLOW_CONN_CAMPAIGN_DEFAULT to it."""
    url = os.environ.get("CAMPAIGN_TEST_DATABASE_URL")
    server = None
    if not url:
        from airflow_campaign import embedded

        # a short path: the server's Unix socket lives in the data directory
        server = embedded.start(Path(tempfile.mkdtemp(prefix="cpg-", dir="/tmp")) / "pg")
        url = server.url
    os.environ["AIRFLOW_CONN_CAMPAIGN_DEFAULT"] = json.dumps(connection_fields(url))
    from airflow_campaign.schema import migrate

    with psycopg.connect(url, autocommit=True) as conn:
        migrate.upgrade(conn)
    yield url
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def seeded(database_url: str) -> str:
    """The database with SEED_PROFILES deterministic profiles (seed 42)."""
    from airflow_campaign.seed import seed

    with psycopg.connect(database_url, autocommit=True) as conn:
        seed(conn, SEED_PROFILES, 42)
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


def count(conn: psycopg.Connection, query: str, *params: Any) -> int:
    """First column of the first row of ``query``."""
    return int(conn.execute(query, params or None).fetchone()[0])


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's own metadata database (SQLite), migrated once, for dag.test()."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
