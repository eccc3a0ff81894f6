"""``make ui`` (``airflow-campaign ui``): Airflow with the Campaigns pages on the demo's data.

Starts the embedded Postgres of the demo (``.campaign/pg``); when the campaign database holds no
delivery yet, prepares the demo's data (schema, seeded profiles, the sign-up file) as ``make demo``
does. Airflow's own metadata goes in a database ``airflow_ui`` on the same server (a scheduler on
SQLite fails with "database is locked"), and the api-server, the scheduler (LocalExecutor), the
dag-processor and the triggerer run on ``dags_examples/``. Once they are healthy it prints the URL
and a login (user ``admin``, a password made at the first start and kept in
``.campaign/airflow-ui/passwords.json``), then makes sure this Airflow holds a successful run of
``campaign_targeting`` with its deliveries in the campaign database: it re-uses one from an earlier
start, or unpauses the DAG and triggers it through the REST API and waits for it, printing its
progress. Ctrl-C stops every process it started, and the embedded server.

The demo email's links (unsubscribe, "View in your browser") point at this api-server's public
pages: ``$CAMPAIGN_DEMO_PUBLIC_URL`` is ``http://127.0.0.1:<port>/campaign/public``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

COMPONENTS: dict[str, list[str]] = {
    "api-server": ["api-server"],
    # the log servers would listen on every interface; the api-server reads the log files itself
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
HEALTH_PARTS = ("metadatabase", "scheduler", "dag_processor", "triggerer")
METADATA_DB = "airflow_ui"
DAG_ID = "campaign_targeting"
STARTUP_TIMEOUT = 240.0
CONFIG_HEADER = """\
# Written by `airflow-campaign ui` (make ui) at each start: the settings it runs Airflow with.
# Every process it starts gets the same settings as AIRFLOW__<SECTION>__<KEY> environment
# variables, which win over this file, so editing it changes nothing: it is rewritten at the next
# start. It lets the airflow CLI reach this Airflow while make ui runs, e.g.
#   AIRFLOW_HOME={home} .venv/bin/airflow dags list
# (the campaign_default connection and the unsubscribe key are environment variables only).
# It holds the secrets of secrets.json: keep it private.
"""


class ServeError(RuntimeError):
    """A component died or something did not happen in time; the message says where to look."""


def _secrets(home: Path) -> tuple[str, dict[str, str]]:
    """The admin password and the keys (jwt, secret, fernet), made at the first start."""
    passwords = home / "passwords.json"
    if not passwords.exists():
        passwords.write_text(json.dumps({"admin": secrets.token_urlsafe(12)}), encoding="utf-8")
        passwords.chmod(0o600)
    secret = home / "secrets.json"
    if not secret.exists():
        secret.write_text(
            json.dumps({k: base64.b64encode(os.urandom(32)).decode() for k in ("jwt", "secret", "fernet")}),
            encoding="utf-8",
        )
        secret.chmod(0o600)
    password = str(json.loads(passwords.read_text(encoding="utf-8"))["admin"])
    return password, json.loads(secret.read_text(encoding="utf-8"))


def _environment(work: Path, url: str, port: int) -> dict[str, str]:
    from airflow_campaign.demo import airflow_env
    from airflow_campaign.embedded import sqlalchemy_url

    home = work / "airflow-ui"
    home.mkdir(parents=True, exist_ok=True)
    _, keys = _secrets(home)
    api = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
    # the demo's DAGs folder, connection, unsubscribe key, channel, and the email links' base
    env.update(airflow_env(work, url, public_url=f"{api}/campaign/public"))
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(url, METADATA_DB),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(max(4, min(8, os.cpu_count() or 4))),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            # the example DAGs with a schedule stay paused until you unpause them; none catches up
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__SCHEDULER__CATCHUP_BY_DEFAULT": "False",
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(base64.b64decode(keys["fernet"])).decode(),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__API__BASE_URL": f"{api}/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": keys["secret"],
            "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt"],
            # task logs at INFO (the demo's WARNING keeps make demo's terminal quiet)
            "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(home / "bundles"),
        }
    )
    return env


def write_config(home: Path, env: dict[str, str]) -> Path:
    """Write the ``AIRFLOW__<SECTION>__<KEY>`` settings of ``env`` into ``home/airflow.cfg``.

    Otherwise each component writes a default one (SQLite, SequentialExecutor defaults) that says
    nothing of the settings really used.
    """
    sections: dict[str, dict[str, str]] = {}
    for name, value in sorted(env.items()):
        parts = name.split("__")
        if len(parts) != 3 or parts[0] != "AIRFLOW" or not parts[1] or not parts[2]:
            continue
        # configparser interpolation: a literal % is written %%
        sections.setdefault(parts[1].lower(), {})[parts[2].lower()] = value.replace("%", "%%")
    lines = [CONFIG_HEADER.format(home=home)]
    for section, options in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in options.items()]
        lines.append("")
    path = home / "airflow.cfg"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_bytes()[-8000:].decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:])


class _Airflow:
    """The started components, and the REST API of the api-server (logged in as admin)."""

    def __init__(self, port: int, password: str, logs: Path) -> None:
        import httpx

        self.api = f"http://127.0.0.1:{port}"
        self.password = password
        self.logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.http = httpx.Client(base_url=self.api, timeout=30)

    def start(self, env: dict[str, str]) -> None:
        for name, args in COMPONENTS.items():
            with (self.logs / f"{name}.log").open("ab") as out:
                self.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "airflow", *args],
                    env=env,
                    cwd=env["AIRFLOW_HOME"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C reaches make ui only; it stops them in order
                )

    def dead(self) -> list[str]:
        return [name for name, p in self.processes.items() if p.poll() is not None]

    def check_alive(self) -> None:
        dead = self.dead()
        if dead:
            name = dead[0]
            raise ServeError(
                f"airflow {name} exited with {self.processes[name].returncode}; the end of "
                f"{self.logs / (name + '.log')}:\n{_tail(self.logs / (name + '.log'))}"
            )

    def wait_until_healthy(self, timeout: float = STARTUP_TIMEOUT) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                response = self.http.get("/api/v2/monitor/health", timeout=5)
                last = response.json() if response.status_code == 200 else response.text
                if response.status_code == 200 and all(
                    (last.get(part) or {}).get("status") == "healthy" for part in HEALTH_PARTS
                ):
                    return
            except (httpx.HTTPError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise ServeError(
            f"Airflow was not healthy after {timeout:.0f}s (last health: {last}); see {self.logs}"
        )

    def login(self) -> None:
        """A JWT for admin from POST /auth/token, sent with every later request."""
        response = self.http.post("/auth/token", json={"username": "admin", "password": self.password})
        response.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, f"/api/v2/{path}", **kwargs)
        if response.status_code == 401:  # the token expired (a long session): log in again
            self.login()
            response = self.http.request(method, f"/api/v2/{path}", **kwargs)
        if response.status_code >= 400:
            raise ServeError(f"{method} /api/v2/{path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM each component's process group, then SIGKILL what is left (task processes too)."""
        import psutil

        self.http.close()
        family: set[psutil.Process] = set()
        for p in self.processes.values():
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(p.pid)
                family |= {parent, *parent.children(recursive=True)}
        for p in self.processes.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        for p in self.processes.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        for proc in family:
            with contextlib.suppress(psutil.Error):
                if proc.is_running():
                    proc.kill()
        psutil.wait_procs(list(family), timeout=5)
        for p in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)


def _delivered(campaign_url: str, run_id: str) -> bool:
    """Whether the campaign database holds the deliveries of that run (a later make demo replaces them)."""
    import psycopg

    with psycopg.connect(campaign_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM campaign.delivery_occurrences WHERE run_id = %s)", (run_id,)
        ).fetchone()
    return bool(row and row[0])


def ensure_run(af: _Airflow, campaign_url: str, timeout: float = STARTUP_TIMEOUT) -> tuple[str, str]:
    """A run of campaign_targeting in this Airflow, with its deliveries: (run id, state).

    Re-uses the latest successful run whose deliveries the campaign database holds (nothing is
    sent again), waits for a run still going, else unpauses the DAG and triggers a run.
    """
    dag = quote(DAG_ID, safe="")
    deadline = time.monotonic() + timeout
    while True:  # the dag-processor's first parse
        af.check_alive()
        response = af.http.get(f"/api/v2/dags/{dag}")
        if response.status_code == 200:
            break
        errors = af.call("GET", "importErrors")
        broken = [e for e in errors.get("import_errors", []) if DAG_ID in str(e.get("filename"))]
        if broken:
            raise ServeError(f"{DAG_ID} does not parse:\n{broken[0].get('stack_trace')}")
        if time.monotonic() > deadline:
            raise ServeError(f"the dag-processor did not parse {DAG_ID} in {timeout:.0f}s; see {af.logs}")
        time.sleep(1)
    if response.json().get("is_paused"):
        af.call("PATCH", f"dags/{dag}", json={"is_paused": False})  # schedule=None: only triggered runs
    runs = af.call("GET", f"dags/{dag}/dagRuns", params={"limit": 100}).get("dag_runs", [])
    runs.sort(key=lambda r: str(r.get("run_after") or r.get("logical_date") or ""), reverse=True)
    going = next((r for r in runs if r["state"] in ("queued", "running")), None)
    done = next(
        (r for r in runs if r["state"] == "success" and _delivered(campaign_url, r["dag_run_id"])), None
    )
    if done is not None:
        print(f"re-using {DAG_ID} run {done['dag_run_id']} (success; nothing sent again)", flush=True)
        return str(done["dag_run_id"]), "success"
    if going is not None:
        run_id = str(going["dag_run_id"])
        print(f"waiting for {DAG_ID} run {run_id} ({going['state']}) ...", flush=True)
    else:
        created = af.call("POST", f"dags/{dag}/dagRuns", json={"logical_date": None, "conf": {}})
        run_id = str(created["dag_run_id"])
        print(f"triggered {DAG_ID} run {run_id} (the demo campaign, sent to the outbox) ...", flush=True)
    return run_id, wait_for_run(af, run_id)


def wait_for_run(af: _Airflow, run_id: str) -> str:
    """Wait for the run to finish, printing its tasks' progress when it changes; its state."""
    dag, run = quote(DAG_ID, safe=""), quote(run_id, safe="")
    started, shown = time.monotonic(), ""
    while True:
        af.check_alive()
        state = af.call("GET", f"dags/{dag}/dagRuns/{run}")["state"]
        tis = af.call("GET", f"dags/{dag}/dagRuns/{run}/taskInstances", params={"limit": 1000})
        tasks = tis.get("task_instances", [])
        finished = [t for t in tasks if t["state"] in ("success", "failed", "skipped", "upstream_failed")]
        running = sorted(t["task_id"] for t in tasks if t["state"] == "running")
        line = f"  {len(finished)} of {len(tasks)} tasks done" + (
            f"; running {', '.join(running)}" if running else ""
        )
        if line != shown:
            print(f"{line} ({time.monotonic() - started:.0f}s)", flush=True)
            shown = line
        if state in ("success", "failed"):
            failed = sorted(t["task_id"] for t in tasks if t["state"] in ("failed", "upstream_failed"))
            if failed:
                print(f"  failed: {', '.join(failed)} (logs in the UI, or under {af.logs})", flush=True)
            return str(state)
        time.sleep(2)


def _metadata_database(url: str) -> int:
    """Create the metadata database when missing; the number of deliveries in the campaign database."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        ready = conn.execute("SELECT to_regclass('campaign.deliveries') IS NOT NULL").fetchone()
        deliveries = 0
        if ready and ready[0]:
            found = conn.execute("SELECT count(*) FROM campaign.deliveries").fetchone()
            deliveries = int(found[0]) if found else 0
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (METADATA_DB,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(METADATA_DB)))
    return deliveries


def _alembic_revision(url: str) -> str | None:
    """The metadata database's alembic revision (None before the first migration)."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(make_conninfo(url, dbname=METADATA_DB), autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
            return None
        row = conn.execute(
            "SELECT string_agg(version_num, ',' ORDER BY version_num) FROM alembic_version"
        ).fetchone()
    return row[0] if row else None


def _stamp_text(url: str) -> str:
    from importlib.metadata import version

    return f"apache-airflow {version('apache-airflow')} at {_alembic_revision(url)}"


def _migrated(home: Path, url: str) -> bool:
    """Whether ``airflow db migrate`` already ran with this Airflow on this database (it takes ~15 s
    even when there is nothing to do): the stamp written after it still describes the database."""
    stamp = home / "migrated"
    return stamp.exists() and stamp.read_text(encoding="utf-8") == _stamp_text(url)


def _stamp(home: Path, url: str) -> None:
    (home / "migrated").write_text(_stamp_text(url), encoding="utf-8")


def serve(workdir: str = ".campaign", port: int = 8080, profiles: int = 100_000) -> int:
    """``airflow-campaign ui``: see the module's docstring. ``profiles``: how many to seed when the
    campaign database holds no delivery yet."""
    from airflow_campaign import embedded
    from airflow_campaign.demo import prepare

    if not _port_free(port):
        print(f"port {port} on 127.0.0.1 is in use: stop what listens there, or pass --port", file=sys.stderr)
        return 1
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    server = embedded.start(work / "pg", stop_at_exit=False)
    af: _Airflow | None = None
    try:
        print(f"campaign database (embedded Postgres): {server.url}", flush=True)
        if not _metadata_database(server.url):
            print(
                f"no delivery in the campaign database yet: preparing the demo's data ({profiles} profiles)"
            )
            prepare(work, server.url, profiles)
        env = _environment(work, server.url, port)
        home = Path(env["AIRFLOW_HOME"])
        config = write_config(home, env)
        print(
            f"Airflow settings: {config} (the environment of each process wins over it)\n"
            f"migrating Airflow's metadata database ({METADATA_DB} on the embedded server) ...",
            flush=True,
        )
        if _migrated(home, server.url):
            print("  already at this Airflow's head: nothing to migrate", flush=True)
        else:
            migrated = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"],
                env=env,
                cwd=home,
                capture_output=True,
                check=False,
            )
            if migrated.returncode:
                print(
                    migrated.stdout.decode(errors="replace")[-3000:],
                    migrated.stderr.decode(errors="replace")[-3000:],
                )
                print("airflow db migrate failed", file=sys.stderr)
                return 1
            _stamp(home, server.url)
        logs = home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        password, _ = _secrets(home)
        af = _Airflow(port, password, logs)
        af.start(env)
        print(f"starting {', '.join(COMPONENTS)} (output in {logs}) ...", flush=True)
        af.wait_until_healthy()
        af.login()
        api = af.api
        print(
            f"\nAirflow:   {api}/   (log in as admin / {password})\n"
            f"Campaigns: {api}/campaign/deliveries (and 'Campaigns' under Browse)\n"
            f'psql:      psql "{server.url}"   (the campaign database)\n'
            f"logs in {logs}; Ctrl-C stops everything\n",
            flush=True,
        )
        run_id, state = ensure_run(af, server.url)
        run = quote(run_id, safe="")
        print(
            f"{DAG_ID} run {run_id}: {state}\n"
            f"  the run in Airflow (its 'Campaign' tab): {api}/dags/{DAG_ID}/runs/{run}\n"
            f"  a delivery's report (the task's 'Delivery report' tab): {api}/dags/{DAG_ID}/runs/{run}/tasks/gold_email\n"
            f"  the emails: {work / 'outbox'} (.eml files; their links point at this api-server)\n"
            "ready; Ctrl-C stops everything",
            flush=True,
        )
        while not af.dead():
            time.sleep(1)
        print(f"stopped: {af.dead()} exited; see {logs}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    except ServeError as exc:
        print(f"airflow-campaign ui: {exc}", file=sys.stderr)
        return 1
    finally:
        # a second Ctrl-C while stopping must not leave processes behind
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if af is not None:
                af.stop()
            embedded.stop(work / "pg")
        finally:
            signal.signal(signal.SIGINT, previous)
