"""`airflow-campaign dev`: DAG files of the tests' own, run by the real command in a subprocess."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from airflow_campaign import cli, embedded
from tests.docs_support import DOCS

FR = "country = 'FR' AND email IS NOT NULL AND NOT email_denylisted"

GOOD_DAG = """
import datetime as dt

from airflow.sdk import DAG, task

from airflow_campaign.operators.targeting import QueryOperator

with DAG(dag_id="dev_good", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)) as dag:
    french = QueryOperator(task_id="french", where="{where}", columns=["email"])

    @task
    def echo(**context):
        return {{"conf": context["dag_run"].conf, "ds": context["ds"]}}

    french >> echo()
"""

BAD_DAG = """
import datetime as dt

from airflow.sdk import DAG

from airflow_campaign.operators.targeting import QueryOperator, SegmentationOperator

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)

with DAG(dag_id="dev_other", schedule=None, start_date=START) as other:
    QueryOperator(task_id="unused")

with DAG(dag_id="dev_bad", schedule=None, start_date=START) as dag:
    fine = QueryOperator(task_id="fine", where="id <= 10")
    typo = QueryOperator(task_id="typo", where="loyalty_point > 100")
    SegmentationOperator(task_id="split", population=typo.output, segments=[{"code": "a"}])
"""


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """One work directory for the module's runs (the second reuses the server and Airflow's database)."""
    path = Path(tempfile.mkdtemp(prefix="cdev-", dir="/tmp"))  # short: the server's socket lives in it
    yield path
    embedded.stop(path / "pg", force=True)
    shutil.rmtree(path, ignore_errors=True)


def dag_file(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "dags"  # dag.test() parses the whole folder: one DAG file in it
    folder.mkdir()
    path = folder / "my_dag.py"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def dev(workdir: Path, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``airflow-campaign dev`` as a user runs it: no AIRFLOW_* variable of the test session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    return subprocess.run(
        [sys.executable, "-m", "airflow_campaign.cli", "dev", str(path), "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def exported(out: str) -> dict[str, str]:
    """The environment the command printed, as the shell would read it."""
    pairs = (
        shlex.split(line.strip().removeprefix("export "))[0]
        for line in out.splitlines()
        if line.startswith("  export ")
    )
    return dict(pair.split("=", 1) for pair in pairs)


def results(out: str) -> dict[str, tuple[str, str]]:
    """Task id -> (state, what the line says after the duration) from the results table."""
    table = out[out.index("\ntask ") :].splitlines()[2:]
    found = {}
    for line in table:
        match = re.match(r"^(\S+)\s+(\w+)\s+(?:[\d.]+s)?\s*(.*)$", line)
        if match and not line.startswith(" "):
            found[match[1]] = (match[2], match[3])
    return found


@pytest.fixture(scope="module")
def good_run(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The DAG file that succeeds, and what ``dev`` printed running it (first in ``workdir``)."""
    path = dag_file(tmp_path_factory.mktemp("good"), GOOD_DAG.format(where=FR))
    done = dev(
        workdir, path, "--seed", "2000", "--conf", '{"label": "spring"}', "--logical-date", "2026-03-01"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return path, done.stdout


def test_a_dag_that_succeeds(workdir, good_run):
    path, out = good_run
    assert "seeded 2000 demo profiles" in out
    url = re.search(r"^embedded Postgres: (\S+)$", out, re.MULTILINE)[1]
    env = exported(out)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(path.parent)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{workdir / 'airflow' / 'airflow.db'}"
    assert env["AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL"] == "outbox"
    assert env["AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY"]
    assert json.loads(env["AIRFLOW_CONN_CAMPAIGN_DEFAULT"]) == embedded.connection_fields(url)

    assert re.search(r"^DAG dev_good, run \S+: success$", out, re.MULTILINE)
    tasks = results(out)
    assert set(tasks) == {"french", "echo"}
    with psycopg.connect(url) as conn:
        expected = conn.execute(f"SELECT count(*) FROM campaign.profiles WHERE {FR}").fetchone()[0]
        state, shown = tasks["french"]
        table = re.fullmatch(rf'"{expected} rows in (campaign_staging\.dev_good_french_\w+)"', shown)
        assert state == "success" and table, tasks["french"]
        assert conn.execute(f"SELECT count(*) FROM {table[1]}").fetchone() == (expected,)
        assert 0 < expected < 2000
    assert tasks["echo"] == ("success", '{"conf": {"label": "spring"}, "ds": "2026-03-01"}')


def test_a_dag_whose_task_fails(workdir, good_run, tmp_path):
    path = dag_file(tmp_path, BAD_DAG)
    done = dev(workdir, path, "--dag-id", "dev_bad")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "kept the 2000 profiles in the database" in out
    assert re.search(r"^DAG dev_bad, run \S+: failed$", out, re.MULTILINE)
    tasks = results(out)
    assert tasks["fine"][0] == "success"
    assert re.fullmatch(r'"10 rows in campaign_staging\.dev_bad_fine_\w+"', tasks["fine"][1])
    assert tasks["typo"] == (
        "failed",
        "error: CampaignError: where='loyalty_point > 100': the database rejected the SQL (UndefinedColumn: "
        'column "loyalty_point" does not exist). Hint: Perhaps you meant to reference the column '
        '"loyalty_points". Nothing was written; fix the option and clear the task.',
    )
    assert tasks["split"] == ("upstream_failed", "")
    assert "unused" not in tasks  # the file's other DAG did not run


def test_the_printed_environment_runs_the_documented_recipe_by_hand(workdir, good_run):
    """`python docs/examples/try_locally.py` in the environment `dev` printed (docs/running-your-dag.md)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env |= exported(good_run[1]) | {"AIRFLOW__CORE__DAGS_FOLDER": str(DOCS / "examples")}
    ran = subprocess.run(
        [sys.executable, str(DOCS / "examples" / "try_locally.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: line for line in ran.stdout.splitlines()}
    url = re.search(r"^embedded Postgres: (\S+)$", good_run[1], re.MULTILINE)[1]
    with psycopg.connect(url) as conn:
        german = conn.execute(
            f"SELECT count(*) FROM campaign.profiles WHERE {FR.replace('FR', 'DE')}"
        ).fetchone()[0]
    assert german > 0
    assert lines["customers"].startswith("customers success {'kind': 'table'")
    assert f"'count': {german}," in lines["customers"]
    assert re.fullmatch(r"sizes success \{'gold': \d+, 'standard': \d+\}", lines["sizes"])
    gold, standard = map(int, re.findall(r"\d+", lines["sizes"]))
    assert gold + standard == german


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["nowhere/my_dag.py"],
            "nowhere/my_dag.py: no such file; give the path of a .py file that defines a DAG.",
        ),
        (["{file}", "--conf", "[1]"], "--conf='[1]' is a JSON list; dag_run.conf is an object"),
        (["{file}", "--conf", "{x"], "--conf='{x' is not JSON"),
        (
            ["{file}", "--logical-date", "yesterday"],
            "--logical-date='yesterday' is not a date; write e.g. 2026-01-31",
        ),
        (["{file}", "--seed", "-1"], "--seed=-1 is negative"),
    ],
)
def test_bad_arguments_stop_before_anything_starts(tmp_path, capsys, args, message):
    path = tmp_path / "my_dag.py"
    path.write_text("", encoding="utf-8")
    argv = ["dev", *(a.replace("{file}", str(path)) for a in args), "--workdir", str(tmp_path / "work")]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.startswith(f"airflow-campaign: {message}")
    assert not (tmp_path / "work").exists()
