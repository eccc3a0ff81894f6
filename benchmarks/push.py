"""The push engine end to end: one push delivery to the devices of the first ``scale`` profiles
into the outbox's null mode, prepare (targets, one ledger row per enabled install of the app,
every device's APNs or FCM payload built and its size checked, the typology) and send (claimed
pages, each payload rendered and packed, handed to the channel, results recorded), in one task.

The figure is recipients (profiles of the population) a second, against the floor the push
issue set (10,000 a second on 2 cores); the devices a second are printed beside it. The check:
every recipient is in the ledger, and the number of messages the ledger records as sent equals
the number of enabled installs of the app that the population's profiles hold, counted here
with a query of its own, less the profiles the typology excludes for push (denylisted).
Name in results.json: ``Push engine end to end, N recipients (D devices), recipients/s``.
Run alone: ``python -m benchmarks.push``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

FLOOR = 10_000  # recipients per second


def bench_push(url: str, results: list[dict[str, Any]], scale: int) -> None:
    import psycopg

    from airflow_campaign.operators.push import PushDeliveryOperator
    from benchmarks.run import load, record
    from benchmarks.shards import _context, _population, _truncate_ledger

    _truncate_ledger(url)
    population = _population(scale)
    delivery = f"bench_push_{int(time.time())}"
    op = PushDeliveryOperator(
        task_id="push",
        population=population,
        delivery=delivery,
        app="shop",
        title="{{ first_name }}, your points",
        body="{{ loyalty_points }} points are waiting for you in store",
        data={"points": "{{ loyalty_points }}"},
        deeplink="shop://points",
        badge=1,
        sound="default",
        channel="outbox",
        channel_options={"null": True},
        page_size=1000,
        max_error_rate=None,
        outbound="none",
    )
    ctx = _context("push", f"run_{delivery}")
    start = load()
    started = time.perf_counter()
    op.execute(ctx)
    seconds = time.perf_counter() - started
    end = load()
    report = ctx["ti"].xcoms["report"]
    by_status = report["by_status"]
    assert set(by_status) <= {"sent", "excluded"}, by_status
    with psycopg.connect(url) as conn:
        installs = conn.execute(
            "SELECT count(*) FROM campaign.app_subscriptions a JOIN campaign.profiles p ON p.id = a.profile_id"
            " WHERE p.id <= %s AND a.app = 'shop' AND a.enabled AND NOT p.push_denylisted",
            (scale,),
        ).fetchone()[0]
    assert by_status.get("sent", 0) == installs, (by_status, installs)
    recipients = population["count"]
    rate = recipients / seconds
    print(
        f"  push: {recipients:,} recipients, {installs:,} devices sent in {seconds:.1f}s"
        f" ({rate:,.0f} recipients/s, {installs / seconds:,.0f} devices/s); excluded {report['excluded']}"
    )
    record(
        results,
        f"Push engine end to end, {recipients:,} recipients ({installs:,} devices), recipients/s",
        rate,
        "the floor: 10,000 recipients/s",
        FLOOR,
        1.0,
        "higher",
        load_start=start,
        load_end=end,
    )


def main() -> int:
    import logging

    from benchmarks.run import database

    logging.getLogger("airflow.task.operators").setLevel(logging.ERROR)
    scale = int(os.environ.get("BENCH_SCALE", "1000000"))
    results: list[dict[str, Any]] = []
    bench_push(database(scale), results, scale)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
