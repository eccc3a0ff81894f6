"""The send step under races: each test pins a promise of docs/recurrence.md at a moment where
the ledger gate, settle, the page claims or a send task could break it (a mark in flight, a
result and its give-up in one round, a timeout mid-batch, a zombie try, a lost connection)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from airflow_campaign.channels.base import Envelope, Result
from airflow_campaign.delivery.sender import Claimer, LedgerGate, PageClaims, register, settle, write_results
from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator
from tests.channels.servers import Inbox
from tests.operators.conftest import smtp  # noqa: F401  (the real SMTP server fixture)

KEY = "race-tests-unsubscribe-signing-key"
BASE = 920_000
HTML = '<p>Hi {{ first_name }}</p><a href="{{ unsubscribe_url }}">Stop</a>'


# ---- helpers ------------------------------------------------------------------------------------


def ledger(db: psycopg.Connection, n: int, name: str = "races") -> tuple[int, list[int]]:
    """A delivery, one occurrence and ``n`` pending ledger rows; (occurrence id, row ids)."""
    delivery = db.execute(
        "INSERT INTO campaign.deliveries (name, channel) VALUES (%s, 'email') RETURNING id", (name,)
    ).fetchone()[0]
    occurrence = db.execute(
        "INSERT INTO campaign.delivery_occurrences (delivery_id, run_key, status) VALUES (%s, 'k', 'prepared')"
        " RETURNING id",
        (delivery,),
    ).fetchone()[0]
    db.execute(
        "INSERT INTO campaign.delivery_logs (delivery_id, occurrence_id, run_key, recipient_key, channel, address)"
        " SELECT %s, %s, 'k', g::text, 'email', 'r' || g || '@example.org' FROM generate_series(1, %s) g",
        (delivery, occurrence, n),
    )
    ids = [r[0] for r in db.execute("SELECT id FROM campaign.delivery_logs ORDER BY id")]
    return occurrence, ids


def status(db: psycopg.Connection, log_id: int) -> str:
    return db.execute("SELECT status FROM campaign.delivery_logs WHERE id = %s", (log_id,)).fetchone()[0]


def statuses(db: psycopg.Connection) -> Counter:
    return Counter(
        dict(db.execute("SELECT status, count(*) FROM campaign.delivery_logs GROUP BY 1").fetchall())
    )


def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def lock_waiting(db: psycopg.Connection) -> bool:
    """Some session waits for a row lock: the ledger thread's statement is blocked."""
    return bool(
        db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()[0]
    )


class Gated:
    """``n`` rows claimed by one registered claimer, and its ledger gate running."""

    def __init__(self, scratch: Any, n: int, window: int) -> None:
        self.db = scratch.db
        self.occurrence, self.ids = ledger(scratch.db, n)
        self.claimer = Claimer("race_dag/send/r/-1", 1)
        self.conn = psycopg.connect(scratch.url, autocommit=True)
        claim_id = register(self.conn, self.occurrence, self.claimer)
        scratch.db.execute(
            "UPDATE campaign.delivery_logs SET status = 'claimed', claimed_by = %s", (self.claimer.token,)
        )
        self.gate = LedgerGate(
            self.conn, self.claimer, claim_id, window=window, rate=None, heartbeat_every=10
        )
        self.gate.start()

    def close(self) -> None:
        self.gate.close()
        self.conn.close()


def envelope(log_id: int) -> Envelope:
    return Envelope(log_id, f"{log_id}@example.org", b"x")


@pytest.fixture
def make_people(scratch, context, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", KEY)

    def make(n: int) -> dict[str, Any]:
        scratch.db.execute(
            "INSERT INTO campaign.profiles (id, email, first_name, loyalty_points)"
            " SELECT %s + g, 'p' || g || '@example.org', 'Name' || g, g FROM generate_series(1, %s) g",
            (BASE, n),
        )
        return QueryOperator(
            task_id="people",
            campaign_conn_id=scratch.conn_id,
            where=f"id > {BASE} AND id <= {BASE + n}",
            columns=["first_name", "loyalty_points"],
        ).execute(context("people"))

    return make


def email_options(scratch, population, conn_id: str, connections: int = 1, **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "task_id": "newsletter",
        "population": population,
        "subject": "Hello {{ first_name }}",
        "html": HTML,
        "from_addr": "news@example.com",
        "unsubscribe_url": "https://example.com/unsubscribe",
        "campaign_conn_id": scratch.conn_id,
        "channel": "smtp",
        "channel_options": {"smtp_conn_id": conn_id, "connections": connections},
    }
    options.update(kwargs)
    return options


def email_op(scratch, population, conn_id: str, connections: int = 1, **kwargs: Any) -> EmailDeliveryOperator:
    op = EmailDeliveryOperator(**email_options(scratch, population, conn_id, connections, **kwargs))
    op.send_retry_delay = 0.05
    return op


# ---- the ledger gate ------------------------------------------------------------------------------


def test_a_row_given_up_by_the_channel_while_its_mark_is_in_flight_is_never_handed_over_unmarked(scratch):
    """A channel reports ``transient`` without calling before() when it cannot reconnect (and
    reconcile() does for leftovers), possibly while the ledger thread is marking that very row:
    once the mark returns, the row is not handed to the channel unless the ledger says 'sending'
    (else it would go out uncounted in the window, and be sent again after a hand-back)."""
    g = Gated(scratch, 3, window=2)
    x = g.ids[0]
    holder = psycopg.connect(scratch.url)
    try:
        holder.execute("SELECT 1 FROM campaign.delivery_logs WHERE id = %s FOR UPDATE", (x,))
        g.gate.arm([x])
        until(lambda: lock_waiting(g.db))  # the ledger thread's mark of x is in flight
        g.gate.after(Result(x, "transient", error="reconnect failed"))  # what SmtpChannel._drain does
        holder.rollback()
        until(lambda: not g.gate._marking and not g.gate._results)
        time.sleep(0.2)  # the write of x back to 'claimed' lands
        handed = g.gate.before(envelope(x))
        now = status(g.db, x)
        assert not handed or now == "sending", f"before() let row {x} go to the channel while it is {now!r}"
    finally:
        holder.close()
        g.close()


def test_a_transient_result_and_its_give_up_in_one_round_leave_the_row_failed(scratch):
    """The last attempt: the channel's after(transient) queues (x, 'claimed'), then record(gave up)
    queues (x, 'failed'), both for the same round. One UPDATE must not carry two results for one row
    (Postgres would apply only one of them): the final one wins, and nothing counts as unrecorded."""
    g = Gated(scratch, 3, window=2)
    x, z = g.ids[0], g.ids[1]
    holder = psycopg.connect(scratch.url)
    try:
        g.gate.arm([z, x])
        assert g.gate.before(envelope(z)) and g.gate.before(envelope(x))
        holder.execute("SELECT 1 FROM campaign.delivery_logs WHERE id = %s FOR UPDATE", (z,))
        g.gate.after(Result(z, "sent"))
        until(lambda: lock_waiting(g.db))  # the ledger thread is busy recording z
        g.gate.after(Result(x, "transient", error="451 try again"))
        g.gate.record([Result(x, "permanent", error="gave up after 1 tries: 451 try again")])
        holder.rollback()
    finally:
        holder.close()
        g.close()
    assert status(g.db, x) == "failed"
    assert g.gate.unrecorded == 0


def test_recipients_given_up_after_their_retries_all_end_failed(scratch, make_people, smtp, context):  # noqa: F811
    """Through the operator: a server that answers 451 to everyone; after max_retries every
    recipient is failed, none is left claimed (and handed back to pending)."""
    pop = make_people(300)
    conn_id = smtp(Inbox(rcpt_faults=10**9))
    op = email_op(scratch, pop, conn_id, connections=2, max_retries=1, page_size=50, max_error_rate=None)
    with pytest.raises(Exception, match="every recipient this task tried failed"):
        op.execute(context("newsletter", run_id="gave-up"))
    assert statuses(scratch.db) == {"failed": 300}


# ---- settle and claims ----------------------------------------------------------------------------


def test_an_earlier_try_that_settles_does_not_declare_the_live_later_try_dead(scratch):
    """Only an earlier try of a task instance counts as dead: a zombie try 1 that settles while try 2
    is alive leaves try 2's rows alone (and learns that it is the one to stop)."""
    occurrence, ids = ledger(scratch.db, 4)
    later = Claimer("race_dag/send/r/-1", 2)
    conn = psycopg.connect(scratch.url, autocommit=True)
    try:
        register(conn, occurrence, later)  # try 2: alive, liveness lock held, fresh heartbeat
        scratch.db.execute(
            "UPDATE campaign.delivery_logs SET status = 'claimed', claimed_by = %s", (later.token,)
        )
        zombie = Claimer("race_dag/send/r/-1", 1)
        counts = settle(scratch.db, occurrence, zombie, "unknown", lease=300)
        assert counts["dead_claimers"] == 0 and counts["newer"] == 1
        assert {status(scratch.db, i) for i in ids} == {"claimed"}
    finally:
        conn.close()


def test_a_claimer_recorded_dead_claims_no_more_rows(scratch):
    """A shard whose heartbeat went stale (a worker cut off from the database for a while) is
    settled by another shard; when it comes back, its claims are fenced too: it claims no fresh
    page under a claim recorded dead."""
    occurrence, _ = ledger(scratch.db, 6)
    scratch.db.execute(
        "CREATE TABLE public.race_targets AS SELECT g::text AS _campaign_rk FROM generate_series(1, 6) g"
    )
    cut_off = Claimer("race_dag/send/r/0", 1, shard=0)
    conn = psycopg.connect(scratch.url, autocommit=True)
    try:
        register(conn, occurrence, cut_off)
        scratch.db.execute("UPDATE campaign.delivery_claims SET heartbeat_at = now() - interval '10 minutes'")
        counts = settle(
            scratch.db, occurrence, Claimer("race_dag/send/r/1", 1, shard=1), "unknown", lease=300
        )
        assert counts["dead_claimers"] == 1
        pages = PageClaims(
            lambda: psycopg.connect(scratch.url), occurrence, "public.race_targets", cut_off, 3, 1
        )
        pages.start()
        got: list[Any] = []
        while (rows := pages.next_page()) is not None:
            got += rows
        pages.stop()
        assert not got, f"a claimer recorded dead claimed {len(got)} row(s)"
    finally:
        conn.close()


# ---- SendRun: kill, timeouts, a lost ledger connection ---------------------------------------------


class KilledWhileOpening(EmailDeliveryOperator):
    """Airflow's SIGTERM handler calls on_kill() while the channel connects."""

    def make_channel(self) -> Any:
        channel = super().make_channel()
        opened = channel.open

        def open_() -> None:
            self.on_kill()
            opened()

        channel.open = open_
        return channel


def test_a_task_killed_while_its_channel_opens_does_not_succeed(scratch, make_people, smtp, context):  # noqa: F811
    """Killed before the first page is taken (or after the last one): the task fails, it does not
    end as if it had sent everything."""
    pop = make_people(30)
    conn_id = smtp(Inbox())
    op = KilledWhileOpening(**email_options(scratch, pop, conn_id))
    with pytest.raises(Exception, match="killed"):
        op.execute(context("newsletter", run_id="killed-opening"))


@dataclass
class SlowInbox(Inbox):
    """50 ms per message: a batch outlasts a short execution_timeout."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(0.05)
        return await super().handle_DATA(server, session, envelope)


TIMED_OUT_TRY = textwrap.dedent(
    """
    import faulthandler, json, sys
    from types import SimpleNamespace
    from airflow.sdk.exceptions import AirflowTaskTimeout
    from airflow.sdk.execution_time.timeout import timeout
    from airflow_campaign.operators.deliveries import EmailDeliveryOperator

    faulthandler.dump_traceback_later(25, exit=True)  # a hung try prints where it hangs
    pop, conn_id, html = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    op = EmailDeliveryOperator(
        task_id="timed", population=pop, channel="smtp", campaign_conn_id="campaign_scratch",
        channel_options={"smtp_conn_id": conn_id, "connections": 2}, page_size=200, max_error_rate=None,
        subject="Hi", html=html, from_addr="news@example.com", unsubscribe_url="https://example.com/u",
    )
    ti = SimpleNamespace(dag_id="test_dag", task_id="timed", run_id="timed", map_index=-1, try_number=1,
                         xcom_push=lambda key, value: None)
    try:
        with timeout(1.0):  # what Airflow's task runner does for execution_timeout
            op.execute({"ti": ti, "run_id": "timed"})
    except AirflowTaskTimeout:
        op.on_kill()
        print("timed out cleanly", flush=True)
    """
)


def test_an_execution_timeout_mid_batch_ends_the_task_and_records_what_was_sent(
    scratch,
    make_people,
    smtp,  # noqa: F811
    tmp_path,
):
    """AirflowTaskTimeout (SIGALRM, raised in the main thread) interrupts WorkerPool.run's wait() while
    the SMTP workers still send: the try ends (no worker left waiting for a mark), what was sent is
    recorded sent, and no row stays 'sending' or 'claimed'."""
    pop = make_people(200)
    inbox = SlowInbox()
    conn_id = smtp(inbox)
    script = tmp_path / "timed_try.py"
    script.write_text(TIMED_OUT_TRY)
    child = subprocess.Popen(
        [sys.executable, str(script), json.dumps(pop), conn_id, HTML],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = child.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
    assert b"timed out cleanly" in out, f"the try did not end after its timeout: {err.decode()[-3000:]}"
    left = statuses(scratch.db)
    assert left["sending"] == 0 and left["claimed"] == 0, left
    rows = dict(scratch.db.execute("SELECT address, status FROM campaign.delivery_logs").fetchall())
    assert {rows[m.rcpt_tos[0]] for m in inbox.messages} == {"sent"}


def test_a_lost_ledger_connection_leaves_no_row_sending(scratch, make_people, smtp, context):  # noqa: F811
    """The ledger connection drops (a network blip, a proxy restart): the task fails, as it should,
    and the results it knows and the rows it had only marked ahead are written back on its other
    connection, so that no row is left 'sending' to be recorded 'unknown' by the next try."""
    pop = make_people(100)
    inbox = Inbox()
    conn_id = smtp(inbox)
    op = email_op(scratch, pop, conn_id, connections=2, rate_limit=40, page_size=50)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            op.execute(context("newsletter", run_id="ledger-lost"))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    until(lambda: len(inbox.messages) >= 10, 30)
    scratch.db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND classid = 7268"
    )
    thread.join(30)
    assert not thread.is_alive() and failure
    assert statuses(scratch.db)["sending"] == 0
    rows = dict(scratch.db.execute("SELECT address, status FROM campaign.delivery_logs").fetchall())
    assert {rows[m.rcpt_tos[0]] for m in inbox.messages} == {"sent"}


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _plan_nodes(child))]


N_CLAIMED = 100_000


def test_recording_results_reads_each_row_by_its_primary_key_however_many_rows_are_claimed(scratch):
    """Recording 500 results must not read every claimed row of the occurrence: with 4 shards and
    pages claimed ahead, a plan through the status index hashed thousands of rows per statement."""
    from airflow_campaign.delivery.sender import WRITE_RESULTS

    occurrence, ids = ledger(scratch.db, 0)
    claimer = Claimer("race_dag/send/r/-1", 1)
    conn = psycopg.connect(scratch.url, autocommit=True)
    register(conn, occurrence, claimer)
    scratch.db.execute(
        "INSERT INTO campaign.delivery_logs (delivery_id, occurrence_id, run_key, recipient_key, channel, address,"
        " status, claimed_by) SELECT o.delivery_id, o.id, 'k', g::text, 'email', 'r' || g || '@example.org',"
        " 'pending', %s FROM campaign.delivery_occurrences o, generate_series(1, %s) g WHERE o.id = %s",
        (claimer.token, N_CLAIMED, occurrence),
    )
    ids = [r[0] for r in scratch.db.execute("SELECT id FROM campaign.delivery_logs ORDER BY id")]
    scratch.db.commit()
    # the statistics of a freshly prepared occurrence (every row pending), as a send starts
    scratch.db.execute("ANALYZE campaign.delivery_logs")
    scratch.db.execute("UPDATE campaign.delivery_logs SET status = 'claimed'")
    scratch.db.commit()
    batch = ids[5_000:5_500]
    params = {
        "rid": batch,
        "rst": ["sent"] * len(batch),
        "rpid": [None] * len(batch),
        "rerr": [None] * len(batch),
        "mid": ids[6_000:6_008],
        "who": claimer.token,
    }
    plan = scratch.db.execute("EXPLAIN (FORMAT JSON) " + WRITE_RESULTS, params).fetchone()[0][0]
    nodes = [n for n in _plan_nodes(plan["Plan"]) if n.get("Relation Name") == "delivery_logs"]
    scans = [n for n in nodes if n["Node Type"] != "ModifyTable"]
    assert scans and all(n.get("Index Name") == "delivery_logs_pkey" for n in scans), scans
    counts, marked = write_results(
        conn, claimer.token, [(i, "sent", None, None) for i in batch], ids[6_000:6_008]
    )
    assert counts == Counter({"sent": 500}) and marked == set(ids[6_000:6_008])
    assert statuses(scratch.db) == Counter({"claimed": N_CLAIMED - 508, "sent": 500, "sending": 8})
    conn.close()
