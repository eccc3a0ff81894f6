"""The embedded Postgres: reuse of a running server, and its URL as an Airflow connection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest

from airflow_campaign import cli, embedded


@pytest.fixture(scope="module")
def server(embedded_server: Any) -> Iterator[Any]:
    """The session's embedded server, or (with an external test database) a temporary one."""
    if embedded_server is not None:
        yield embedded_server
        return
    own = embedded.start(Path(tempfile.mkdtemp(prefix="cpg-", dir="/tmp")) / "pg")
    yield own
    own.stop()


def test_start_twice_reuses_the_running_server(server, capsys):
    again = embedded.start(server.data_dir)
    assert again.url == server.url
    assert again.data_dir == server.data_dir
    assert cli.main(["embedded", "start", "--data-dir", str(server.data_dir)]) == 0
    assert capsys.readouterr().out.strip() == server.url
    with psycopg.connect(again.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_another_process_reuses_it_too(server):
    code = (
        "import sys; from airflow_campaign import embedded; "
        "print(embedded.start(sys.argv[1], stop_at_exit=False).url)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == server.url
    with psycopg.connect(server.url) as conn:  # still running after that process exited
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_connection_fields_from_socket_and_tcp_urls():
    assert embedded.connection_fields("postgresql://postgres:@/postgres?host=/tmp/x/pg") == {
        "conn_type": "postgres",
        "host": "/tmp/x/pg",
        "login": "postgres",
        "schema": "postgres",
    }
    assert embedded.connection_fields("postgresql://app:s3cret@db.example:6543/campaign") == {
        "conn_type": "postgres",
        "host": "db.example",
        "login": "app",
        "password": "s3cret",
        "port": 6543,
        "schema": "campaign",
    }
    assert embedded.connection_fields("user=app dbname=c host=/run/pg sslmode=disable") == {
        "conn_type": "postgres",
        "host": "/run/pg",
        "login": "app",
        "schema": "c",
        "extra": {"sslmode": "disable"},
    }


def test_airflow_connection_reaches_the_server(server, monkeypatch):
    from airflow_campaign.hooks.campaign import CampaignHook

    fields = json.loads(server.airflow_connection())
    assert fields["conn_type"] == "postgres"
    monkeypatch.setenv("AIRFLOW_CONN_EMBEDDED_CHECK", server.airflow_connection())
    with CampaignHook(campaign_conn_id="embedded_check").connect() as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (fields["schema"],)


def test_cli_start_then_stop_from_other_processes():
    data_dir = str(Path(tempfile.mkdtemp(prefix="cpg-", dir="/tmp")) / "pg")  # short: socket paths

    def run(*args: str, rc: int = 0) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "airflow_campaign.cli", "embedded", *args, "--data-dir", data_dir],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == rc, done.stderr
        return done.stdout.strip()

    url = run("start")
    assert embedded.is_running(data_dir)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # a process using the server (as a running demo does) keeps it up, unless --force
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from airflow_campaign import embedded; "
            "embedded.start(sys.argv[1]); print('up', flush=True); time.sleep(120)",
            data_dir,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        said = run("stop", rc=1)
        assert said.startswith(
            f"the embedded Postgres in {data_dir} is still used by process(es) [{holder.pid}]"
        )
        assert embedded.is_running(data_dir)
        assert run("stop", "--force") == f"stopped the embedded Postgres in {data_dir}"
    finally:
        holder.kill()
        holder.wait()
    assert not embedded.is_running(data_dir)
    url = run("start")
    assert run("stop") == f"stopped the embedded Postgres in {data_dir}"
    assert not embedded.is_running(data_dir)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    assert run("stop") == f"no embedded Postgres is running in {data_dir}; nothing to stop"


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a parent that never reaps it has too)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def test_stop_stops_a_server_started_to_outlive_the_process():
    """The docs' example: ``start(..., stop_at_exit=False)`` then ``server.stop()``."""
    data_dir = Path(tempfile.mkdtemp(prefix="cpg-", dir="/tmp")) / "pg"
    server = embedded.start(data_dir, stop_at_exit=False)
    pid = _postmaster_pid(data_dir)
    socket = Path(psycopg.conninfo.conninfo_to_dict(server.url)["host"]) / ".s.PGSQL.5432"
    assert socket.exists()
    with psycopg.connect(server.url) as conn:
        assert conn.execute("SELECT pg_backend_pid() > 0").fetchone() == (True,)

    assert server.stop() == []
    assert not embedded.is_running(data_dir)
    assert not socket.exists()
    assert _gone(pid)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url, connect_timeout=2)

    # started again in the same process, it is a new server, and stop() stops that one too
    again = embedded.start(data_dir, stop_at_exit=False)
    assert _postmaster_pid(data_dir) != pid
    with psycopg.connect(again.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert again.stop() == []
    assert not embedded.is_running(data_dir)
    shutil.rmtree(data_dir.parent)


def test_stop_leaves_the_server_to_a_process_still_using_it_unless_forced():
    data_dir = Path(tempfile.mkdtemp(prefix="cpg-", dir="/tmp")) / "pg"
    server = embedded.start(data_dir, stop_at_exit=False)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from airflow_campaign import embedded; "
            "embedded.start(sys.argv[1]); print('up', flush=True); time.sleep(120)",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        assert server.stop() == [holder.pid]
        assert embedded.is_running(data_dir)
        assert embedded.start(data_dir).stop(force=True) == []
        assert not embedded.is_running(data_dir)
    finally:
        holder.kill()
        holder.wait()
    shutil.rmtree(data_dir.parent)
