"""A real Airflow 3 deployment for end-to-end tests: api-server, scheduler (LocalExecutor), dag-processor.

The Airflow metadata database is a new database on a Postgres server (the test session's embedded
one): SQLite times out under parallel task-state writes. Each cluster gets a private AIRFLOW_HOME in
a temporary directory and a clean environment (none of the test process's ``AIRFLOW*`` variables);
``env`` adds to it, e.g. ``AIRFLOW_CONN_<ID>`` connections and ``AIRFLOW_VAR_<NAME>`` variables for
the tasks, or ``AIRFLOW__<SECTION>__<KEY>`` settings that override the defaults below::

    with AirflowCluster(database_url, dags_folder, env={"AIRFLOW_CONN_CAMPAIGN_DEFAULT": ...}) as af:
        run_id, state = af.run_dag("my_dag", timeout=60)
        assert state == "success", af.diagnostics("my_dag", run_id)

Another executor and more processes can be asked for (``executor``, ``extra_processes``), e.g.
``benchmarks/scale.py``'s CeleryExecutor with two ``airflow celery worker`` processes; they start
after the three components, with the same environment, and are stopped with them.

Every process is stopped on exit (its children and the task processes too) and the metadata
database is dropped. The first cluster of a session migrates its database with ``airflow db
migrate`` and keeps a copy as a template; later clusters on the same server are copies of it.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from airflow_campaign.embedded import sqlalchemy_url

COMPONENTS = ("api-server", "scheduler", "dag-processor")
FINISHED_STATES = frozenset({"success", "failed"})
# set in every process of a cluster (inherited by the task processes): stop() looks for it
MARKER_VAR = "CAMPAIGN_TEST_AIRFLOW_CLUSTER"
_ENV_PREFIXES_DROPPED = ("AIRFLOW", "_AIRFLOW", "PYTEST")
# the same on every line of a task log: left out of format_task_log's lines
_TASK_LOG_CONTEXT = frozenset({"dag_id", "task_id", "run_id", "map_index", "try_number", "ti_id", "logger"})

_templates: dict[str, tuple[str, str]] = {}  # server (conninfo without dbname) -> (its URL, template name)
_templates_lock = threading.Lock()


class AirflowClusterError(RuntimeError):
    """A cluster process failed, or something did not happen in time; the message has the diagnostics."""


@dataclass(frozen=True)
class TaskInstance:
    """One row of the metadata database's ``task_instance`` table."""

    task_id: str
    map_index: int
    state: str | None
    start_date: dt.datetime | None
    end_date: dt.datetime | None
    try_number: int
    pid: int | None
    hostname: str | None


@dataclass(frozen=True)
class ExtraProcess:
    """One more process of a cluster, e.g. a Celery worker: ``airflow <args>`` in the cluster's environment
    plus ``env``, run behind ``prefix`` if any (a command that ends by exec-ing the rest of its arguments,
    e.g. ``("unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', "worker-1")``)."""

    args: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    prefix: Sequence[str] = ()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_environment() -> dict[str, str]:
    """This process's environment without Airflow's and pytest's variables (a child starts afresh)."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(_ENV_PREFIXES_DROPPED)}


def connections_and_variables(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The ``AIRFLOW_CONN_*`` and ``AIRFLOW_VAR_*`` variables of this process (e.g. the ones conftest.py
    sets), for a cluster's ``env``: a cluster does not inherit them otherwise."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}


def format_task_log(text: str) -> str:
    """A task log file (JSON lines, Airflow 3) as readable lines; other lines are kept as they are."""
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            out.append(line)
            continue
        stamp, level, event = record.pop("timestamp", ""), record.pop("level", ""), record.pop("event", "")
        errors = record.pop("error_detail", None)
        filename, lineno = record.pop("filename", None), record.pop("lineno", None)
        extra = " ".join(f"{k}={v!r}" for k, v in record.items() if k not in _TASK_LOG_CONTEXT)
        out.append(
            f"{stamp} [{level}] {event}"
            + (f"  {extra}" if extra else "")
            + (f"  ({filename}:{lineno})" if filename else "")
        )
        for error in errors if isinstance(errors, list) else []:
            if not isinstance(error, dict):
                out.append(f"    {error}")
                continue
            out.append(f"    {error.get('exc_type')}: {error.get('exc_value')}")
            for frame in error.get("frames") or []:
                out.append(f"      {frame.get('filename')}:{frame.get('lineno')} in {frame.get('name')}")
    return "\n".join(out)


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200 * lines))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no file)"
    return "\n".join(text.splitlines()[-lines:])


class AirflowCluster:
    """A running Airflow 3 deployment whose metadata database is on the Postgres at ``database_url``.

    ``database_url`` is a libpq URL of the server (its database is only used to create the new
    one); ``dags_folder`` is the DAG bundle; ``env`` goes to every process (after the defaults, so
    it may override them); ``parallelism`` is ``[core] parallelism`` (the LocalExecutor's worker
    processes). ``executor`` is ``[core] executor``; ``extra_processes`` (name -> process) are started
    after the three components, watched and stopped like them (their output is in
    ``processes/<name>.log``, see :meth:`wait_for_output`). Use it as a context manager, or call
    :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        database_url: str,
        dags_folder: Path,
        env: dict[str, str] | None = None,
        parallelism: int = 4,
        *,
        startup_timeout: float = 120.0,
        use_template: bool = True,
        executor: str = "LocalExecutor",
        extra_processes: Mapping[str, ExtraProcess] | None = None,
    ) -> None:
        self.server_url = database_url
        self.dags_folder = Path(dags_folder).resolve()
        self.extra_env = dict(env or {})
        self.parallelism = parallelism
        self.startup_timeout = startup_timeout
        self.use_template = use_template
        self.executor = executor
        self.extra_processes = dict(extra_processes or {})
        clash = set(self.extra_processes) & set(COMPONENTS)
        if clash:
            raise ValueError(f"extra_processes: {sorted(clash)} are names of the components")
        self.dbname = f"airflow_meta_{uuid.uuid4().hex[:10]}"
        self.metadata_url = make_conninfo(database_url, dbname=self.dbname)
        self.home = Path(tempfile.mkdtemp(prefix="airflow-cluster-"))
        self.log_dir = self.home / "logs"
        self.process_log_dir = self.home / "processes"
        self.port = 0
        self.api_url = ""
        self.env: dict[str, str] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._marker = uuid.uuid4().hex
        self._database_created = False
        self._migrated = False
        self._http: httpx.Client | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> AirflowCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # after a failure AIRFLOW_HOME (components' output, task logs) is kept for a post-mortem
        self.stop(keep_home=exc_type is not None)

    def start(self) -> None:
        """Create and migrate the metadata database, start the three components (and the extra
        processes), wait until the components are healthy."""
        try:
            self.process_log_dir.mkdir(parents=True, exist_ok=True)
            # an airflow.cfg of our own: otherwise each component writes a default one, racing
            (self.home / "airflow.cfg").write_text("# everything is set in the environment\n")
            self._create_database()
            for attempt in range(3):
                self.port = free_port()
                self.api_url = f"http://127.0.0.1:{self.port}"
                self.env = self._environment()
                if not self._migrated:
                    self._migrate()
                self._launch()
                if self._wait_until_healthy():
                    return
                # the api-server lost the race for its port: start again on another one
                self._stop_processes()
                if self._http is not None:
                    self._http.close()
                    self._http = None
                if attempt == 2:
                    raise self._error("the api-server could not bind a port")
        except BaseException:
            self.stop(keep_home=True)
            raise

    def stop(self, keep_home: bool = False) -> None:
        """Stop every process of the cluster (children and task processes too), drop its database and
        remove AIRFLOW_HOME (unless ``keep_home``)."""
        if self._http is not None:
            self._http.close()
            self._http = None
        self._stop_processes()
        if self._database_created:
            with (
                contextlib.suppress(psycopg.Error),
                psycopg.connect(self.server_url, autocommit=True) as conn,
            ):
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.dbname))
                )
            self._database_created = False
        if not keep_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def _environment(self) -> dict[str, str]:
        env = clean_environment()
        env.update(
            {
                MARKER_VAR: self._marker,
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW_CONFIG": str(self.home / "airflow.cfg"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(self.server_url, self.dbname),
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(max(16, self.parallelism)),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.home / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__API__BASE_URL": f"{self.api_url}/",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": base64.b64encode(os.urandom(16)).decode(),
                "AIRFLOW__API_AUTH__JWT_SECRET": base64.b64encode(os.urandom(32)).decode(),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.log_dir),
                "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
                "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "1",
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(self.home / "bundles"),
                "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "0",
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            }
        )
        env.update(self.extra_env)
        return env

    def _create_database(self) -> None:
        key = make_conninfo(self.server_url, dbname="")
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            template = _templates.get(key) if self.use_template else None
            if template is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))
            else:
                _create_from_template(conn, self.dbname, template[1])
        self._database_created = True
        self._migrated = template is not None

    def _migrate(self) -> None:
        out = self.process_log_dir / "db-migrate.log"
        with out.open("wb") as f:
            done = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"],
                env=self.env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=self.startup_timeout,
                check=False,
            )
        if done.returncode:
            raise AirflowClusterError(f"airflow db migrate failed ({done.returncode}):\n{_tail(out, 60)}")
        self._migrated = True
        if self.use_template:
            _save_template(self.server_url, self.dbname)

    def _launch(self) -> None:
        commands = {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            # the log server would listen on every interface; the logs are read from files anyway
            "scheduler": ["scheduler", "--skip-serve-logs"],
            "dag-processor": ["dag-processor"],
        }
        for name, args in commands.items():
            with (self.process_log_dir / f"{name}.log").open("ab") as f:
                self.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "airflow", *args],
                    env=self.env,
                    cwd=self.home,
                    stdin=subprocess.DEVNULL,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
        for name, extra in self.extra_processes.items():
            with (self.process_log_dir / f"{name}.log").open("ab") as f:
                self.processes[name] = subprocess.Popen(
                    [*extra.prefix, sys.executable, "-m", "airflow", *extra.args],
                    env={**self.env, **extra.env},
                    cwd=self.home,
                    stdin=subprocess.DEVNULL,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )

    def wait_for_output(self, name: str, text: str, timeout: float = 60.0) -> None:
        """Wait until the output of process ``name`` contains ``text`` (e.g. a Celery worker's "ready.");
        raise if it does not in time, or if any process of the cluster exits meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if text in self._out(name).read_text(errors="replace"):
                    return
            except FileNotFoundError:
                pass
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._error(f"airflow {name} did not print {text!r} in {timeout:.0f}s")
            time.sleep(0.3)

    def _wait_until_healthy(self) -> bool:
        """True once the api-server reports itself, the scheduler and the dag-processor healthy.

        False if the api-server could not bind its port (to try another); raises on anything else.
        """
        deadline = time.monotonic() + self.startup_timeout
        last: Any = None
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    if (
                        name == "api-server"
                        and "address already in use" in _tail(self._out(name), 40).lower()
                    ):
                        return False
                    raise self._error(f"airflow {name} exited with {proc.returncode} during start-up")
            try:
                response = self.http.get("/api/v2/monitor/health", timeout=5)
                last = response.json() if response.status_code == 200 else response.text
                if response.status_code == 200 and all(
                    (last.get(part) or {}).get("status") == "healthy"
                    for part in ("metadatabase", "scheduler", "dag_processor")
                ):
                    ping = self.http.get("/execution/health/ping", timeout=5)
                    if ping.status_code == 200:
                        return True
                    last = ping.text
            except (httpx.HTTPError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.3)
        raise self._error(
            f"the cluster was not healthy after {self.startup_timeout:.0f}s; last health: {last}"
        )

    def _stop_processes(self, grace: float = 3.0) -> None:
        family = self._family()
        for proc in self.processes.values():  # each component leads its own process group
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        family |= self._family()
        for proc in self.processes.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(list(family), timeout=5)
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.processes.clear()

    def _family(self) -> set[psutil.Process]:
        """The live processes of this cluster: the components' descendants, and any process working in
        AIRFLOW_HOME or carrying the marker (task processes whose supervisor is gone). The marker alone
        is not enough: setproctitle overwrites /proc/<pid>/environ."""
        found: set[psutil.Process] = set()
        for proc in self.processes.values():
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(proc.pid)
                found.add(parent)
                found.update(parent.children(recursive=True))
        me, home = os.getpid(), str(self.home)
        for p in psutil.process_iter():
            if p.pid == me:
                continue
            with contextlib.suppress(psutil.Error):
                cwd = p.cwd()
                if (
                    cwd == home
                    or cwd.startswith(home + os.sep)
                    or p.environ().get(MARKER_VAR) == self._marker
                ):
                    found.add(p)
        return found

    # -- the REST API and the CLI ----------------------------------------------------------------

    @property
    def http(self) -> httpx.Client:
        """An HTTP client on the api-server (all users are admins: no token needed)."""
        if self._http is None:
            self._http = httpx.Client(base_url=self.api_url, timeout=30)
        return self._http

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the REST API (``path`` under ``/api/v2``); the decoded JSON, or raise on an error status."""
        response = self.http.request(method, f"/api/v2/{path.lstrip('/')}", **kwargs)
        if response.status_code >= 400:
            raise AirflowClusterError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def airflow(
        self, *args: str, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` in the cluster's environment (about 5 s each: imports)."""
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode:
            raise AirflowClusterError(
                f"airflow {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    # -- DAGs and runs ---------------------------------------------------------------------------

    def wait_for_dag(self, dag_id: str, timeout: float = 60.0) -> None:
        """Wait until the dag-processor has parsed and serialized ``dag_id``; raise on import errors."""
        deadline = time.monotonic() + timeout
        errors_seen_at: float | None = None
        while True:
            with self.metadata() as conn:
                found = conn.execute(
                    "SELECT 1 FROM dag d JOIN serialized_dag s ON s.dag_id = d.dag_id"
                    " WHERE d.dag_id = %s AND NOT d.is_stale LIMIT 1",
                    (dag_id,),
                ).fetchone()
                errors = conn.execute("SELECT count(*) AS n FROM import_error").fetchone()
            if found:
                return
            now = time.monotonic()
            if errors and errors["n"] and errors_seen_at is None:
                errors_seen_at = now
            # a broken file: give the other files a few seconds to be parsed, then report it
            if errors_seen_at is not None and now - errors_seen_at > 10:
                raise self._error(f"DAG {dag_id} was not parsed: import errors", dag_id=dag_id)
            if now > deadline:
                raise self._error(f"DAG {dag_id} was not parsed in {timeout:.0f}s", dag_id=dag_id)
            self._check_alive()
            time.sleep(0.3)

    def import_errors(self) -> dict[str, str]:
        """The dag-processor's import errors: file name -> stack trace."""
        with self.metadata() as conn:
            return {
                r["filename"]: r["stacktrace"]
                for r in conn.execute("SELECT filename, stacktrace FROM import_error")
            }

    def unpause(self, dag_id: str) -> None:
        """Unpause a DAG (DAGs are paused at creation)."""
        self.api("PATCH", f"dags/{quote(dag_id, safe='')}", json={"is_paused": False})

    def pause(self, dag_id: str) -> None:
        """Pause a DAG."""
        self.api("PATCH", f"dags/{quote(dag_id, safe='')}", json={"is_paused": True})

    def trigger(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        logical_date: dt.datetime | None = None,
        run_id: str | None = None,
    ) -> str:
        """Trigger a DAG run through the REST API; its run id. ``logical_date`` must be timezone-aware."""
        if logical_date is not None and logical_date.tzinfo is None:
            raise ValueError("logical_date must be timezone-aware")
        body: dict[str, Any] = {
            "logical_date": logical_date.isoformat() if logical_date else None,
            "conf": conf or {},
        }
        if run_id:
            body["dag_run_id"] = run_id
        return str(self.api("POST", f"dags/{quote(dag_id, safe='')}/dagRuns", json=body)["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        """The state of a DAG run in the metadata database (None if there is no such run)."""
        with self.metadata() as conn:
            row = conn.execute(
                "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (dag_id, run_id)
            ).fetchone()
        return row["state"] if row else None

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 60.0) -> str:
        """Wait until a DAG run is finished; its state ("success" or "failed"). Raise on a timeout."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.run_state(dag_id, run_id)
            if state in FINISHED_STATES:
                return str(state)
            if time.monotonic() > deadline:
                raise self._error(
                    f"DAG run {dag_id}/{run_id} not finished in {timeout:.0f}s (state {state})",
                    dag_id=dag_id,
                    run_id=run_id,
                )
            self._check_alive(dag_id, run_id)
            time.sleep(0.3)

    def run_dag(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        logical_date: dt.datetime | None = None,
        timeout: float = 60.0,
    ) -> tuple[str, str]:
        """Wait for the DAG to be parsed, unpause it, trigger it and wait for the run: (run id, state)."""
        self.wait_for_dag(dag_id, timeout=timeout)
        self.unpause(dag_id)
        run_id = self.trigger(dag_id, conf=conf, logical_date=logical_date)
        return run_id, self.wait_for_run(dag_id, run_id, timeout=timeout)

    def task_instances(self, dag_id: str, run_id: str) -> list[TaskInstance]:
        """The task instances of a run, by task id and map index."""
        with self.metadata() as conn:
            rows = conn.execute(
                "SELECT task_id, map_index, state, start_date, end_date, try_number, pid, hostname"
                " FROM task_instance WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index",
                (dag_id, run_id),
            ).fetchall()
        return [TaskInstance(**r) for r in rows]

    # -- logs and diagnostics -------------------------------------------------------------------

    def task_log_paths(self, dag_id: str, run_id: str, task_id: str | None = None) -> list[Path]:
        """The log files of a run's task instances (every map index and attempt), sorted."""
        run_dir = self.log_dir / f"dag_id={dag_id}" / f"run_id={run_id}"
        pattern = f"task_id={task_id}/**/*.log" if task_id else "task_id=*/**/*.log"
        return sorted(run_dir.glob(pattern))

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, try_number: int | None = None
    ) -> str:
        """The log of one task instance try (the last one by default), as readable text."""
        task_dir = self.log_dir / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            task_dir /= f"map_index={map_index}"
        if try_number is None:
            tries = sorted(task_dir.glob("attempt=*.log"), key=lambda p: int(p.stem.split("=")[1]))
            if not tries:
                return f"(no log file in {task_dir})"
            path = tries[-1]
        else:
            path = task_dir / f"attempt={try_number}.log"
        try:
            return format_task_log(path.read_text(errors="replace"))
        except FileNotFoundError:
            return f"(no log file {path})"

    def failed_task_logs(self, dag_id: str, run_id: str, max_chars: int = 20000) -> str:
        """The logs of the run's task instances that did not succeed, for an assertion message."""
        parts = []
        for ti in self.task_instances(dag_id, run_id):
            if ti.state in ("success", "skipped"):
                continue
            log = self.task_log(dag_id, run_id, ti.task_id, ti.map_index, ti.try_number or None)
            parts.append(f"--- {ti.task_id}[{ti.map_index}] try {ti.try_number} ({ti.state}) ---\n{log}")
        return "\n".join(parts)[-max_chars:]

    def process_output(self, name: str, lines: int = 60) -> str:
        """The last ``lines`` of a component's output (stdout and stderr together)."""
        return _tail(self._out(name), lines)

    def diagnostics(self, dag_id: str | None = None, run_id: str | None = None, lines: int = 60) -> str:
        """Everything useful after a failure: the run's task states and logs, the import errors, then the
        last ``lines`` of each component's output."""
        parts = []
        with contextlib.suppress(psycopg.Error):
            if dag_id and run_id:
                tis = self.task_instances(dag_id, run_id)
                parts.append(
                    f"===== task instances of {dag_id}/{run_id} (run {self.run_state(dag_id, run_id)}) =====\n"
                    + "\n".join(f"{t.task_id}[{t.map_index}] {t.state} try {t.try_number}" for t in tis)
                )
        if dag_id and run_id:
            for path in self.task_log_paths(dag_id, run_id):
                text = format_task_log(path.read_text(errors="replace"))
                parts.append(
                    f"===== {path.relative_to(self.log_dir)} =====\n" + "\n".join(text.splitlines()[-lines:])
                )
        with contextlib.suppress(psycopg.Error):
            for filename, trace in self.import_errors().items():
                parts.append(f"===== import error in {filename} =====\n{trace}")
        for name in (*COMPONENTS, *self.extra_processes):
            if self._out(name).exists():
                proc = self.processes.get(name)
                code = None if proc is None else proc.poll()
                status = "" if proc is None else " (running)" if code is None else f" (exited with {code})"
                parts.append(
                    f"===== airflow {name}{status}: last {lines} lines =====\n{self.process_output(name, lines)}"
                )
        return "\n".join(parts)

    @contextlib.contextmanager
    def metadata(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """An autocommit connection to the metadata database (rows as dicts)."""
        with psycopg.connect(self.metadata_url, autocommit=True, row_factory=dict_row) as conn:
            yield conn

    def _out(self, name: str) -> Path:
        return self.process_log_dir / f"{name}.log"

    def _check_alive(self, dag_id: str | None = None, run_id: str | None = None) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise self._error(
                    f"airflow {name} exited with {proc.returncode}", dag_id=dag_id, run_id=run_id
                )

    def _error(
        self, message: str, dag_id: str | None = None, run_id: str | None = None
    ) -> AirflowClusterError:
        return AirflowClusterError(f"{message}\nAIRFLOW_HOME={self.home}\n{self.diagnostics(dag_id, run_id)}")


def _die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the test process dies (even by SIGKILL). Linux only."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _create_from_template(conn: psycopg.Connection[Any], name: str, template: str) -> None:
    # the copy fails while anything is connected to the template: only ever for a moment
    for attempt in range(20):
        try:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
            return
        except psycopg.errors.ObjectInUse:
            if attempt == 19:
                raise
            time.sleep(0.25)


def _save_template(server_url: str, migrated: str) -> None:
    """Keep a copy of a freshly migrated metadata database for the next clusters on the server."""
    key = make_conninfo(server_url, dbname="")
    with _templates_lock:
        if key in _templates:
            return
        name = f"airflow_tpl_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            _create_from_template(conn, name, migrated)
        _templates[key] = (server_url, name)


@atexit.register
def _drop_templates() -> None:
    for url, name in _templates.values():
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(url, autocommit=True, connect_timeout=3) as conn,
        ):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    _templates.clear()
