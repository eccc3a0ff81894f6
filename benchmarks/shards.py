"""One delivery sent by 4 shards against the same delivery sent by one, and prepare against a bare INSERT.

1. **Shards.** Two deliveries of the same recipients (the first ``scale`` profiles) are prepared
   the same way; one is sent by one send task, the other by 4 send tasks (``shard=0..3``), each
   a process of its own as Airflow workers would be, to the outbox's null mode (every message
   rendered and built, the ledger written, nothing stored). Every process imports and connects
   first, then all start together; the time is from the start until the last one ends. The
   benchmark checks that both deliveries sent exactly the same recipients, once each, before
   it prints the ratio. On 2 cores the 4 shards can at best halve the time.
2. **Prepare.** ``EmailDeliveryOperator(mode="prepare")`` (targets table, the typology's rules,
   the ledger rows with their reasons) against a hand-written ``INSERT INTO
   campaign.delivery_logs … SELECT`` of the same population (every row pending, no rules), on
   the same emptied ledger with the same indexes, interleaved; both must write one ledger row
   per recipient.

Run by ``benchmarks/run.py``, or alone: ``python -m benchmarks.shards [scale]``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SHARDS = 4
SUBJECT = "{{ first_name }}, {{ loyalty_points }} points are waiting"
HTML = (
    "<p>Hello {{ first_name }},</p><p>You have <b>{{ loyalty_points }}</b> points.</p>"
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
)


def _operator(population: Any, delivery: str, mode: str, shard: int | None = None) -> Any:
    from airflow_campaign.operators.deliveries import EmailDeliveryOperator

    return EmailDeliveryOperator(
        task_id="send" if mode == "send" else "prepare",
        population=population,
        delivery=delivery,
        subject=SUBJECT,
        html=HTML,
        from_addr="news@shop.example.com",
        from_name="Example Shop",
        unsubscribe_url="https://shop.example.com/unsubscribe",
        channel="outbox",
        channel_options={"null": True},
        page_size=1000,
        max_error_rate=None,
        outbound="none",
        mode=mode,
        shard=shard,
    )


def _context(task_id: str, run_id: str, map_index: int = -1) -> dict[str, Any]:
    from benchmarks.run import _TI

    ti = _TI(dag_id="bench", task_id=task_id, run_id=run_id, map_index=map_index, try_number=1, xcoms={})
    return {"ti": ti, "run_id": run_id}


def _truncate_ledger(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE campaign.delivery_logs, campaign.delivery_claims, campaign.delivery_occurrences,"
            " campaign.deliveries CASCADE"
        )
        conn.execute("VACUUM ANALYZE campaign.delivery_logs")


def _send_child(delivery: str, run_id: str, shard: int | None) -> None:
    """A send task in a process of its own: ready once imported and connected, sends on 'go'."""
    import logging

    logging.getLogger("airflow.task.operators").setLevel(logging.ERROR)
    op = _operator(
        {"kind": "inline", "rows": [], "key": "id", "resource": "profiles", "columns": []},
        delivery,
        "send",
        shard,
    )
    ctx = _context("send", run_id, -1 if shard is None else shard)
    op.get_hook().connect().close()  # connection set up before the clock starts
    print("ready", flush=True)
    sys.stdin.readline()
    started, cpu = time.time(), time.process_time()
    result = op.execute(ctx)
    print(
        json.dumps(
            {
                "started": started,
                "ended": time.time(),
                "cpu": time.process_time() - cpu,  # all of the task's threads
                "this_try": result["this_try"],
            }
        ),
        flush=True,
    )


def _send(delivery: str, run_id: str, shards: int | None) -> tuple[float, list[dict[str, Any]]]:
    """Wall time of the send tasks started together (from the start until the last one has sent
    everything; not counting interpreter exit), and what each reported."""
    from benchmarks.run import database

    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "CAMPAIGN_BENCH_DATABASE_URL": database(int(os.environ.get("BENCH_SCALE", "1000000"))),
    }
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.shards",
                "send",
                delivery,
                run_id,
                "" if shards is None else str(i),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(shards or 1)
    ]
    for child in children:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"a send task did not start: {line!r}")
    started = time.time()
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    reports = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode:
            raise RuntimeError(f"a send task failed (exit {child.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return max(r["ended"] for r in reports) - started, reports


def _postgres_cpu() -> float:
    """CPU seconds used so far by the Postgres server's processes (its exited backends are
    counted in the postmaster's children)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
                name, fields = stat.read().rsplit(") ", 1)
        except OSError:
            continue
        # the executable's name, not its command line: the postmaster's path may contain "python"
        if name.split(" (", 1)[-1] == "postgres":
            values = fields.split()
            total += sum(int(values[i]) for i in (11, 12, 13, 14)) / ticks
    return total


def _sent(url: str, delivery: str) -> tuple[int, int, str]:
    """(sent rows, distinct recipients sent, a digest of the sent recipient keys) of a delivery."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT l.recipient_key), md5(string_agg(l.recipient_key, ',' ORDER BY"
            " l.recipient_key)) FROM campaign.delivery_logs l JOIN campaign.deliveries d ON d.id = l.delivery_id"
            " WHERE d.name = %s AND l.status = 'sent'",
            (delivery,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), str(row[2])


def _population(scale: int) -> Any:
    from airflow_campaign.operators.targeting import QueryOperator

    return QueryOperator(
        task_id=f"recipients_{scale}", where=f"id <= {scale}", columns=["first_name", "loyalty_points"]
    ).execute(_context(f"recipients_{scale}", "bench_pop"))


def bench_shards(url: str, results: list[dict[str, Any]], scale: int) -> None:
    from benchmarks.run import load, record

    os.environ.setdefault("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", "bench-only-unsubscribe-signing-key")
    _truncate_ledger(url)
    population = _population(scale)
    stamp = str(int(time.time()))
    one, four = f"bench_one_shard_{stamp}", f"bench_four_shards_{stamp}"
    for delivery in (one, four):
        _operator(population, delivery, "prepare").execute(_context("prepare", f"run_{delivery}"))
    start = load()
    pg = _postgres_cpu()
    one_s, one_reports = _send(one, f"run_{one}", None)
    one_pg, pg = _postgres_cpu() - pg, _postgres_cpu()
    four_s, reports = _send(four, f"run_{four}", SHARDS)
    four_pg = _postgres_cpu() - pg
    end = load()
    one_py, four_py = (sum(r["cpu"] for r in side) for side in (one_reports, reports))
    a, b = _sent(url, one), _sent(url, four)
    if a != b or a[0] != a[1]:
        raise AssertionError(
            f"the one-shard and the 4-shard deliveries sent different recipients: {a} vs {b}"
        )
    shares = [r["this_try"]["sent"] for r in reports]
    print(
        f"  shards: {a[0]:,} sent by 1 shard in {one_s:.1f}s ({a[0] / one_s:,.0f}/s), by {SHARDS} in {four_s:.1f}s"
        f" ({b[0] / four_s:,.0f}/s; shares {shares}); load {start} -> {end}"
    )
    print(
        f"  CPU while sending: 1 shard {one_py:.0f}s in the task + {one_pg:.0f}s in Postgres ="
        f" {(one_py + one_pg) / one_s:.2f} cores busy; {SHARDS} shards {four_py:.0f}s + {four_pg:.0f}s ="
        f" {(four_py + four_pg) / four_s:.2f} cores busy, of {os.cpu_count()}"
    )
    record(
        results,
        f"Delivery send, {SHARDS} shards vs 1, {a[0]:,} sent",
        four_s,
        "the same delivery, one send task",
        one_s,
        0.6,
        "lower",
    )
    _truncate_ledger(url)


def bench_prepare(url: str, results: list[dict[str, Any]], scale: int, repeat: int = 3) -> None:
    import psycopg
    from psycopg import sql

    from benchmarks.run import load, record

    os.environ.setdefault("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", "bench-only-unsubscribe-signing-key")
    population = _population(scale)
    table = sql.Identifier(*population["table"].split("."))
    ours_t: list[float] = []
    bare_t: list[float] = []
    rows: dict[str, int] = {}
    start = load()
    for i in range(repeat):
        _truncate_ledger(url)
        started = time.perf_counter()
        ctx = _context("prepare", f"prep_{i}")
        _operator(population, f"bench_prepare_{i}", "prepare").execute(ctx)
        ours_t.append(time.perf_counter() - started)
        rows["ours"] = ctx["ti"].xcoms["report"]["total"]

        _truncate_ledger(url)
        with psycopg.connect(url) as conn:
            delivery = conn.execute(
                "INSERT INTO campaign.deliveries (name, channel) VALUES (%s, 'email') RETURNING id",
                (f"bare_{i}",),
            ).fetchone()[0]
            occurrence = conn.execute(
                "INSERT INTO campaign.delivery_occurrences (delivery_id, run_key) VALUES (%s, 'bare') RETURNING id",
                (delivery,),
            ).fetchone()[0]
            conn.commit()
            started = time.perf_counter()
            cur = conn.execute(
                sql.SQL(
                    "INSERT INTO campaign.delivery_logs (delivery_id, occurrence_id, run_key, recipient_key, channel,"
                    " address, status) SELECT %s, %s, 'bare', p.id::text, 'email', r.email, 'pending' FROM {} p"
                    " JOIN campaign.profiles r ON r.id = p.id"
                ).format(table),
                (delivery, occurrence),
            )
            conn.commit()
            bare_t.append(time.perf_counter() - started)
            rows["bare"] = cur.rowcount
    end = load()
    if rows["ours"] != rows["bare"] or rows["ours"] != population["count"]:
        raise AssertionError(f"prepare wrote {rows['ours']} ledger rows, the bare INSERT {rows['bare']}")
    ours_s, bare_s = statistics.median(ours_t), statistics.median(bare_t)
    print(
        f"  prepare: {rows['ours']:,} ledger rows, operator {ours_s:.2f}s vs INSERT … SELECT {bare_s:.2f}s"
        f" (medians of {repeat}, interleaved); load {start} -> {end}"
    )
    record(
        results,
        f"Delivery prepare, {rows['ours']:,} recipients",
        ours_s,
        "bare INSERT … SELECT into the ledger",
        bare_s,
        3.0,
        "lower",
    )
    _truncate_ledger(url)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "send":
        from benchmarks.run import database

        database(int(os.environ.get("BENCH_SCALE", "1000000")))
        _send_child(sys.argv[2], sys.argv[3], int(sys.argv[4]) if sys.argv[4] else None)
    else:
        import logging

        from benchmarks.run import database

        logging.getLogger("airflow.task.operators").setLevel(logging.ERROR)
        scale = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("BENCH_SCALE", "1000000"))
        url = database(int(os.environ.get("BENCH_SCALE", "1000000")))
        found: list[dict[str, Any]] = []
        bench_prepare(url, found, scale)
        bench_shards(url, found, scale)
