"""``make ui`` (``airflow-campaign ui``): Airflow with the Campaigns pages on the demo's data.

Starts the embedded Postgres of the demo (``.campaign/pg``), runs the demo once when the campaign
database holds no delivery yet, puts Airflow's own metadata in a database ``airflow_ui`` on the
same server (a scheduler on SQLite fails with "database is locked"), and starts the api-server,
the scheduler (LocalExecutor) and the dag-processor on ``dags_examples/``. It prints the URL and a
login (user ``admin``, a password made at the first start and kept in
``.campaign/airflow-ui/passwords.json``). Ctrl-C stops every process it started.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

COMPONENTS = ("api-server", "scheduler", "dag-processor")
METADATA_DB = "airflow_ui"


def _environment(work: Path, url: str, port: int) -> dict[str, str]:
    from airflow_campaign.demo import airflow_env
    from airflow_campaign.embedded import sqlalchemy_url

    home = work / "airflow-ui"
    home.mkdir(parents=True, exist_ok=True)
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
    keys = json.loads(secret.read_text(encoding="utf-8"))
    api = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(airflow_env(work, url))  # the demo's DAGs folder, connection, unsubscribe key, channel
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(url, METADATA_DB),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(base64.b64decode(keys["fernet"])).decode(),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API__BASE_URL": f"{api}/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__SECRET_KEY": keys["secret"],
            "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt"],
        }
    )
    return env


def serve(workdir: str = ".campaign", port: int = 8080) -> int:
    import psycopg
    from psycopg import sql

    from airflow_campaign import embedded

    work = Path(workdir).resolve()
    server = embedded.start(work / "pg", stop_at_exit=False)
    with psycopg.connect(server.url, autocommit=True) as conn:
        ready = conn.execute("SELECT to_regclass('campaign.deliveries') IS NOT NULL").fetchone()
        deliveries = 0
        if ready and ready[0]:
            found = conn.execute("SELECT count(*) FROM campaign.deliveries").fetchone()
            deliveries = int(found[0]) if found else 0
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (METADATA_DB,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(METADATA_DB)))
    if not deliveries:
        print("no delivery in the campaign database yet: running the demo first (make demo) ...", flush=True)
        done = subprocess.run([sys.executable, "-m", "airflow_campaign.cli", "demo"], check=False)
        if done.returncode:
            print("the demo failed; fix it first (make demo)", file=sys.stderr)
            return done.returncode
    env = _environment(work, server.url, port)
    print("migrating Airflow's metadata database (airflow_ui on the embedded server) ...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True
    )
    logs = work / "airflow-ui" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name in COMPONENTS:
            out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 (open for the life of the process)
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "airflow", name],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        password = json.loads((work / "airflow-ui" / "passwords.json").read_text(encoding="utf-8"))["admin"]
        print(
            f"\nAirflow:   http://127.0.0.1:{port}/   (log in as admin / {password})\n"
            f"Campaigns: http://127.0.0.1:{port}/campaign/deliveries (and 'Campaigns' under Browse)\n"
            f"logs in {logs}; Ctrl-C stops everything\n",
            flush=True,
        )
        while all(p.poll() is None for p in processes):
            time.sleep(1)
        dead = [name for name, p in zip(COMPONENTS, processes, strict=True) if p.poll() is not None]
        print(f"stopped: {dead} exited; see {logs}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in processes:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        embedded.stop(work / "pg")
