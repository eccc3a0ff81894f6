"""`airflow-campaign demo`: the demo campaign on embedded defaults, with a report checked by SQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

DAG_ID = "campaign_targeting"

# What each demo task must produce, computed directly on the seeded data.
_FR = "country = 'FR' AND email IS NOT NULL AND NOT email_denylisted"
_NEWS = (
    "SELECT s.profile_id FROM campaign.subscriptions s JOIN campaign.services v ON v.id = s.service_id"
    " WHERE v.name = 'newsletter'"
)
_DNC = (
    "SELECT m.member_key::bigint FROM campaign.audience_members m JOIN campaign.audiences a"
    " ON a.id = m.audience_id WHERE a.name = 'do_not_contact'"
)
_CONTACTABLE = f"SELECT * FROM campaign.profiles WHERE {_FR} AND id IN ({_NEWS}) AND id NOT IN ({_DNC})"
_BEST = f"SELECT email, max(loyalty_points) AS points FROM ({_CONTACTABLE}) c GROUP BY email"
CHECKS: dict[str, str] = {
    "french_profiles": f"SELECT count(*) FROM campaign.profiles WHERE {_FR}",
    "newsletter_readers": f"SELECT count(DISTINCT profile_id) FROM ({_NEWS}) n",
    "french_readers": f"SELECT count(*) FROM campaign.profiles WHERE {_FR} AND id IN ({_NEWS})",
    "do_not_contact": f"SELECT count(*) FROM ({_DNC}) d",
    "contactable": f"SELECT count(*) FROM ({_CONTACTABLE}) c",
    "one_per_address": f"SELECT count(*) FROM ({_BEST}) b",
    "enriched": f"SELECT count(*) FROM ({_BEST}) b",
    "segments: gold": f"SELECT count(*) FROM ({_BEST}) b WHERE points >= 8000",
    "segments: test_cell": f"SELECT ceil(count(*) * 0.10)::bigint FROM ({_BEST}) b WHERE points < 8000",
    "segments: regular": (
        f"SELECT count(*) - ceil(count(*) * 0.10)::bigint FROM ({_BEST}) b WHERE points < 8000"
    ),
}


def write_signups(conn: Any, path: Path) -> dict[str, int]:
    """A store's sign-up file: known customers' emails, unknown ones and a few bad point values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    emails = [
        r[0]
        for r in conn.execute(
            "SELECT email FROM campaign.profiles WHERE email LIKE '%@%' AND id % 487 = 0 ORDER BY id"
        )
    ]
    lines = ["email,points"]
    lines += [f"{email},{i * 10}" for i, email in enumerate(emails)]
    lines += [f"walk-in-{i}@store.example.com,5" for i in range(20)]
    lines += [f"{email},lots" for email in emails[:5]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"known": len(emails), "unknown": 20, "bad_points": 5}


def airflow_env(workdir: Path, url: str) -> dict[str, str]:
    """Environment for an Airflow on SQLite in ``workdir/airflow`` using the embedded server."""
    import json

    from airflow_campaign.embedded import connection_fields

    home = workdir / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path("dags_examples").resolve()),
        "AIRFLOW_CONN_CAMPAIGN_DEFAULT": json.dumps(connection_fields(url)),
        "CAMPAIGN_DEMO_DIR": str(workdir),
        # deliveries that name no channel use the outbox here; a production deployment names its own
        "AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL": "outbox",
        # the demo's own key for signing unsubscribe links (create a secret one in production)
        "AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY": "demo-only-unsubscribe-signing-key",
    }


def load_dag(dag_file: Path, dag_id: str) -> Any:
    """Import ``dag_file`` and return its DAG ``dag_id``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"campaign_demo_{dag_id}", dag_file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(
        v for v in vars(module).values() if getattr(v, "dag_id", None) == dag_id and hasattr(v, "test")
    )


def report(conn: Any, run_id: str) -> list[tuple[str, int, int | None]]:
    """(output, rows, rows expected by direct SQL) for every population the run produced."""
    rows = conn.execute(
        "SELECT task_id, output, row_count FROM campaign.staging_tables"
        " WHERE dag_id = %s AND run_id = %s ORDER BY created_at, output",
        (DAG_ID, run_id),
    ).fetchall()
    out = []
    for task_id, output, count in rows:
        label = f"{task_id}: {output}" if output else task_id
        expected = conn.execute(CHECKS[label]).fetchone()[0] if label in CHECKS else None
        out.append((label, int(count), expected))
    return out


def xcom(dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
    """What a task of the demo run pushed under ``key`` (None when it pushed nothing)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids=task_id, key=key)
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def activities(conn: Any, run_id: str) -> list[tuple[str, str, str, bool]]:
    """(task, what it did, what SQL or the file says, whether they agree) for the tasks using the population."""
    out: list[tuple[str, str, str, bool]] = []
    audience = xcom(DAG_ID, run_id, "readers_audience")
    if audience:
        members = conn.execute(
            "SELECT count(*) FROM campaign.audience_members m JOIN campaign.audiences a ON a.id = m.audience_id"
            " WHERE a.name = %s",
            (audience["audience"],),
        ).fetchone()[0]
        out.append(
            (
                "readers_audience",
                f"audience {audience['audience']}: {audience['size']} members",
                f"{members} members",
                members == audience["size"],
            )
        )
    extract = xcom(DAG_ID, run_id, "gold_file")
    if extract:
        path = Path(extract["path"]) if extract.get("path") else None
        lines = sum(1 for _ in path.open(encoding="utf-8")) - 1 if path and path.exists() else -1
        out.append(
            (
                "gold_file",
                f"{extract['rows']} rows, {extract['bytes']} bytes: {extract['path']}",
                f"{lines} data lines in the file",
                lines == extract["rows"],
            )
        )
    points = xcom(DAG_ID, run_id, "raise_points")
    signups = xcom(DAG_ID, run_id, "store_signups")
    if points and signups:
        from psycopg import sql

        below = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {} s JOIN campaign.profiles p ON p.id = s.id WHERE s.points > p.loyalty_points"
            ).format(sql.Identifier(*signups["table"].split(".")))
        ).fetchone()[0]
        out.append(
            (
                "raise_points",
                f"{points['updated']} raised, {points['unchanged']} unchanged, {points['unmatched']} unmatched",
                f"{below} profiles below their store balance",
                below == 0,
            )
        )
    promotions = xcom(DAG_ID, run_id, "promotions")
    if promotions:
        events = conn.execute(
            "SELECT count(*) FROM campaign.subscription_events e JOIN campaign.services v ON v.id = e.service_id"
            " WHERE v.name = 'promotions' AND e.run_id = %s AND e.operation = 'subscribe'",
            (run_id,),
        ).fetchone()[0]
        shown = ", ".join(f"{k} {v}" for k, v in promotions.items() if isinstance(v, int))
        out.append(
            ("promotions", shown, f"{events} subscribe events", events == promotions.get("subscribed"))
        )
    email = xcom(DAG_ID, run_id, "gold_email")
    report_ = xcom(DAG_ID, run_id, "gold_email", "report")
    if report_ is not None:
        sent = report_["by_status"].get("sent", 0)
        logged = conn.execute(
            "SELECT count(*) FROM campaign.delivery_logs l JOIN campaign.deliveries d ON d.id = l.delivery_id"
            " WHERE d.name = 'demo_gold_thanks' AND l.status = 'sent'"
        ).fetchone()[0]
        folder = Path(os.environ.get("CAMPAIGN_DEMO_DIR", ".campaign")) / "outbox"
        files = len(list(folder.glob("*.eml")))
        excluded = ", ".join(f"{k} {v}" for k, v in sorted(report_["excluded"].items())) or "none"
        out.append(
            (
                "gold_email",
                f"sent {sent} of {report_['total']}; excluded: {excluded}",
                f"{logged} sent in the ledger, {files} .eml files",
                sent == logged == files and bool(email),
            )
        )
    return out


def run_demo(profiles: int = 100_000, workdir: str = ".campaign") -> int:
    """Start the embedded server, create and seed the schema, run the demo DAG, print the report."""
    import psycopg

    from airflow_campaign import embedded
    from airflow_campaign.schema import migrate
    from airflow_campaign.seed import history, seed

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    server = embedded.start(work / "pg")
    print(f"embedded Postgres: {server.url}")
    with psycopg.connect(server.url, autocommit=True) as conn:
        migrate.upgrade(conn)
        print(f"campaign schema at version {migrate.current_version(conn)}")
        t = time.monotonic()
        replaced = history(conn)  # the demo's own database: a previous demo's runs are replaced
        counts = seed(conn, profiles, force=True)
        if replaced:
            print(
                "replaced the previous demo's history: "
                + "; ".join(f"{what}: {n}" for what, n in replaced.items())
            )
        print(f"seeded {counts['profiles']} profiles in {time.monotonic() - t:.1f}s")
        signups = write_signups(conn, work / "in" / "store_signups.csv")
    env = airflow_env(work, server.url)
    os.environ.update(env)
    print("preparing Airflow's metadata database (SQLite) ...")
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ
    )
    print(f"running DAG {DAG_ID} with dag.test() ...")
    warnings.filterwarnings("ignore", message=".*httpx.*")
    dag_run = load_dag(Path("dags_examples") / f"{DAG_ID}.py", DAG_ID).test()
    state = str(getattr(dag_run, "state", "unknown"))
    with psycopg.connect(server.url, autocommit=True) as conn:
        lines = report(conn, dag_run.run_id)
    print()
    print(f"DAG run {dag_run.run_id}: {state}")
    print(f"{'task / output':<28} {'rows':>8} {'SQL says':>9}")
    mismatches = 0
    for label, count, expected in lines:
        mark = "" if expected is None else (f"{expected:>9}" + ("" if expected == count else "  MISMATCH"))
        mismatches += expected is not None and expected != count
        print(f"{label:<28} {count:>8} {mark}")
    with psycopg.connect(server.url, autocommit=True) as conn:
        used = activities(conn, dag_run.run_id)
    if used:
        print(f"\n{'task':<18} what it did / what the database or the files say")
        for task, did, check, ok in used:
            print(f"{task:<18} {did}")
            print(f"{'':<18}   check: {check}{'' if ok else '  MISMATCH'}")
            mismatches += not ok
    print(
        f"\nstore_signups.csv had {signups['known']} known, {signups['unknown']} unknown and "
        f"{signups['bad_points']} bad-points rows"
    )
    print(f"done in {time.monotonic() - started:.0f}s; data in {work}")
    return 0 if state.endswith("success") and not mismatches else 1
