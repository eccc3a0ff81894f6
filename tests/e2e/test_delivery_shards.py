"""End to end: one email delivery sent by 4 mapped send shards under a real scheduler (LocalExecutor).

A real Airflow 3 (tests/airflow_cluster.py: api-server, scheduler with LocalExecutor and parallelism
4, dag-processor) runs ``targets >> prepare >> send.expand(shard=[0, 1, 2, 3])`` against a scratch
campaign database; the send shards talk SMTP to an aiosmtpd sink in this process, which stamps the
arrival time of every message. The test checks what a sharded send promises:

* every recipient gets exactly one message and nobody is missed (the sink and the ledger agree,
  message by message);
* the 4 shards ran at the same time in 4 processes, and each sent a share of the delivery;
* the rate limit holds for the delivery as a whole, across the shards: no 1 s window of arrivals
  holds more than ``RATE`` messages (plus a small slack), and the send lasts at least ``(N - 1) / RATE``.
"""

from __future__ import annotations

import bisect
import email
import email.policy
import json
import re
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airflow_campaign.embedded import connection_fields
from tests.airflow_cluster import AirflowCluster
from tests.channels.servers import Inbox, smtp_server

DAG_ID = "delivery_shards_e2e"
DELIVERY = "shard_demo"
CAMPAIGN_CONN = "campaign_shards"
SMTP_CONN = "smtp_sink"
UNSUBSCRIBE_KEY = "e2e-shards-unsubscribe-signing-key"
FIRST_ID = 900000
N = 1200  # recipients
SHARDS = 4
RATE = 100  # messages per second for the whole delivery: N / RATE = 12 s of sending
# The slack of the rate checks, in messages (SLACK / RATE = 50 ms): the limiter's slots are spaced
# 1 / RATE apart on the database's clock, but a message leaves when its task gets the CPU (2 cores, 4
# task processes, the sink and Postgres) and is stamped when the sink's event loop gets to it, so a
# few messages at a window's edge may land a few milliseconds late in the next one, and the first
# message of the send may be stamped late (shortening the measured span), without any slot being
# used twice. A 1 s window of perfectly spaced stamps already counts RATE + 1 (both its ends).
SLACK = 5
# A shard holds at most 3 pages claimed: the one it sends, one queued ahead and one in its claim
# thread's hands, 3 * PAGE_SIZE = 75 rows. A shard can only end up with nothing if the others drained
# every pending row before it claimed its first page: without a rate limit one shard may legitimately
# send everything alone. At RATE/s (at most) the others drain the last pending row no sooner than
# (N - 3 * 3 * PAGE_SIZE) / RATE = 9.75 s after the first message, about twice the worst start-up skew
# of the 4 mapped instances measured on 2 cores (0.4 s to 4.6 s from the first shard's start to the
# last's). So every shard gets a share, about N / SHARDS: they share the rate. Bigger pages shrink that
# margin (page_size=50: 7.5 s); smaller ones hardly widen it (it cannot exceed N / RATE = 12 s).
PAGE_SIZE = 25
CONNECTIONS = 2  # SMTP connections per shard: 8 sessions to the sink in all

DAG_FILE = textwrap.dedent(
    f"""
    import datetime as dt

    from airflow.sdk import DAG

    from airflow_campaign.operators.deliveries import EmailDeliveryOperator
    from airflow_campaign.operators.targeting import QueryOperator

    EMAIL = dict(
        delivery={DELIVERY!r},
        subject="Hello {{{{ first_name }}}}",
        html='<p>Hi {{{{ first_name }}}}</p><a href="{{{{ unsubscribe_url }}}}">Unsubscribe</a>',
        from_addr="news@example.com",
        unsubscribe_url="https://example.com/unsubscribe",
        channel="smtp",
        channel_options={{"smtp_conn_id": {SMTP_CONN!r}, "connections": {CONNECTIONS}}},
        campaign_conn_id={CAMPAIGN_CONN!r},
    )

    with DAG(dag_id={DAG_ID!r}, schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False):
        targets = QueryOperator(
            task_id="targets",
            campaign_conn_id={CAMPAIGN_CONN!r},
            where="id > {FIRST_ID}",
            columns=["first_name"],
        )
        prepare = EmailDeliveryOperator(task_id="prepare", population=targets.output, mode="prepare", **EMAIL)
        send = EmailDeliveryOperator.partial(
            task_id="send",
            population=targets.output,
            mode="send",
            rate_limit={RATE},
            page_size={PAGE_SIZE},
            **EMAIL,
        ).expand(shard={list(range(SHARDS))!r})
        targets >> prepare >> send
    """
)


@dataclass
class TimedInbox(Inbox):
    """An Inbox that also records when each stored message arrived: ``time.time()`` at its MAIL FROM,
    by queue id. The start of the SMTP transaction is the moment closest to the sender's rate gate;
    the end of DATA (two more round trips through this busy event loop) would add jitter."""

    arrivals: dict[str, float] = field(default_factory=dict)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        envelope.mail_from = address  # what aiosmtpd does without this hook
        envelope.mail_options.extend(options)
        envelope.arrived_at = time.time()
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        before = len(self.messages)
        reply = await super().handle_DATA(server, session, envelope)
        if len(self.messages) > before:  # stored (not a fault reply)
            self.arrivals[self.messages[-1].queue_id] = envelope.arrived_at
        return reply


def max_in_window(stamps: list[float], width: float = 1.0) -> int:
    """The most arrivals in any window [t, t + width) (sliding: every arrival starts one)."""
    stamps = sorted(stamps)
    return max(bisect.bisect_left(stamps, t + width, lo=i) - i for i, t in enumerate(stamps))


def address(g: int) -> str:
    return f"shard{g}@example.org"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the cluster's process handling is Linux's")
@pytest.mark.timeout(300)
def test_four_shards_send_each_recipient_once_in_parallel_within_the_rate(
    database_url: str, scratch: Any, tmp_path: Path
) -> None:
    scratch.db.execute(
        "INSERT INTO campaign.profiles (id, email, first_name)"
        " SELECT %s + g, 'shard' || g || '@example.org', 'Name' || g FROM generate_series(1, %s) g",
        (FIRST_ID, N),
    )
    expected = {address(g) for g in range(1, N + 1)}
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "delivery_shards.py").write_text(DAG_FILE)

    inbox = TimedInbox()
    with smtp_server(inbox) as sink:
        env = {
            f"AIRFLOW_CONN_{CAMPAIGN_CONN.upper()}": json.dumps(connection_fields(scratch.url)),
            f"AIRFLOW_CONN_{SMTP_CONN.upper()}": json.dumps(
                {"conn_type": "smtp", "host": "127.0.0.1", "port": sink.port, "extra": {"starttls": False}}
            ),
            "AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY": UNSUBSCRIBE_KEY,
        }
        began = time.monotonic()
        with AirflowCluster(database_url, dags, env=env, parallelism=SHARDS) as airflow:
            up = time.monotonic()
            run_id, state = airflow.run_dag(DAG_ID, timeout=180)
            ran = time.monotonic()
            assert state == "success", airflow.diagnostics(DAG_ID, run_id)
            tis = airflow.task_instances(DAG_ID, run_id)
            failed = airflow.failed_task_logs(DAG_ID, run_id)
        messages = list(inbox.messages)
        arrivals = dict(inbox.arrivals)
    print(f"\ncluster up in {up - began:.1f}s, run {ran - up:.1f}s, stopped in {time.monotonic() - ran:.1f}s")

    # ---- the task instances: 4 shards, each in its own process, all running at one instant --------
    assert [(t.task_id, t.map_index, t.state, t.try_number) for t in tis] == [
        ("prepare", -1, "success", 1),
        *[("send", i, "success", 1) for i in range(SHARDS)],
        ("targets", -1, "success", 1),
    ], failed
    shards = {t.map_index: t for t in tis if t.task_id == "send"}
    assert all(t.start_date and t.end_date and t.pid for t in shards.values()), shards
    assert len({t.pid for t in shards.values()}) == SHARDS, shards
    latest_start = max(t.start_date for t in shards.values())
    earliest_end = min(t.end_date for t in shards.values())
    assert latest_start < earliest_end, shards
    skew = (latest_start - min(t.start_date for t in shards.values())).total_seconds()

    # ---- the sink: each of the N addresses got exactly one message, nobody else got any ----------
    assert all(len(m.rcpt_tos) == 1 for m in messages), [m.rcpt_tos for m in messages if len(m.rcpt_tos) != 1]
    per_address = Counter(m.rcpt_tos[0] for m in messages)
    assert {a: n for a, n in per_address.items() if n != 1} == {}
    assert set(per_address) - expected == set()
    assert sorted(expected - set(per_address)) == []
    assert len(messages) == N

    # ---- the ledger: N sent, nothing pending, claimed, in doubt or failed --------------------------
    occurrences = scratch.db.execute(
        "SELECT o.id, o.status, o.counts, o.finished_at FROM campaign.delivery_occurrences o"
        " JOIN campaign.deliveries d ON d.id = o.delivery_id WHERE d.name = %s",
        (DELIVERY,),
    ).fetchall()
    assert len(occurrences) == 1, occurrences
    occurrence_id, occurrence_status, occurrence_counts, finished_at = occurrences[0]
    by_status = dict(
        scratch.db.execute(
            "SELECT status, count(*) FROM campaign.delivery_logs WHERE occurrence_id = %s GROUP BY 1",
            (occurrence_id,),
        ).fetchall()
    )
    assert by_status == {"sent": N}, by_status
    # the last shard to finish recorded the whole occurrence
    assert (occurrence_status, occurrence_counts["by_status"]) == ("sent", {"sent": N}), occurrence_counts
    assert finished_at is not None
    ledger = {
        row[0]: row
        for row in scratch.db.execute(
            "SELECT id, recipient_key, address, provider_message_id, claimed_by, sent_at"
            " FROM campaign.delivery_logs WHERE occurrence_id = %s",
            (occurrence_id,),
        )
    }
    assert {row[2] for row in ledger.values()} == expected
    assert all(row[5] is not None for row in ledger.values())

    # ---- each message matches its ledger row: Message-ID -> row, To, queue id, personalisation -----
    claimer = re.compile(rf"^{re.escape(DAG_ID)}/send/{re.escape(run_id)}/(\d+)#1#[0-9a-f]+$")
    shard_of: dict[str, int] = {}  # queue id -> the shard whose claim sent it
    for m in messages:
        parsed = email.message_from_bytes(m.content, policy=email.policy.default)
        found = re.fullmatch(r"<[0-9a-f]+\.(\d+)@example\.com>", str(parsed["Message-ID"]))
        assert found, parsed["Message-ID"]
        log_id, recipient_key, to, provider_id, claimed_by, _ = ledger[int(found.group(1))]
        assert parsed["To"].addresses[0].addr_spec == m.rcpt_tos[0] == to, (parsed["To"], m.rcpt_tos, to)
        assert provider_id == m.queue_id, (log_id, provider_id, m.queue_id)
        g = int(recipient_key) - FIRST_ID
        assert to == address(g) and parsed["Subject"] == f"Hello Name{g}", (
            recipient_key,
            to,
            parsed["Subject"],
        )
        matched = claimer.match(claimed_by or "")
        assert matched, claimed_by
        shard_of[m.queue_id] = int(matched.group(1))

    # ---- the claims: one per shard, in the shard's own process, each a positive share of N --------
    claims = scratch.db.execute(
        "SELECT shard, instance, try_number, state, pid, coalesce((counts->>'sent')::int, 0),"
        " coalesce((counts->>'failed')::int, 0) FROM campaign.delivery_claims WHERE occurrence_id = %s"
        " ORDER BY shard",
        (occurrence_id,),
    ).fetchall()
    assert [(c[0], c[1], c[2], c[3]) for c in claims] == [
        (i, f"{DAG_ID}/send/{run_id}/{i}", 1, "finished") for i in range(SHARDS)
    ], claims
    assert {c[0]: c[4] for c in claims} == {i: shards[i].pid for i in range(SHARDS)}
    sent = {c[0]: c[5] for c in claims}
    print(f"sent per shard: {sent} (the shards started within {skew:.2f}s)")
    assert all(c[6] == 0 for c in claims), claims
    assert all(n > 0 for n in sent.values()) and sum(sent.values()) == N, sent
    assert dict(Counter(shard_of.values())) == sent  # the ledger's claimers agree with the claims' counts
    # each shard returns the population it sent itself: the shards' outputs add up to the whole
    returned = scratch.db.execute(
        "SELECT map_index, row_count FROM campaign.staging_tables WHERE dag_id = %s AND task_id = 'send'"
        " AND run_id = %s ORDER BY map_index",
        (DAG_ID, run_id),
    ).fetchall()
    assert dict(returned) == sent, returned

    # ---- parallel sending: every shard was sending while the others were ---------------------------
    spans = {
        i: (
            min(arrivals[q] for q, s in shard_of.items() if s == i),
            max(arrivals[q] for q, s in shard_of.items() if s == i),
        )
        for i in range(SHARDS)
    }
    assert max(a for a, _ in spans.values()) < min(b for _, b in spans.values()), spans

    # ---- the rate limit, across the shards ----------------------------------------------------------
    stamps = sorted(arrivals[m.queue_id] for m in messages)
    busiest = max_in_window(stamps)
    duration = stamps[-1] - stamps[0]
    print(f"send phase {duration:.2f}s ({N / duration:.1f}/s overall); at most {busiest} messages in 1 s")
    assert busiest <= RATE + SLACK, busiest
    assert duration >= (N - 1 - SLACK) / RATE, duration
