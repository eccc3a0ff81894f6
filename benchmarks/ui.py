"""The Campaigns pages in a real Airflow api-server, on a ledger of BENCH_UI_LEDGER_ROWS rows.

The acceptance criterion: the deliveries page (``/campaign/deliveries``) and a delivery report
(``/campaign/deliveries/{id}``) each answer in under 300 ms on a ledger of 1M rows, and the pages
read from indexes, so they stay fast on a 10M-row ledger.

The ledger is a campaign database of its own (``campaign_bench_ui_<rows>``) on the bench server,
migrated, then filled set-based (``INSERT … SELECT … generate_series``): a daily newsletter of
about 16,000 rows an occurrence (60 occurrences at 1M rows, about 620 at 10M), a weekly SMS, a
push campaign, an hourly welcome email and a monthly reactivation email. About 3.5% of each
occurrence is excluded (quarantined, denylisted, fatigue, missing address), 0.3% failed with an
SMTP error and 0.03% unknown, the rest sent; each occurrence's ``counts`` is what the engine
records (``engine.report``, as ``finish_occurrence`` does). The secondary indexes and the unique
key are dropped while the rows go in and created again from their own definitions, then
``VACUUM ANALYZE``. The database is kept and reused while the row count and this file are the
same (a comment on the ledger says which); the time to build it is printed.

Airflow (tests/airflow_cluster.py: api-server with the plugin from its entry point, scheduler,
dag-processor; metadata on the bench server) parses a DAG file with the deliveries' DAGs, and a
``viewer`` (SimpleAuthManager, read-only: addresses masked) gets a bearer token from
``/auth/token``. Each page is requested BENCH_UI_WARMUP times (default 5) untimed, then
BENCH_UI_REQUESTS times (default 30) each, alternating, on one keep-alive httpx client. Every
answer must be 200 and show what the database holds: on the list, the daily newsletter's
occurrence count and the funnel of its last occurrence (counted from the ledger); on the report,
the last occurrence's funnel and exclusion reasons and its 20 newest failed/unknown rows.

The queries each page runs (airflow_campaign/ui/data.py, recorded while calling the same
functions the routes call) are run again with ``EXPLAIN (ANALYZE, BUFFERS)``; a Seq Scan of
delivery_logs fails the benchmark, a Seq Scan of delivery_occurrences is reported (and the plan
with ``enable_seqscan = off`` too, to show an index serves it).

Names in results.json (against the 300 ms ceiling, ratio = time / 300 ms):
``Campaigns deliveries page, N-row ledger, median ms``, ``… p95 ms``, and
``Campaigns delivery report, N-row ledger, median ms``, ``… p95 ms``.
Run alone: ``python -m benchmarks.ui`` (BENCH_UI_LEDGER_ROWS=10000000 for the 10M run).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

CEILING = 0.300  # seconds, for each page
ROWS = int(os.environ.get("BENCH_UI_LEDGER_ROWS", "1000000"))
REQUESTS = int(os.environ.get("BENCH_UI_REQUESTS", "30"))
WARMUP = int(os.environ.get("BENCH_UI_WARMUP", "5"))
PER_OCCURRENCE = 16_000  # the daily newsletter's rows per occurrence
PASSWORD = "bench-viewer-pw"
DAILY = "newsletter.daily"
# name, channel, DAG, schedule, occurrences, rows each (at 1M; fewer below 1M)
OTHERS = [
    ("sms.weekly_offers", "sms", "bench_ui_weekly_sms", "@weekly", 8, 2500),
    ("push.flash_sale", "push", "bench_ui_push", None, 6, 2000),
    ("email.welcome", "email", "bench_ui_welcome", "@hourly", 48, 100),
    ("email.reactivation", "email", "bench_ui_reactivation", "@monthly", 3, 1000),
]
DAILY_DAG = "bench_ui_newsletter"
STATUSES = ("sent", "failed", "simulated", "unknown", "pending", "claimed", "sending")


def plan(rows: int) -> list[tuple[str, str, str, str | None, int, int]]:
    """The deliveries, each with its number of occurrences and rows per occurrence (``rows`` in all)."""
    factor = min(1.0, rows / 1_000_000)
    others = [(n, c, d, s, occ, max(1, round(each * factor))) for n, c, d, s, occ, each in OTHERS]
    left = rows - sum(occ * each for *_, occ, each in others)
    occurrences = max(1, round(left / PER_OCCURRENCE))
    return [(DAILY, "email", DAILY_DAG, "@daily", occurrences, left // occurrences), *others]


# ---- the ledger ---------------------------------------------------------------------------------


def _tag(rows: int) -> str:
    return f"bench ui ledger {rows} {hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]}"


def ledger(server_url: str, rows: int) -> tuple[str, float | None]:
    """The ledger database's URL, and the seconds it took to build (None: reused)."""
    name = f"campaign_bench_ui_{rows}"
    url = make_conninfo(server_url, dbname=name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                have = conn.execute(
                    "SELECT obj_description('campaign.delivery_logs'::regclass, 'pg_class')"
                ).fetchone()
            if have and have[0] == _tag(rows):
                from airflow_campaign.schema import migrate

                with psycopg.connect(url, autocommit=True) as conn:
                    migrate.upgrade(conn)  # a newer migration: applied, the rows kept
                return url, None
        except psycopg.Error:
            pass
    started = time.perf_counter()
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    build(url, rows)
    return url, time.perf_counter() - started


def build(url: str, rows: int) -> None:
    from airflow_campaign.delivery.engine import report
    from airflow_campaign.schema import migrate

    with psycopg.connect(url, autocommit=True) as conn:
        migrate.upgrade(conn)
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '512MB'")
        service = conn.execute(
            "INSERT INTO campaign.services (name, label, channel) VALUES ('newsletter', 'The newsletter', 'email')"
            " RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "CREATE TEMP TABLE bench_plan (occurrence_id bigint PRIMARY KEY, n integer, channel text,"
            " started timestamptz)"
        )
        end = "2026-03-01 00:00+00"
        steps = {
            "@daily": "1 day",
            "@weekly": "7 days",
            "@hourly": "1 hour",
            "@monthly": "30 days",
            None: "3 days",
        }
        for name, channel, dag_id, schedule, occurrences, each in plan(rows):
            delivery = conn.execute(
                "INSERT INTO campaign.deliveries (name, channel, dag_id, task_id, service_id, settings)"
                " VALUES (%s, %s, %s, 'deliver', %s, %s) RETURNING id",
                (
                    name,
                    channel,
                    dag_id,
                    service if name == DAILY else None,
                    json.dumps({"channel": "outbox", "page_size": 1000}),
                ),
            ).fetchone()[0]  # type: ignore[index]
            # occurrences oldest first (ids grow with time), each interval ending at the next
            conn.execute(
                "WITH o AS (INSERT INTO campaign.delivery_occurrences (delivery_id, run_key, run_id, run_type,"
                " period_key, data_interval_start, data_interval_end, status, started_at, finished_at,"
                " prepared_by, prepared_at, created_at, updated_at)"
                " SELECT %(d)s, to_char(s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"') || '/'"
                "  || to_char(e AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"'),"
                "  'scheduled__' || to_char(s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"'),"
                "  'scheduled', to_char(s AT TIME ZONE 'UTC', 'YYYY-MM-DD'), s, e, 'sent',"
                "  e + interval '2 minutes', e + interval '14 minutes', %(dag)s || '/deliver/x/-1',"
                "  e + interval '3 minutes', e, e + interval '14 minutes'"
                " FROM (SELECT %(end)s::timestamptz - (k + 1) * %(step)s::interval AS s,"
                "  %(end)s::timestamptz - k * %(step)s::interval AS e"
                "  FROM generate_series(%(n)s - 1, 0, -1) k) i ORDER BY s"
                " RETURNING id, started_at)"
                " INSERT INTO bench_plan SELECT id, %(each)s, %(channel)s, started_at FROM o",
                {
                    "d": delivery,
                    "dag": dag_id,
                    "end": end,
                    "step": steps[schedule],
                    "n": occurrences,
                    "each": each,
                    "channel": channel,
                },
            )
        # the rows that do not divide evenly: one more in each of the first occurrences
        conn.execute(
            "UPDATE bench_plan SET n = n + 1 WHERE occurrence_id IN (SELECT occurrence_id FROM bench_plan"
            " ORDER BY occurrence_id LIMIT %s - (SELECT sum(n) FROM bench_plan))",
            (rows,),
        )
        # the rows go in without the secondary indexes (created again below from their definitions)
        indexes = [
            r[0]
            for r in conn.execute(
                "SELECT indexdef FROM pg_indexes i WHERE schemaname = 'campaign' AND tablename = 'delivery_logs'"
                " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = (quote_ident(i.schemaname)"
                " || '.' || quote_ident(i.indexname))::regclass)"
            )
        ]
        names = [
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes i WHERE schemaname = 'campaign' AND tablename = 'delivery_logs'"
                " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = (quote_ident(i.schemaname)"
                " || '.' || quote_ident(i.indexname))::regclass)"
            )
        ]
        uniques = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'campaign.delivery_logs'::regclass AND contype = 'u'"
        ).fetchall()
        for index in names:
            conn.execute(sql.SQL("DROP INDEX campaign.{}").format(sql.Identifier(index)))
        for constraint, _ in uniques:
            conn.execute(
                sql.SQL("ALTER TABLE campaign.delivery_logs DROP CONSTRAINT {}").format(
                    sql.Identifier(constraint)
                )
            )
        try:  # no foreign-key trigger per row (the ids come from the tables just filled)
            conn.execute("SET session_replication_role = replica")
        except psycopg.Error:
            pass
        # r: where a row falls in 0..9999, spread evenly over each occurrence (5761 is prime to 10,000)
        conn.execute(
            "INSERT INTO campaign.delivery_logs (delivery_id, occurrence_id, run_key, recipient_key, destination,"
            " channel, address, status, exclusion_reason, provider_message_id, error, try_number, attempts,"
            " claimed_by, claimed_at, sent_at, created_at, updated_at)"
            " SELECT o.delivery_id, o.id, o.run_key, g.i::text, '', p.channel,"
            "  CASE WHEN r >= 320 AND r < 350 THEN NULL WHEN p.channel = 'email' THEN 'user' || g.i || '@example.org'"
            "   WHEN p.channel = 'sms' THEN '+3361' || lpad(g.i::text, 7, '0') ELSE 'fcm:token-' || g.i END,"
            "  CASE WHEN r < 350 THEN 'excluded' WHEN r < 380 THEN 'failed' WHEN r < 383 THEN 'unknown'"
            "   ELSE 'sent' END,"
            "  CASE WHEN r < 150 THEN 'quarantined' WHEN r < 250 THEN 'denylisted' WHEN r < 320 THEN 'fatigue'"
            "   WHEN r < 350 THEN 'missing address' END,"
            "  CASE WHEN r >= 383 THEN o.id || '.' || g.i || '@outbox' END,"
            "  CASE WHEN r >= 350 AND r < 380 THEN (ARRAY['550 5.1.1 <user' || g.i || '@example.org>: mailbox"
            " unavailable', '552 5.2.2 mailbox full', '421 4.7.0 try again later'])[r % 3 + 1]"
            "   WHEN r >= 380 AND r < 383 THEN 'the server did not answer in 30s: the message may have gone' END,"
            "  CASE WHEN r >= 350 THEN 1 END, CASE WHEN r >= 350 THEN 1 ELSE 0 END,"
            "  CASE WHEN r >= 350 THEN o.prepared_by || '/1' END,"
            "  CASE WHEN r >= 350 THEN p.started + g.i * interval '2 ms' END,"
            "  CASE WHEN r >= 383 THEN p.started + g.i * interval '2 ms' + interval '1 ms' END,"
            "  p.started, p.started + g.i * interval '2 ms' + interval '1 ms'"
            " FROM bench_plan p JOIN campaign.delivery_occurrences o ON o.id = p.occurrence_id,"
            " LATERAL generate_series(1, p.n) g(i), LATERAL (SELECT (g.i * 5761 + o.id * 37) % 10000 AS r) x"
            " ORDER BY o.id, g.i"
        )
        conn.execute("RESET session_replication_role")
        for constraint, definition in uniques:
            conn.execute(
                sql.SQL("ALTER TABLE campaign.delivery_logs ADD CONSTRAINT {} {}").format(
                    sql.Identifier(constraint), sql.SQL(definition)
                )
            )
        for definition in indexes:
            conn.execute(definition)
        conn.execute("VACUUM ANALYZE campaign.delivery_logs")
        # each occurrence's counts as the engine records them when it finishes
        for (occurrence,) in conn.execute("SELECT occurrence_id FROM bench_plan ORDER BY 1").fetchall():
            conn.execute(
                "UPDATE campaign.delivery_occurrences SET counts = %s WHERE id = %s",
                (json.dumps(report(conn, occurrence)), occurrence),
            )
        conn.execute("VACUUM ANALYZE campaign.delivery_occurrences")
        conn.execute("ANALYZE campaign.deliveries")
        conn.execute(sql.SQL("COMMENT ON TABLE campaign.delivery_logs IS {}").format(sql.Literal(_tag(rows))))


# ---- what the pages must show --------------------------------------------------------------------


def truth(url: str) -> dict[str, Any]:
    """The daily newsletter's figures, counted from the ledger (not from the recorded counts)."""
    with psycopg.connect(url) as conn:
        delivery, occurrences = conn.execute(
            "SELECT d.id, (SELECT count(*) FROM campaign.delivery_occurrences o WHERE o.delivery_id = d.id)"
            " FROM campaign.deliveries d WHERE d.name = %s",
            (DAILY,),
        ).fetchone()  # type: ignore[misc]
        last = conn.execute(
            "SELECT max(id) FROM campaign.delivery_occurrences WHERE delivery_id = %s", (delivery,)
        ).fetchone()[0]  # type: ignore[index]
        by_status = dict(
            conn.execute(
                "SELECT status, count(*) FROM campaign.delivery_logs WHERE occurrence_id = %s GROUP BY 1",
                (last,),
            ).fetchall()
        )
        reasons = dict(
            conn.execute(
                "SELECT exclusion_reason, count(*) FROM campaign.delivery_logs WHERE occurrence_id = %s"
                " AND status = 'excluded' GROUP BY 1",
                (last,),
            ).fetchall()
        )
        errors = [
            r[0]
            for r in conn.execute(
                "SELECT recipient_key FROM campaign.delivery_logs WHERE occurrence_id = %s"
                " AND status IN ('failed', 'unknown') ORDER BY id DESC LIMIT 20",
                (last,),
            )
        ]
        total = conn.execute("SELECT count(*) FROM campaign.delivery_logs").fetchone()[0]  # type: ignore[index]
        names = [r[0] for r in conn.execute("SELECT name FROM campaign.deliveries ORDER BY name")]
    counts = {
        "targeted": sum(by_status.values()),
        **{s: by_status.get(s, 0) for s in ("excluded", *STATUSES)},
    }
    return {
        "delivery": delivery,
        "occurrence": last,
        "occurrences": occurrences,
        "counts": counts,
        "reasons": reasons,
        "errors": errors,
        "rows": total,
        "names": names,
    }


def _n(text: str) -> int:
    return int(text.replace(",", ""))


def check_list(html: str, want: dict[str, Any]) -> None:
    listed = re.findall(r'<tr data-delivery="([^"]+)">', html)
    assert listed == want["names"], f"deliveries listed {listed}, want {want['names']}"
    row = html.split(f'<tr data-delivery="{DAILY}">', 1)[1].split("</tr>", 1)[0]
    shown = {k: _n(v) for k, v in re.findall(r'data-count="(\w+)">([\d,]+)<', row)}
    counts = want["counts"]
    assert shown == {k: counts[k] for k in ("targeted", "excluded", "sent", "failed")}, (shown, counts)
    occurrences = re.findall(r'<td class="num">([\d,]+)</td>', row)
    assert occurrences and _n(occurrences[0]) == want["occurrences"], (occurrences, want["occurrences"])


def check_report(html: str, want: dict[str, Any]) -> None:
    funnel = html.split('<table id="funnel"', 1)[1].split("</table>", 1)[0]
    shown = {k: _n(v) for k, v in re.findall(r'data-count="(\w+)">([\d,]+)<', funnel)}
    counts = want["counts"]
    expected = {k: v for k, v in counts.items() if v or k in ("targeted", "excluded", "sent", "failed")}
    assert shown == expected, (shown, expected)
    reasons = {k: _n(v) for k, v in re.findall(r'data-reason="([^"]+)">([\d,]+)<', funnel)}
    assert reasons == want["reasons"], (reasons, want["reasons"])
    errors = html.split('<table id="errors">', 1)[1].split("</table>", 1)[0]
    keys = re.findall(r"<tr><td>([^<]*)</td>", errors)
    assert keys == want["errors"], (keys, want["errors"])
    assert not re.search(r"<td>user\d+@example\.org</td>", errors), "a viewer sees the addresses unmasked"


# ---- the plans ---------------------------------------------------------------------------------


class _Recorder:
    """A connection that records what the data functions run (and runs it)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn, self.queries = conn, []  # type: ignore[var-annotated]

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        recorder, cursor = self, self.conn.cursor(*args, **kwargs)

        class Cursor:
            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: Any) -> None:
                cursor.close()

            def execute(self, query: str, params: Any = None) -> Any:
                recorder.queries.append((query, params))
                return cursor.execute(query, params)

        return Cursor()

    def execute(self, query: str, params: Any = None) -> Any:
        self.queries.append((query, params))
        return self.conn.execute(query, params)


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in _nodes(child))]


def explain(url: str, want: dict[str, Any], dag_ids: list[str]) -> list[dict[str, Any]]:
    """Each query of the two pages with EXPLAIN (ANALYZE, BUFFERS): its time and what it scans."""
    from airflow_campaign.ui import data

    pages: dict[str, list[tuple[str, Any]]] = {}
    with psycopg.connect(url) as conn:
        rec = _Recorder(conn)
        rows = data.deliveries(rec, dag_ids, 0)  # type: ignore[arg-type]
        data.trends(rec, [row["id"] for row in rows])  # type: ignore[arg-type]
        pages["/deliveries"] = rec.queries
        rec = _Recorder(conn)
        data.delivery(rec, want["delivery"])  # type: ignore[arg-type]
        occ = data.occurrences(rec, want["delivery"], 0)  # type: ignore[arg-type]
        data.recent_errors(rec, [occ[0]["id"]])  # type: ignore[arg-type]
        data.by_period(rec, want["delivery"])  # type: ignore[arg-type]
        pages["/deliveries/{id}"] = rec.queries
        out = []
        for page, queries in pages.items():
            seen: set[str] = set()
            for query, params in queries:
                if query in seen:  # the trend of each delivery: the same query, the daily one shown
                    continue
                seen.add(query)
                if (
                    "FROM campaign.delivery_occurrences WHERE delivery_id = %s ORDER BY id DESC LIMIT %s"
                    in query
                ):
                    params = (want["delivery"], *params[1:])
                result = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, params).fetchone()[
                    0
                ][0]  # type: ignore[index]
                nodes = _nodes(result["Plan"])
                scans = sorted(
                    {
                        f"{n['Node Type']} {n.get('Index Name') or n.get('Relation Name')}"
                        for n in nodes
                        if "Scan" in n["Node Type"]
                    }
                )
                seq = sorted(
                    {n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"}
                    & {"delivery_logs", "delivery_occurrences"}
                )
                entry = {
                    "page": page,
                    "query": " ".join(query.split())[:110],
                    "ms": round(result["Execution Time"], 3),
                    "planning_ms": round(result["Planning Time"], 3),
                    "buffers": sum(
                        n.get("Shared Hit Blocks", 0) + n.get("Shared Read Blocks", 0) for n in nodes[:1]
                    ),
                    "scans": scans,
                    "seq_scans": seq,
                }
                if seq:  # is there an index the planner chose not to use (a small table)?
                    conn.execute("SET enable_seqscan = off")
                    forced = conn.execute(
                        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, params
                    ).fetchone()[0][0]  # type: ignore[index]
                    conn.execute("RESET enable_seqscan")
                    entry["without_seq_scan"] = {
                        "ms": round(forced["Execution Time"], 3),
                        "scans": sorted(
                            {
                                f"{n['Node Type']} {n.get('Index Name') or n.get('Relation Name')}"
                                for n in _nodes(forced["Plan"])
                                if "Scan" in n["Node Type"]
                            }
                        ),
                    }
                out.append(entry)
        conn.rollback()
    for e in out:
        print(
            f"  EXPLAIN {e['page']:<16} {e['ms']:8.3f} ms (planning {e['planning_ms']:.3f} ms, {e['buffers']} buffers)"
            f"  {e['query'][:70]}…\n      scans: {', '.join(e['scans'])}"
            + (
                f"\n      SEQ SCAN of {e['seq_scans']}; without: {e['without_seq_scan']}"
                if e["seq_scans"]
                else ""
            )
        )
    logs = [e for e in out if "delivery_logs" in e["seq_scans"]]
    assert not logs, f"a page scans the whole ledger: {logs}"
    return out


# ---- Airflow and the timings -----------------------------------------------------------------------


DAG_FILE = textwrap.dedent(
    """
    import datetime as dt
    from airflow.sdk import DAG
    from airflow.providers.standard.operators.empty import EmptyOperator

    for dag_id, schedule in {dags!r}:
        with DAG(dag_id, schedule=schedule, start_date=dt.datetime(2026, 1, 1), catchup=False):
            EmptyOperator(task_id="deliver")
    """
)


def _p95(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def bench_ui(server_url: str, results: list[dict[str, Any]], rows: int = ROWS) -> None:
    from airflow_campaign.embedded import connection_fields
    from benchmarks.run import load, record
    from tests.airflow_cluster import AirflowCluster

    started = time.perf_counter()
    url, built = ledger(server_url, rows)
    want = truth(url)
    assert want["rows"] == rows, (want["rows"], rows)
    print(
        f"  ledger campaign_bench_ui_{rows}: {want['rows']:,} rows, {len(want['names'])} deliveries,"
        f" the daily one {want['occurrences']} occurrences of {want['counts']['targeted']:,} rows; "
        + (f"built in {built:.1f}s" if built is not None else "reused")
        + f" (load {load()})"
    )
    dags = [(d, s) for _, _, d, s, _, _ in plan(rows)]
    explain(url, want, [d for d, _ in dags])
    home = Path(tempfile.mkdtemp(prefix="campaign-bench-ui-"))
    (home / "dags").mkdir()
    (home / "dags" / "bench_ui_dags.py").write_text(DAG_FILE.format(dags=dags))
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"viewer": PASSWORD}))
    env = {
        "AIRFLOW_CONN_CAMPAIGN_DEFAULT": json.dumps(connection_fields(url)),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    up = time.perf_counter()
    with AirflowCluster(server_url, home / "dags", env=env, startup_timeout=180) as cluster:
        for dag_id, _ in dags:
            cluster.wait_for_dag(dag_id, timeout=120)
        print(f"  Airflow up in {time.perf_counter() - up:.1f}s (api-server {cluster.api_url})")
        answer = httpx.post(
            f"{cluster.api_url}/auth/token", json={"username": "viewer", "password": PASSWORD}
        )
        assert answer.status_code in (200, 201), answer.text
        headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
        pages = {
            "deliveries page": ("/campaign/deliveries", check_list),
            "delivery report": (f"/campaign/deliveries/{want['delivery']}", check_report),
        }
        times: dict[str, list[float]] = {name: [] for name in pages}
        with httpx.Client(base_url=cluster.api_url, headers=headers, timeout=30) as client:

            def get(name: str) -> float:
                path, check = pages[name]
                began = time.perf_counter()
                response = client.get(path)
                wall = time.perf_counter() - began
                assert response.status_code == 200, (path, response.status_code, response.text[:500])
                check(response.text, want)
                return wall

            for _ in range(WARMUP):
                for name in pages:
                    get(name)
            start = load()
            order = list(pages)
            for i in range(REQUESTS):
                for name in order if i % 2 == 0 else order[::-1]:
                    times[name].append(get(name))
            end = load()
    for name, spent in times.items():
        median, p95 = statistics.median(spent), _p95(spent)
        print(
            f"  {name}: median {median * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max {max(spent) * 1000:.1f} ms"
            f" over {len(spent)} requests (load {start} -> {end})"
        )
        title = "Campaigns deliveries page" if name == "deliveries page" else "Campaigns delivery report"
        for stat, value in (("median", median), ("p95", p95)):
            record(
                results,
                f"{title}, {rows:,}-row ledger, {stat} ms",
                value,
                "the ceiling: 300 ms",
                CEILING,
                1.0,
                "lower",
                load_start=start,
                load_end=end,
            )
    print(f"  UI benchmark done in {time.perf_counter() - started:.1f}s")


def main() -> int:
    from benchmarks.run import database

    scale = int(os.environ.get("BENCH_SCALE", "1000000"))
    results: list[dict[str, Any]] = []
    bench_ui(database(scale), results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
