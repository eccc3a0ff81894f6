"""The delivery engine's send step against a bare loop doing the same work, to the same sink.

Each side runs in a child process of its own (as a worker would), on an emptied ledger: it
targets the first ``scale`` profiles and prepares the same delivery with
``EmailDeliveryOperator(mode="prepare")`` (untimed: the prepare step is compared on its own in
benchmarks/shards.py), then, timed:

- ours: ``EmailDeliveryOperator(mode="send")``: claimed pages, the ledger gate, rendering with
  the compiled templates, ``MimeSkeleton``, results recorded in the ledger;
- the other: a bare loop that reads the same ledger rows in keyset pages (``id > last ORDER BY
  id LIMIT page``) joined to the same targets table, renders the same subject, text and html
  templates with plain Jinja (``jinja2.sandbox.SandboxedEnvironment`` and ``Template.render``),
  signs the same unsubscribe links, builds each message with the same ``MimeSkeleton`` (the
  MIME step is compared with the standard library's in benchmarks/mime.py) and marks each page
  ``sent`` with one UPDATE.

Both hand their messages to the same sink: the outbox's null mode, which here also folds every
message into a fingerprint (a digest of its recipient and bytes, without the Date, Message-ID
and X-Campaign-Delivery headers and with the MIME boundary blanked: the parts that name the run
or the moment). Before a ratio is printed, every run must have sent the same number of messages
to the same recipients (a digest of the ledger's sent rows) with the same fingerprint. The
figure is messages sent per second; the excluded recipients are not counted.

The sides alternate, ``BENCH_ENGINE_REPEAT`` (default 3) runs each, median. The peak memory of
the send process at ``scale`` recipients is compared with the same at a tenth of them.

Names in results.json: ``Email engine send vs bare loop (null outbox), N recipients`` (this
comparison; it replaces the end-to-end time against a fixed budget) and ``Email engine peak MB,
N vs N/10 recipients``. Run alone: ``python -m benchmarks.deliveries [scale]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from airflow_campaign.channels.base import Envelope, Result
from airflow_campaign.channels.outbox import OutboxChannel

REPEAT = int(os.environ.get("BENCH_ENGINE_REPEAT", "3"))
DELIVERY = "bench_engine"
PAGE_SIZE = 2000
FROM, FROM_NAME = "news@shop.example.com", "Example Shop"
UNSUBSCRIBE_URL = "https://shop.example.com/unsubscribe"
UNSUBSCRIBE_KEY = "variable:campaign_unsubscribe_key"
SUBJECT = "{{ first_name }}, {{ loyalty_points }} points are waiting"
HTML = (
    "<p>Hello {{ first_name }},</p><p>You have <b>{{ loyalty_points }}</b> points.</p>"
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
)
TEXT = (
    "Hello {{ first_name }},\n\nYou have {{ loyalty_points }} points.\n\nUnsubscribe: {{ unsubscribe_url }}\n"
)
MASK = (1 << 128) - 1
_VARYING = (b"date:", b"message-id:", b"x-campaign-delivery:")


def _peak_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def normalised(message: bytes) -> bytes:
    """``message`` without the headers that name the run or the moment, its boundary blanked."""
    head, _, body = message.partition(b"\r\n\r\n")
    kept = b"\r\n".join(line for line in head.split(b"\r\n") if not line.lower().startswith(_VARYING))
    at = head.find(b'boundary="')
    if at >= 0:
        boundary = head[at + 10 : head.index(b'"', at + 10)]
        kept, body = kept.replace(boundary, b"BOUNDARY"), body.replace(boundary, b"BOUNDARY")
    return kept + b"\r\n\r\n" + body


class FingerprintOutbox(OutboxChannel):
    """The outbox's null mode, also folding each message it accepts into ``fingerprint``: the sum
    (mod 2**128) of a digest of its recipient and normalised bytes, whatever the order."""

    def __init__(self) -> None:
        super().__init__(null=True)
        self.fingerprint = 0

    def _accept(self, envelope: Envelope) -> Result:
        digest = hashlib.blake2b(
            envelope.recipient.encode() + b"\0" + normalised(envelope.message), digest_size=16
        ).digest()
        self.fingerprint = (self.fingerprint + int.from_bytes(digest, "big")) & MASK
        return super()._accept(envelope)


def _operator(population: Any, mode: str, sink: OutboxChannel | None = None) -> Any:
    from airflow_campaign.operators.deliveries import EmailDeliveryOperator

    class Engine(EmailDeliveryOperator):
        def make_channel(self) -> Any:
            return sink if sink is not None else super().make_channel()

    return Engine(
        task_id=mode,
        population=population,
        delivery=DELIVERY,
        subject=SUBJECT,
        html=HTML,
        text=TEXT,
        from_addr=FROM,
        from_name=FROM_NAME,
        unsubscribe_url=UNSUBSCRIBE_URL,
        unsubscribe_key=UNSUBSCRIBE_KEY,
        channel="outbox",
        channel_options={"null": True},
        page_size=PAGE_SIZE,
        max_error_rate=None,
        outbound="none",
        mode=mode,
    )


def _context(task_id: str, run_id: str) -> dict[str, Any]:
    from benchmarks.run import _TI

    ti = _TI(dag_id="bench", task_id=task_id, run_id=run_id, map_index=-1, try_number=1, xcoms={})
    return {"ti": ti, "run_id": run_id}


def bare_loop(url: str, occurrence_id: int, targets: str, run_key: str, sink: OutboxChannel) -> int:
    """The hand-written send: keyset pages of the ledger, plain Jinja, the same MIME and sink,
    one UPDATE per page; returns how many were sent."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment
    from psycopg import sql

    from airflow_campaign.delivery.mime import MimeSkeleton
    from airflow_campaign.delivery.unsubscribe import LinkSigner, load_keys

    def finalize(value: Any) -> Any:
        return "" if value is None else value  # a NULL column renders as nothing, as in the engine

    text_env = SandboxedEnvironment(undefined=StrictUndefined, finalize=finalize, keep_trailing_newline=True)
    html_env = SandboxedEnvironment(
        autoescape=True, undefined=StrictUndefined, finalize=finalize, keep_trailing_newline=True
    )
    subject_t, text_t, html_t = (
        text_env.from_string(SUBJECT),
        text_env.from_string(TEXT),
        html_env.from_string(HTML),
    )
    signer = LinkSigner(load_keys(UNSUBSCRIBE_KEY), DELIVERY, UNSUBSCRIBE_URL)
    skeleton = MimeSkeleton(FROM, FROM_NAME, None, {}, f"{DELIVERY}/{run_key}")
    page = sql.SQL(
        "SELECT l.id, l.address, l.recipient_key, t.first_name, t.loyalty_points FROM campaign.delivery_logs l"
        " JOIN {} t ON t._campaign_rk = l.recipient_key WHERE l.occurrence_id = %s AND l.status = 'pending'"
        " AND l.id > %s ORDER BY l.id LIMIT %s"
    ).format(sql.Identifier(*targets.split(".")))
    sent_count, after = 0, 0
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            rows = conn.execute(page, (occurrence_id, after, PAGE_SIZE)).fetchall()
            if not rows:
                return sent_count
            envelopes = []
            for log_id, address, key, first_name, points in rows:
                unsubscribe = signer.unsubscribe_url(key)
                values = {"first_name": first_name, "loyalty_points": points, "unsubscribe_url": unsubscribe}
                message = skeleton.build(
                    address,
                    subject_t.render(values),
                    text_t.render(values),
                    html_t.render(values),
                    f"<{log_id}.{DELIVERY}@shop.example.com>",
                    unsubscribe,
                )
                envelopes.append(Envelope(log_id, address, message, FROM))
            sent = [r.log_id for r in sink.send_batch(envelopes) if r.outcome == "sent"]
            conn.execute(
                "UPDATE campaign.delivery_logs SET status = 'sent', sent_at = now(), updated_at = now()"
                " WHERE id = ANY(%s)",
                (sent,),
            )
            sent_count += len(sent)
            after = rows[-1][0]


def run_side(side: str, limit: int, run_id: str) -> dict[str, Any]:
    """One side in this process: target and prepare (untimed), then send, timed."""
    import logging

    from airflow_campaign.operators.targeting import QueryOperator
    from benchmarks.run import database

    logging.getLogger("airflow.task.operators").setLevel(logging.ERROR)
    os.environ.setdefault("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", "bench-only-unsubscribe-signing-key")
    url = database(int(os.environ.get("BENCH_SCALE", "1000000")))
    pop = QueryOperator(
        task_id=f"recipients_{limit}", where=f"id <= {limit}", columns=["first_name", "loyalty_points"]
    ).execute(_context(f"recipients_{limit}", run_id))
    started = time.perf_counter()
    _operator(pop, "prepare").execute(_context("prepare", run_id))
    prepare_s = time.perf_counter() - started
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT o.id, o.targets_table, o.run_key FROM campaign.delivery_occurrences o JOIN campaign.deliveries d"
            " ON d.id = o.delivery_id WHERE d.name = %s AND o.run_id = %s",
            (DELIVERY, run_id),
        ).fetchone()
    assert row is not None
    occurrence_id, targets, run_key = int(row[0]), str(row[1]), str(row[2])
    sink = FingerprintOutbox()
    imported = _peak_mb()
    if side == "engine":
        op = _operator(pop, "send", sink)
        started = time.perf_counter()
        op.execute(_context("send", run_id))
    else:
        started = time.perf_counter()
        bare_loop(url, occurrence_id, targets, run_key, sink)
    seconds = time.perf_counter() - started
    with psycopg.connect(url) as conn:
        counts = dict(
            conn.execute(
                "SELECT status, count(*) FROM campaign.delivery_logs WHERE occurrence_id = %s GROUP BY 1",
                (occurrence_id,),
            ).fetchall()
        )
        digest = conn.execute(
            "SELECT md5(string_agg(recipient_key || ' ' || address, ',' ORDER BY recipient_key))"
            " FROM campaign.delivery_logs WHERE occurrence_id = %s AND status = 'sent'",
            (occurrence_id,),
        ).fetchone()[0]
    return {
        "side": side,
        "recipients": sum(counts.values()),
        "sent": counts.get("sent", 0),
        "statuses": counts,
        "sink_messages": sink.messages,
        "sent_digest": digest,
        "fingerprint": f"{sink.fingerprint:032x}",
        "seconds": seconds,
        "prepare_s": prepare_s,
        "peak_mb": _peak_mb(),
        "imported_mb": imported,
    }


def _empty_ledger(url: str) -> None:
    """No earlier delivery in the ledger (fatigue and once-per-period rules see none)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE campaign.delivery_logs, campaign.delivery_claims, campaign.delivery_occurrences,"
            " campaign.deliveries CASCADE"
        )
        conn.execute("VACUUM ANALYZE campaign.delivery_logs")


def _child(url: str, side: str, limit: int, run_id: str) -> dict[str, Any]:
    _empty_ledger(url)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.deliveries", "child", side, str(limit), run_id],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def bench_engine(url: str, results: list[dict[str, Any]], scale: int) -> None:
    from benchmarks.run import interleaved, load, record

    stamp = str(int(time.time()))
    runs: list[dict[str, Any]] = []

    def check(side: str, i: int, got: dict[str, Any]) -> None:
        runs.append(got)
        first = runs[0]
        same = {k: got[k] == first[k] for k in ("sent", "sink_messages", "sent_digest", "fingerprint")}
        if not all(same.values()) or got["sent"] != got["sink_messages"]:
            raise AssertionError(
                f"run {i} of {side}: sent {got['sent']} ({got['sink_messages']} to the sink), the first run of"
                f" {first['side']} {first['sent']}; the same: {same}"
            )

    ours_s, other_s = interleaved(
        lambda i: _child(url, "engine", scale, f"engine_{stamp}_{i}"),
        lambda i: _child(url, "loop", scale, f"loop_{stamp}_{i}"),
        REPEAT,
        warmup=False,
        check=check,
        clock=lambda got, wall: float(got["seconds"]),
    )
    sent, total = runs[0]["sent"], runs[0]["recipients"]
    ours = [r for r in runs if r["side"] == "engine"]
    prepare_s = statistics.median(r["prepare_s"] for r in runs)
    print(
        f"  engine: {total:,} recipients, {sent:,} sent ({total - sent:,} excluded) in every run; send step"
        f" {sent / ours_s:,.0f} sent/s, bare loop {sent / other_s:,.0f} sent/s (prepare {prepare_s:.1f}s"
        f" untimed); same recipients and messages every run"
    )
    record(
        results,
        f"Email engine send vs bare loop (null outbox), {scale:,} recipients",
        ours_s,
        "keyset pages + Jinja + MimeSkeleton, same sink",
        other_s,
        1.25,
        "lower",
    )
    start = load()
    small = _child(url, "engine", max(scale // 10, 1000), f"engine_{stamp}_small")
    big_mb = max(r["peak_mb"] for r in ours)
    print(
        f"  engine peak {big_mb:.0f} MB at {scale:,} recipients, {small['peak_mb']:.0f} MB at"
        f" {small['recipients']:,}; bare loop {max(r['peak_mb'] for r in runs if r['side'] == 'loop'):.0f} MB"
    )
    record(
        results,
        f"Email engine peak MB, {scale:,} vs {scale // 10:,} recipients",
        big_mb,
        f"same, {scale // 10:,} recipients",
        small["peak_mb"],
        1.3,
        "lower",
        load_start=start,
    )
    _empty_ledger(url)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        print(json.dumps(run_side(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
        sys.exit(0)
    from benchmarks.run import database

    scale = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("BENCH_SCALE", "1000000"))
    out: list[dict[str, Any]] = []
    bench_engine(database(int(os.environ.get("BENCH_SCALE", "1000000"))), out, scale)
    print(json.dumps(out, indent=2))
