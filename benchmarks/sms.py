"""The SMS engine end to end: one SMS delivery to the first ``scale`` profiles into the outbox's
null mode, prepare (targets, every raw number normalised to E.164 with phonenumbers, every
message rendered and its parts counted, the typology, the ledger) and send (claimed pages,
rendered, packed, handed to the channel, results recorded), in one task.

Two figures, each against the floor the SMS issue set (10,000 recipients a second on 2 cores):
with the number cache empty (every distinct raw number parsed) and with it warm (a second
delivery of the same recipients: no number parsed again). The check: every recipient is in the
ledger once, sent or excluded with a reason, and the number of messages the ledger records as
sent is the number of distinct valid numbers phonenumbers gives for them once the typology's
other exclusions are taken out. Names in results.json: ``SMS engine end to end, N recipients,
cold number cache`` and ``… warm number cache``. Run alone: ``python -m benchmarks.sms``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

FLOOR = 10_000  # recipients per second


def _run(population: Any, delivery: str) -> tuple[float, dict[str, Any]]:
    from airflow_campaign.operators.sms import SmsDeliveryOperator
    from benchmarks.shards import _context

    op = SmsDeliveryOperator(
        task_id="sms",
        population=population,
        delivery=delivery,
        text="{{ first_name }}, {{ loyalty_points }} points are waiting for you in store",
        stop_footer="STOP 36111",
        channel="outbox",
        channel_options={"null": True},
        page_size=1000,
        max_error_rate=None,
        outbound="none",
    )
    ctx = _context("sms", f"run_{delivery}")
    started = time.perf_counter()
    op.execute(ctx)
    return time.perf_counter() - started, ctx["ti"].xcoms["report"]


def bench_sms(url: str, results: list[dict[str, Any]], scale: int) -> None:
    import psycopg

    from benchmarks.run import load, record
    from benchmarks.shards import _population, _truncate_ledger

    _truncate_ledger(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE campaign.phone_numbers")
    population = _population(scale)
    stamp = str(int(time.time()))
    for cache in ("cold", "warm"):
        start = load()
        seconds, report = _run(population, f"bench_sms_{cache}_{stamp}")
        end = load()
        by_status = report["by_status"]
        assert report["total"] == population["count"], report
        assert set(by_status) <= {"sent", "excluded"}, by_status
        with psycopg.connect(url) as conn:
            valid = conn.execute(
                "SELECT count(DISTINCT n.e164) FROM campaign.profiles p JOIN campaign.phone_numbers n"
                " ON n.raw = p.phone AND n.region = coalesce(nullif(upper(btrim(p.country)), ''), '')"
                " WHERE p.id <= %s AND n.e164 IS NOT NULL AND NOT p.sms_denylisted"
                " AND n.e164 NOT IN (SELECT address FROM campaign.quarantine WHERE channel = 'sms')",
                (scale,),
            ).fetchone()[0]
        assert by_status.get("sent", 0) == valid, (by_status, valid)
        rate = report["total"] / seconds
        print(
            f"  SMS {cache} cache: {report['total']:,} recipients in {seconds:.1f}s ({rate:,.0f}/s),"
            f" {by_status.get('sent', 0):,} sent; excluded {report['excluded']}"
        )
        record(
            results,
            f"SMS engine end to end, {report['total']:,} recipients, {cache} number cache, recipients/s",
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
    bench_sms(database(scale), results, scale)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
