"""``make ui`` end to end: the real ``airflow-campaign ui`` in a temporary workdir, on a free port.

It prepares a small demo, starts Airflow (api-server, scheduler, dag-processor, triggerer) on the
embedded Postgres and runs campaign_targeting there; the test logs in with the printed password,
reads the Campaigns pages and Airflow's API, follows the links of a sent email, then presses
Ctrl-C (SIGINT to the process group, as a terminal does) and checks that every process it started
is gone and the port is free.
"""

from __future__ import annotations

import contextlib
import email
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from email import policy
from pathlib import Path
from urllib.parse import quote

import httpx
import psutil
import pytest

from airflow_campaign.ui.serve import _port_free
from tests.airflow_cluster import clean_environment, free_port

REPO = Path(__file__).parents[2]
PROFILES = 1500


def _output(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _wait_for(proc: subprocess.Popen[bytes], out: Path, pattern: str, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, _output(out))
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"airflow-campaign ui exited with {proc.returncode}:\n{_output(out)[-6000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {pattern!r} in {timeout:.0f}s:\n{_output(out)[-6000:]}")
        time.sleep(0.5)


def _ours(work: Path) -> set[psutil.Process]:
    """Processes working in the workdir or naming it (the components, task processes, postgres)."""
    found = set()
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.pid == os.getpid():
                continue
            if p.cwd().startswith(str(work)) or any(str(work) in arg for arg in p.cmdline()):
                found.add(p)
    return found


def _family(proc: subprocess.Popen[bytes], work: Path) -> set[psutil.Process]:
    found = _ours(work)
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(proc.pid)
        found |= {parent, *parent.children(recursive=True)}
    return found


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_make_ui_runs_the_demo_dag_in_its_airflow_and_ctrl_c_stops_everything() -> None:
    work = Path(tempfile.mkdtemp(prefix="cui-", dir="/tmp"))  # short: the server's socket lives there
    out = work / "ui.out"
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    seen: set[psutil.Process] = set()
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_campaign.cli", "ui"]
            + ["--port", str(port), "--workdir", str(work), "--profiles", str(PROFILES)],
            cwd=REPO,
            env={**clean_environment(), "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, which Ctrl-C signals
        )
    try:
        password = _wait_for(proc, out, r"log in as admin / (\S+)\)", 240).group(1)
        assert re.search(r'psql "postgresql://[^"]+"', _output(out)), _output(out)
        seen |= _family(proc, work)
        run_id, state = _wait_for(proc, out, r"campaign_targeting run (\S+): (\w+)\n", 240).groups()
        assert state == "success", _output(out)
        assert "triggered campaign_targeting run" in _output(out)
        seen |= _family(proc, work)

        with httpx.Client(base_url=api, timeout=30) as http:
            token = http.post("/auth/token", json={"username": "admin", "password": password})
            assert token.status_code == 201, token.text
            http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
            page = http.get("/campaign/deliveries")
            assert page.status_code == 200 and "demo_gold_thanks" in page.text, page.text[:2000]
            run = http.get(f"/api/v2/dags/campaign_targeting/dagRuns/{quote(run_id, safe='')}")
            assert run.status_code == 200 and run.json()["state"] == "success", run.text
            # the run's Campaign tab has the run's deliveries
            tab = http.get("/campaign/run", params={"dag_id": "campaign_targeting", "run_id": run_id})
            assert tab.status_code == 200 and "demo_gold_thanks" in tab.text, tab.text[:2000]
            # the scheduled example DAGs stay paused: nothing but the demo run
            runs = http.get("/api/v2/dags/~/dagRuns", params={"limit": 100}).json()["dag_runs"]
            assert [r["dag_id"] for r in runs] == ["campaign_targeting"], runs
            health = http.get("/api/v2/monitor/health").json()
            assert health["triggerer"]["status"] == "healthy", health

        # an email's links: this api-server's public pages, which answer
        message = email.message_from_bytes(
            sorted((work / "outbox").glob("*.eml"))[0].read_bytes(), policy=policy.default
        )
        html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        links = [link.replace("&amp;", "&") for link in re.findall(r'href="([^"]+)"', html)]
        assert [link.split("?")[0] for link in links] == [
            f"{api}/campaign/public/mirror",
            f"{api}/campaign/public/unsubscribe",
        ], links
        for link in links:
            assert httpx.get(link, timeout=30).status_code == 200, link
        config = (work / "airflow-ui" / "airflow.cfg").read_text()
        assert "executor = LocalExecutor" in config and "postgresql" in config

        seen |= _family(proc, work)
        assert len(seen) > 5
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            alive = [(p.pid, p.name(), p.status()) for p in _family(proc, work) if p.is_running()]
            pytest.fail(f"still running 90 s after Ctrl-C; processes {alive}:\n{_output(out)[-4000:]}")
        assert code == 0, _output(out)[-3000:]
        left = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] + [
            p for p in _ours(work) if p.status() != psutil.STATUS_ZOMBIE
        ]
        assert not left, [(p.pid, p.cmdline()) for p in left if p.is_running()]
        assert not (work / "pg" / "postmaster.pid").exists()
        assert _port_free(port)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
        for p in seen | _family(proc, work):
            with contextlib.suppress(psutil.Error):
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
