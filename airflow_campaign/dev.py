"""`airflow-campaign dev`: run a DAG file of your own once with ``dag.test()`` on the embedded database."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_campaign.errors import CampaignError, shown

#: Profiles seeded into a campaign database that has none (``--seed`` asks for another count).
DEFAULT_PROFILES = 10_000
#: Characters of a task's return value shown in the results.
RESULT_WIDTH = 160
#: The signing key for unsubscribe links in local runs only; create a secret one in production.
DEV_UNSUBSCRIBE_KEY = "dev-only-unsubscribe-signing-key"
BUNDLES_ENV = "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"
#: A file in AIRFLOW_HOME naming the Airflow version that last migrated the metadata database.
MIGRATED_MARKER = ".campaign-dev-migrated"


def dev_env(workdir: Path, url: str, dag_folder: Path) -> dict[str, str]:
    """The environment ``dag.test()`` runs in: Airflow on SQLite in ``workdir/airflow``, the
    campaign database at ``url`` as ``campaign_default``, ``dag_folder`` as the DAGs folder."""
    from airflow_campaign.embedded import connection_fields

    home = workdir / "airflow"
    env = {
        "AIRFLOW_HOME": str(home),
        # SQLite is enough for dag.test(), which runs every task in this one process; a scheduler
        # with parallel workers needs a PostgreSQL metadata database instead
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dag_folder),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
        "AIRFLOW_CONN_CAMPAIGN_DEFAULT": json.dumps(connection_fields(url)),
        "AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY": DEV_UNSUBSCRIBE_KEY,
        # deliveries that name no channel write .eml files here instead of sending
        "AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL": "outbox",
        "CAMPAIGN_OUTBOX_DIR": str(workdir / "outbox"),
    }
    if os.environ.get(BUNDLES_ENV):  # dag.test() finds the DAG in the DAGs folder's bundle
        env[BUNDLES_ENV] = json.dumps(
            [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle"}]
        )
    return env


def parse_conf(conf: str | None) -> dict[str, Any] | None:
    """``--conf`` as the run's ``dag_run.conf``: a JSON object."""
    if conf is None:
        return None
    try:
        value = json.loads(conf)
    except json.JSONDecodeError as exc:
        raise CampaignError(
            f'--conf={shown(conf)} is not JSON ({exc.msg}); write an object, e.g. \'{{"since": "2026-01-01"}}\'.'
        ) from None
    if not isinstance(value, dict):
        raise CampaignError(
            f"--conf={shown(conf)} is a JSON {type(value).__name__}; dag_run.conf is an object, "
            'e.g. \'{"since": "2026-01-01"}\'.'
        )
    return value


def parse_logical_date(value: str | None) -> dt.datetime | None:
    """``--logical-date`` as an aware datetime (a date or a time without offset is UTC)."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CampaignError(
            f"--logical-date={shown(value)} is not a date; write e.g. 2026-01-31 or 2026-01-31T06:00:00+00:00."
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def load_dag(dag_file: Path, dag_id: str | None) -> Any:
    """Import ``dag_file`` (its folder on ``sys.path``, as Airflow does) and return its DAG."""
    import importlib.util

    from airflow.sdk import DAG

    folder = str(dag_file.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # helpers next to the DAG file import as they do in Airflow
    spec = importlib.util.spec_from_file_location(f"campaign_dev_{dag_file.stem}", dag_file)
    if spec is None or spec.loader is None:
        raise CampaignError(f"{dag_file}: cannot be imported as Python; give a .py file that defines a DAG.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    with _collecting_unassigned_dags(spec.name) as unassigned:
        spec.loader.exec_module(module)
    dags = {v.dag_id: v for v in [*vars(module).values(), *unassigned] if isinstance(v, DAG)}
    if dag_id is not None:
        if dag_id not in dags:
            raise CampaignError(
                f"--dag-id={dag_id!r}: {dag_file} defines no such DAG; it defines {sorted(dags)}."
            )
        return dags[dag_id]
    if not dags:
        raise CampaignError(
            f"{dag_file} defines no DAG; define one as Airflow finds them (`with DAG(...) as dag:`, or a "
            "@dag function called at module level)."
        )
    if len(dags) > 1:
        raise CampaignError(f"{dag_file} defines the DAGs {sorted(dags)}; pass --dag-id to say which to run.")
    return next(iter(dags.values()))


@contextmanager
def _collecting_unassigned_dags(module_name: str) -> Iterator[list[Any]]:
    """The DAGs the module builds without keeping them in a variable (``my_dag()`` of a ``@dag``
    function), which Airflow's DAG processor registers as it imports a file."""
    found: list[Any] = []
    try:
        from airflow.sdk.definitions._internal.contextmanager import DagContext
    except ImportError:  # pragma: no cover - another Airflow layout: assigned DAGs only
        yield found
        return
    DagContext.current_autoregister_module_name = module_name
    try:
        yield found
    finally:
        found += [dag for dag, mod in DagContext.autoregistered_dags if mod.__name__ == module_name]
        DagContext.current_autoregister_module_name = None
        DagContext.autoregistered_dags.clear()


class FailureRecorder:
    """An Airflow listener keeping the exception of every task instance that fails.

    ``dag.test()`` runs each task in this process and only logs its exception; the listener
    hook ``on_task_instance_failed`` receives it, so the results can show it after the run.
    """

    def __init__(self) -> None:
        self.errors: dict[tuple[str, int], str] = {}

    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        map_index = getattr(task_instance, "map_index", -1)
        key = (task_instance.task_id, -1 if map_index is None else int(map_index))
        if isinstance(error, BaseException):
            self.errors[key] = f"{type(error).__name__}: {error}"
        elif error:
            self.errors[key] = str(error)

    def register(self) -> None:
        from airflow.listeners import hookimpl
        from airflow.sdk.listener import get_listener_manager

        hookimpl(type(self).on_task_instance_failed)  # marked here: importing airflow configures it
        get_listener_manager().add_listener(self)


@dataclass
class TaskResult:
    """What one task instance of the run did."""

    task_id: str
    map_index: int
    state: str
    duration: float | None
    value: Any
    error: str | None

    @property
    def label(self) -> str:
        return self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"


def task_results(dag_id: str, run_id: str, errors: dict[tuple[str, int], str]) -> list[TaskResult]:
    """Every task instance of the run, in the order they started, with its XCom and error."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    out = []
    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        ).all()
        tis = sorted(
            tis, key=lambda ti: (ti.start_date is None, ti.start_date or 0, ti.task_id, ti.map_index)
        )
        for ti in tis:
            row = session.scalars(
                XComModel.get_many(
                    run_id=run_id,
                    dag_ids=dag_id,
                    task_ids=ti.task_id,
                    map_indexes=ti.map_index,
                    key="return_value",
                )
            ).first()
            state = str(getattr(ti.state, "value", ti.state))
            error = errors.get((ti.task_id, ti.map_index))
            if error is None and state == "failed":
                error = ti.note or "no error was recorded; see the task's log above"
            out.append(
                TaskResult(
                    task_id=ti.task_id,
                    map_index=ti.map_index,
                    state=state,
                    duration=ti.duration,
                    value=None if row is None else XComModel.deserialize_value(row),
                    error=error,
                )
            )
    return out


def summary(value: Any, width: int = RESULT_WIDTH) -> str:
    """A return value on one line: JSON with each population as its row count and table, cut to ``width``."""
    if value is None:
        return ""
    return shown(json.dumps(_compact(value), default=str, ensure_ascii=False), width, quote=False)


def _compact(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("kind") == "table" and {"table", "count"} <= value.keys():
            return f"{value['count']} rows in {value['table']}"
        if value.get("kind") == "inline" and isinstance(value.get("rows"), list):
            return f"{len(value['rows'])} inline rows"
        return {k: _compact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_compact(v) for v in value]
    return value


def print_results(dag_id: str, run_id: str, state: str, results: list[TaskResult]) -> None:
    """One line per task instance: state, duration, return value; a failed one's error in full."""
    width = max([len(r.label) for r in results] + [4])
    print()
    print(f"DAG {dag_id}, run {run_id}: {state}")
    print(f"{'task':<{width}}  {'state':<15} {'duration':>8}  return value / error")
    indent = " " * (width + 28)
    for r in results:
        took = "" if r.duration is None else f"{r.duration:.1f}s"
        first, *more = (f"error: {r.error}" if r.error else summary(r.value)).splitlines() or [""]
        print(f"{r.label:<{width}}  {r.state:<15} {took:>8}  {first}".rstrip())
        for line in more:  # a multi-line error (a database error's LINE and HINT) stays readable
            print(f"{indent}{line}")


def print_env(env: dict[str, str]) -> None:
    print("environment (export it to run the DAG by hand, see docs/running-your-dag.md):")
    for name, value in env.items():
        print(f"  export {name}={shlex.quote(value)}")


def prepare_campaign_database(url: str, profiles: int | None) -> None:
    """Create or upgrade the campaign schema; seed ``profiles`` demo profiles, or a default
    count when the database has none."""
    import psycopg

    from airflow_campaign.schema import migrate
    from airflow_campaign.seed import history, seed

    with psycopg.connect(url, autocommit=True) as conn:
        migrate.upgrade(conn)
        print(f"campaign schema at version {migrate.current_version(conn)}")
        (have,) = conn.execute("SELECT count(*) FROM campaign.profiles").fetchone() or (0,)
        if profiles is None and have:
            print(f"kept the {have} profiles in the database (--seed N replaces them)")
            return
        count = DEFAULT_PROFILES if profiles is None else profiles
        started = time.monotonic()
        replaced = history(conn)
        seed(conn, count, force=True)  # the embedded database is a local test database
        why = "the database had no profiles: " if profiles is None else ""
        print(f"{why}seeded {count} demo profiles in {time.monotonic() - started:.1f}s")
        if replaced:
            print(
                "deleted the history seeding replaces: " + "; ".join(f"{k}: {n}" for k, n in replaced.items())
            )


def configure_airflow(env: dict[str, str]) -> None:
    """Put ``env`` in this process's environment and create or upgrade Airflow's metadata database."""
    if "airflow.settings" in sys.modules:
        from airflow import settings

        if settings.SQL_ALCHEMY_CONN != env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]:
            raise CampaignError(
                "dev: Airflow is already configured in this process (another metadata database); "
                "run `airflow-campaign dev` in a new process."
            )
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    warnings.filterwarnings("ignore", message=".*httpx.*")  # the in-process API server's test client
    import airflow
    from airflow.utils import db

    # what `airflow db migrate` does (it creates the SQLite database on first use), skipped when
    # this Airflow version already migrated this database: it takes seconds even with nothing to do
    migrated = f"{airflow.__version__} {env['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN']}"
    marker = home / MIGRATED_MARKER
    database = Path(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///"))
    if not (database.exists() and marker.exists() and marker.read_text(encoding="utf-8") == migrated):
        print("creating or upgrading Airflow's metadata database (SQLite) ...", flush=True)
        db.upgradedb()
        marker.write_text(migrated, encoding="utf-8")


def run_dev(
    dag_file: str,
    *,
    dag_id: str | None = None,
    profiles: int | None = None,
    conf: str | None = None,
    logical_date: str | None = None,
    workdir: str = ".campaign",
) -> int:
    """Run ``dag_file``'s DAG once with ``dag.test()`` on the embedded campaign database.

    Returns 0 when every task succeeded (or was skipped), 1 otherwise. The embedded server
    keeps running afterwards (stop it with ``airflow-campaign embedded stop``).
    """
    from airflow_campaign import embedded

    path = Path(dag_file).expanduser().resolve()
    if not path.is_file():
        raise CampaignError(f"{dag_file}: no such file; give the path of a .py file that defines a DAG.")
    if profiles is not None and profiles < 0:
        raise CampaignError(f"--seed={profiles} is negative; give a number of profiles (0 or more).")
    run_conf = parse_conf(conf)
    date = parse_logical_date(logical_date)
    work = Path(workdir).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)

    server = embedded.start(work / "pg", stop_at_exit=False)  # reused by the next run, and by you
    print(f"embedded Postgres: {server.url}")
    prepare_campaign_database(server.url, profiles)
    env = dev_env(work, server.url, path.parent)
    print_env(env)
    print(f"the server keeps running; stop it with: airflow-campaign embedded stop --data-dir {work / 'pg'}")
    configure_airflow(env)

    dag = load_dag(path, dag_id)
    recorder = FailureRecorder()
    recorder.register()
    print(f"running DAG {dag.dag_id} from {path} with dag.test() ...", flush=True)
    kwargs: dict[str, Any] = {"run_conf": run_conf}
    if date is not None:
        kwargs["logical_date"] = date
    dag_run = dag.test(**kwargs)
    state = str(getattr(dag_run.state, "value", dag_run.state))
    results = task_results(dag.dag_id, dag_run.run_id, recorder.errors)
    print_results(dag.dag_id, dag_run.run_id, state, results)
    failed = [r for r in results if r.state not in ("success", "skipped")]
    return 0 if state == "success" and not failed else 1
