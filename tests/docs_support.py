"""Shared by the documentation tests: running docs/examples DAGs and reading what they produced."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import count

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

# dag.test() only runs DAGs it finds in a configured DAG bundle: put docs/examples first.
BUNDLES_ENV = "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"
LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"

FR_CONTACTABLE = "country = 'FR' AND email IS NOT NULL AND NOT email_denylisted"
AUDIENCE = (
    "SELECT m.member_key::bigint FROM campaign.audience_members m"
    " JOIN campaign.audiences a ON a.id = m.audience_id WHERE a.name = %s"
)
SUBSCRIBERS = (
    "SELECT s.profile_id FROM campaign.subscriptions s"
    " JOIN campaign.services v ON v.id = s.service_id WHERE v.name = %s"
)


# ---- running an example ------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs_bundle(seeded: str, airflow_db: None) -> Iterator[None]:
    """The seeded database, Airflow's metadata DB and a DAG bundle holding docs/examples."""
    bundles = [
        {"name": "docs-examples", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(DOCS / "examples")}},
        {"name": "dags-folder", "classpath": LOCAL_BUNDLE, "kwargs": {}},
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(BUNDLES_ENV, json.dumps(bundles))
        yield


def load_dag(path: Path) -> Any:
    """Import an example file and return its one DAG."""
    from airflow.sdk import DAG

    spec = importlib.util.spec_from_file_location(f"docs_example_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dags = [v for v in vars(module).values() if isinstance(v, DAG)]
    assert len(dags) == 1, f"{path.name} defines {len(dags)} DAGs; an example shows one"
    return dags[0]


class Run:
    """One dag.test() run of an example: its state, task states and XComs."""

    def __init__(self, dag_run: Any) -> None:
        self.dag_run = dag_run
        self.run_id: str = dag_run.run_id
        self.dag_id: str = dag_run.dag_id

    def task_states(self) -> dict[str, str]:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            tis = session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == self.dag_id, TaskInstance.run_id == self.run_id
                )
            )
            return {ti.task_id: str(ti.state) for ti in tis}

    def xcom(self, task_id: str, key: str = "return_value") -> Any:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = session.scalars(
                XComModel.get_many(run_id=self.run_id, dag_ids=self.dag_id, task_ids=task_id, key=key)
            ).first()
            assert row is not None, f"no XCom {key!r} from {self.dag_id}.{task_id}"
            return XComModel.deserialize_value(row)


def run_example(stem: str) -> Run:
    """Run docs/examples/<stem>.py once; fail with the task states unless the run succeeded."""
    dag = load_dag(DOCS / "examples" / f"{stem}.py")
    run = Run(dag.test())
    assert str(run.dag_run.state).endswith("success"), f"{run.dag_id}: {run.task_states()}"
    return run


def population(db: psycopg.Connection, run: Run, task_id: str, key: str = "return_value") -> dict[str, Any]:
    """A table population from XCom, checked against its staging table and campaign.staging_tables."""
    pop = run.xcom(task_id, key)
    assert pop["kind"] == "table", pop
    table = sql.Identifier(*pop["table"].split("."))
    assert count(db, sql.SQL("SELECT count(*) FROM {}").format(table).as_string(db)) == pop["count"]
    recorded = db.execute(
        "SELECT dag_id, task_id, run_id, row_count FROM campaign.staging_tables WHERE table_name = %s",
        (pop["table"],),
    ).fetchone()
    assert recorded == (run.dag_id, task_id, run.run_id, pop["count"])
    return pop


def rows(db: psycopg.Connection, pop: dict[str, Any], columns: str = "*", order: str = "1") -> list[tuple]:
    table = sql.Identifier(*pop["table"].split("."))
    query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(sql.SQL(columns), table, sql.SQL(order))
    return db.execute(query).fetchall()
