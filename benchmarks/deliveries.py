"""The delivery engine end to end (prepare + render + MIME + ledger) into the outbox's null mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TARGET_RATE = 5000  # recipients per second, end to end, on 2 cores


def _peak_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_engine(limit: int, run: str) -> dict[str, Any]:
    """One delivery to the first ``limit`` profiles (valid or not: the typology sorts them out)."""
    import logging

    from airflow_campaign.operators.deliveries import EmailDeliveryOperator
    from airflow_campaign.operators.targeting import QueryOperator
    from benchmarks.run import context

    logging.getLogger("airflow.task.operators").setLevel(logging.ERROR)
    os.environ.setdefault("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", "bench-only-unsubscribe-signing-key")
    pop = QueryOperator(
        task_id=f"recipients_{limit}", where=f"id <= {limit}", columns=["first_name", "loyalty_points"]
    ).execute(context(f"recipients_{limit}", 0))
    imported = _peak_mb()
    op = EmailDeliveryOperator(
        task_id=f"engine_{limit}",
        population=pop,
        delivery=f"bench_engine_{limit}_{run}",
        subject="{{ first_name }}, {{ loyalty_points }} points are waiting",
        html=(
            "<p>Hello {{ first_name }},</p><p>You have <b>{{ loyalty_points }}</b> points.</p>"
            '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
        ),
        from_addr="news@shop.example.com",
        from_name="Example Shop",
        unsubscribe_url="https://shop.example.com/unsubscribe",
        channel="outbox",
        channel_options={"null": True},
        page_size=2000,
        max_error_rate=None,
        outbound="none",
    )
    ctx = context(f"engine_{limit}", 0)
    started = time.perf_counter()
    result = op.execute(ctx)
    seconds = time.perf_counter() - started
    return {
        "recipients": result["total"],
        "sent": result["by_status"].get("sent", 0),
        "seconds": seconds,
        "peak_mb": _peak_mb(),
        "imported_mb": imported,
    }


def _child(limit: int, run: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.deliveries", str(limit), run],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_engine(url: str, results: list[dict[str, Any]], scale: int) -> None:
    from benchmarks.run import record

    run = str(int(time.time()))
    small = _child(max(scale // 10, 1000), run)
    big = _child(scale, run)
    rate = big["recipients"] / big["seconds"]
    print(
        f"  engine: {big['recipients']:,} recipients ({big['sent']:,} sent) in {big['seconds']:.1f}s = {rate:,.0f}/s;"
        f" peak {big['peak_mb']:.0f} MB at {scale:,}, {small['peak_mb']:.0f} MB at {scale // 10:,}"
    )
    record(
        results,
        f"Email engine end to end (null outbox), {scale:,} recipients",
        big["seconds"],
        f"budget at {TARGET_RATE:,} recipients/s",
        big["recipients"] / TARGET_RATE,
        1.0,
        "lower",
    )
    record(
        results,
        f"Email engine peak MB, {scale:,} vs {scale // 10:,} recipients",
        big["peak_mb"],
        f"same, {scale // 10:,} recipients",
        small["peak_mb"],
        1.3,
        "lower",
    )


if __name__ == "__main__":
    from benchmarks.run import database

    limit, run = int(sys.argv[1]), sys.argv[2]
    database(int(os.environ.get("BENCH_SCALE", "1000000")))
    print(json.dumps(run_engine(limit, run)))
