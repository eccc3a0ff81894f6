"""The delivery engine's promises: shards and mapped instances never cross, a recipient listed twice
gets one message, a broken template stops the task and leaves the rest pending, checks come before
any write, the occurrence tells the truth, a zombie try is fenced off, on_kill hands rows back."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from psycopg import sql

from airflow_campaign.channels.base import Envelope, Result
from airflow_campaign.delivery.sender import Claimer, LedgerGate, register, settle
from airflow_campaign.delivery.unsubscribe import parse_and_verify
from airflow_campaign.errors import CampaignError
from airflow_campaign.hooks.campaign import CampaignHook
from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator
from tests.channels.servers import Inbox
from tests.conftest import count

KEY = "engine-tests-unsubscribe-signing-key"
BASE = 910_000
HTML = (
    '<p>Hi {{ first_name }}, you have {{ loyalty_points }} points</p><a href="{{ unsubscribe_url }}">Stop</a>'
)


@dataclass
class TimedInbox(Inbox):
    """An Inbox that also notes when each message arrived."""

    arrived: list[float] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        self.arrived.append(time.monotonic())
        return reply


@pytest.fixture
def make_people(scratch, context, monkeypatch):
    """``make_people(n)``: n profiles with distinct valid addresses (points = their number), as a population."""
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", KEY)

    def make(n: int, where: str | None = None) -> dict[str, Any]:
        scratch.db.execute(
            "INSERT INTO campaign.profiles (id, email, first_name, loyalty_points)"
            " SELECT %s + g, 'p' || g || '@example.org', 'Name' || g, g FROM generate_series(1, %s) g"
            " ON CONFLICT DO NOTHING",
            (BASE, n),
        )
        return QueryOperator(
            task_id="people",
            campaign_conn_id=scratch.conn_id,
            where=where or f"id > {BASE} AND id <= {BASE + n}",
            columns=["first_name", "loyalty_points"],
        ).execute(context("people"))

    return make


def email_op(scratch, population, **kwargs) -> EmailDeliveryOperator:
    options: dict[str, Any] = {
        "task_id": "newsletter",
        "population": population,
        "subject": "Hello {{ first_name }}",
        "html": HTML,
        "from_addr": "news@example.com",
        "unsubscribe_url": "https://example.com/unsubscribe",
        "channel": "outbox",
        "campaign_conn_id": scratch.conn_id,
    }
    options.update(kwargs)
    op = EmailDeliveryOperator(**options)
    op.send_retry_delay = 0.05
    return op


def smtp_options(conn_id: str, connections: int = 1) -> dict[str, Any]:
    return {"channel": "smtp", "channel_options": {"smtp_conn_id": conn_id, "connections": connections}}


def statuses(db) -> Counter:
    return Counter(
        dict(db.execute("SELECT status, count(*) FROM campaign.delivery_logs GROUP BY 1").fetchall())
    )


def parsed(inbox: Inbox) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(m.content, policy=email.policy.default) for m in inbox.messages]


# ---- mapped instances and shards ----------------------------------------------------------------


def test_two_mapped_instances_prepared_before_either_sends_keep_their_own_ledgers(
    scratch, make_people, smtp, context
):
    make_people(40)
    halves = [
        QueryOperator(
            task_id="half",
            campaign_conn_id=scratch.conn_id,
            where=f"id > {BASE} AND id <= {BASE + 40} AND id % 2 = {i}",
            columns=["first_name", "loyalty_points"],
        ).execute(context("half", map_index=i))
        for i in (0, 1)
    ]
    inbox = Inbox()
    conn_id = smtp(inbox)
    # what partial().expand(population=...) does, interleaved: both instances prepare, then both send
    for mode in ("prepare", "send"):
        for i in (0, 1):
            op = email_op(scratch, halves[i], mode=mode, **smtp_options(conn_id))
            op.execute(context("newsletter", run_id="mapped", map_index=i))
    names = {r[0] for r in scratch.db.execute("SELECT name FROM campaign.deliveries")}
    assert names == {"test_dag.newsletter[0]", "test_dag.newsletter[1]"}
    got = parsed(inbox)
    assert sorted(m["To"] for m in got) == sorted(f"p{g}@example.org" for g in range(1, 41))
    for message in got:
        number = int(re.match(r"p(\d+)@", message["To"]).group(1))
        assert message["Subject"] == f"Hello Name{number}"  # its own data
        assert f"you have {number} points" in message.get_body(("html",)).get_content()
        link = re.search(r"<(https://[^>]+)>", message["List-Unsubscribe"]).group(1)
        verified = parse_and_verify(link, KEY.encode())
        assert verified is not None and verified["recipient_key"] == str(BASE + number)  # for its own profile
        assert verified["delivery"] == f"test_dag.newsletter[{number % 2}]"
    assert statuses(scratch.db) == {"sent": 40}


def test_mapped_instances_sharing_one_delivery_name_are_refused_before_writing(scratch, make_people, context):
    pop = make_people(20)
    first = email_op(scratch, pop, delivery="shared", mode="prepare")
    first.execute(context("newsletter", run_id="mapped", map_index=0))
    before = statuses(scratch.db)
    second = email_op(scratch, pop, delivery="shared", mode="prepare")
    with pytest.raises(
        CampaignError, match=r"delivery='shared': .*map index 1.*already prepared.*map index 0"
    ):
        second.execute(context("newsletter", run_id="mapped", map_index=1))
    assert statuses(scratch.db) == before  # nothing excluded, nothing added
    # a later run of the same run key (a re-run) may prepare it again
    email_op(scratch, pop, delivery="shared", mode="prepare").execute(context("newsletter", run_id="rerun"))


def test_shards_send_one_prepared_delivery_together_at_one_shared_rate(scratch, make_people, smtp, context):
    n, rate = 180, 60
    pop = make_people(n)
    inbox = TimedInbox()
    conn_id = smtp(inbox)
    email_op(scratch, pop, delivery="sharded", mode="prepare").execute(context("prepare", run_id="s"))
    errors: list[BaseException] = []

    def shard(i: int) -> None:
        op = email_op(
            scratch,
            pop,
            task_id="send",
            delivery="sharded",
            mode="send",
            shard=i,
            page_size=10,
            rate_limit=rate,
            **smtp_options(conn_id, connections=2),
        )
        try:
            op.execute(context("send", run_id="s", map_index=i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    got = Counter(m.rcpt_tos[0] for m in inbox.messages)
    assert set(got.values()) == {1} and len(got) == n  # nobody twice, nobody missed
    assert statuses(scratch.db) == {"sent": n}
    shares = dict(
        scratch.db.execute("SELECT shard, (counts->>'sent')::int FROM campaign.delivery_claims").fetchall()
    )
    assert set(shares) == {0, 1, 2} and all(shares.values()) and sum(shares.values()) == n
    arrived = sorted(inbox.arrived)
    assert arrived[-1] - arrived[0] >= (n - 1) / rate * 0.97
    most = max(sum(1 for t in arrived[i:] if t - start < 1.0) for i, start in enumerate(arrived))
    assert most <= rate + 3  # the limit holds across the three shards together


# ---- recipients and content ----------------------------------------------------------------------


def test_a_recipient_listed_twice_gets_one_message(scratch, make_people, tmp_path, context):
    make_people(3)
    folder = tmp_path / "outbox"
    rows = [
        {"id": BASE + 1, "first_name": "First", "loyalty_points": 1},
        {"id": BASE + 2, "first_name": "Other", "loyalty_points": 2},
        {"id": BASE + 1, "first_name": "Second", "loyalty_points": 1},
    ]
    ctx = context("newsletter", run_id="twice")
    op = email_op(scratch, rows, channel="outbox", channel_options={"folder": str(folder)})
    op.execute(ctx)
    assert ctx["ti"].xcoms["report"]["by_status"] == {"sent": 2}
    messages = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in folder.glob("*.eml")
    ]
    assert sorted(m["To"] for m in messages) == ["p1@example.org", "p2@example.org"]
    assert {m["Subject"] for m in messages} == {"Hello First", "Hello Other"}  # the first row listed
    assert (
        count(
            scratch.db, "SELECT count(*) FROM campaign.delivery_logs WHERE recipient_key = %s", str(BASE + 1)
        )
        == 1
    )


def test_a_template_that_breaks_mid_send_fails_the_task_and_a_fixed_retry_sends_the_rest(
    scratch, make_people, smtp, context
):
    pop = make_people(200)
    scratch.db.execute(  # one recipient in the middle whose value the broken template cannot handle
        sql.SQL("UPDATE {} SET loyalty_points = 0 WHERE id = %s").format(
            sql.Identifier(*pop["table"].split("."))
        ),
        (BASE + 120,),
    )
    inbox = Inbox()
    conn_id = smtp(inbox)
    broken = HTML.replace("{{ loyalty_points }}", "{{ 1000 // loyalty_points }}")
    ctx = context("newsletter", run_id="broken")
    with pytest.raises(CampaignError, match=r"html: ZeroDivisionError.*ledger row \d+.*still pending"):
        email_op(scratch, pop, html=broken, page_size=20, **smtp_options(conn_id)).execute(ctx)
    assert statuses(scratch.db) == {"sent": 100, "pending": 100}  # pages before it sent, the rest untouched
    assert len(inbox.messages) == 100
    occurrence = scratch.db.execute(
        "SELECT status, error, finished_at IS NOT NULL, counts->'by_status' FROM campaign.delivery_occurrences"
    ).fetchone()
    assert occurrence[0] == "failed" and "ZeroDivisionError" in occurrence[1] and occurrence[2]
    assert occurrence[3] == {"sent": 100, "pending": 100}

    ctx["ti"].try_number = 2
    email_op(scratch, pop, page_size=20, **smtp_options(conn_id)).execute(ctx)  # the template fixed
    got = Counter(m.rcpt_tos[0] for m in inbox.messages)
    assert len(got) == 200 and set(got.values()) == {1}
    assert statuses(scratch.db) == {"sent": 200}


def test_a_delivery_in_which_everybody_failed_fails_the_task(scratch, make_people, smtp, context):
    pop = make_people(29)
    conn_id = smtp(Inbox(reject=("@",)))
    with pytest.raises(CampaignError, match=r"every recipient this task tried failed \(29 of 29\)"):
        email_op(scratch, pop, **smtp_options(conn_id)).execute(context("newsletter", run_id="all-fail"))
    assert statuses(scratch.db) == {"failed": 29}
    status = scratch.db.execute("SELECT status, error FROM campaign.delivery_occurrences").fetchone()
    assert status[0] == "sent" and "every recipient" in status[1]  # nothing left to send, and why it failed


def test_an_address_that_cannot_go_in_to_fails_that_recipient_only(scratch, make_people, tmp_path, context):
    pop = make_people(5)
    scratch.db.execute(
        "UPDATE campaign.profiles SET email = 'p3@example.org, victim@evil.example' WHERE id = %s",
        (BASE + 3,),
    )
    folder = tmp_path / "outbox"
    ctx = context("newsletter", run_id="bad-to")
    # a custom typology without the address rules: the message builder still refuses the address
    email_op(scratch, pop, typology=[], channel_options={"folder": str(folder)}).execute(ctx)
    assert ctx["ti"].xcoms["report"]["by_status"] == {"sent": 4, "failed": 1}
    error = scratch.db.execute("SELECT error FROM campaign.delivery_logs WHERE status = 'failed'").fetchone()[
        0
    ]
    assert error.startswith("invalid address")
    tos = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["To"]
        for p in folder.glob("*.eml")
    ]
    assert sorted(tos) == [f"p{i}@example.org" for i in (1, 2, 4, 5)]


def test_a_ledger_row_without_its_recipient_is_never_sent(scratch, make_people, tmp_path, context):
    pop = make_people(30)
    email_op(scratch, pop, delivery="gone", mode="prepare").execute(context("prepare", run_id="g"))
    targets = scratch.db.execute("SELECT targets_table FROM campaign.delivery_occurrences").fetchone()[0]
    scratch.db.execute(
        sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(*targets.split("."))), (BASE + 7,)
    )
    folder = tmp_path / "outbox"
    op = email_op(scratch, pop, task_id="send", delivery="gone", mode="send", page_size=10)
    op.channel_options = {"folder": str(folder)}
    with pytest.raises(CampaignError, match=r"no recipient in the targets table"):
        op.execute(context("send", run_id="g"))
    assert not folder.exists() or not list(folder.glob("*.eml"))  # the page was not sent at all
    assert statuses(scratch.db) == {"pending": 30}


# ---- checks before writes, and the occurrence -------------------------------------------------


def _nothing_written(db) -> None:
    for table in ("deliveries", "delivery_occurrences", "delivery_logs", "delivery_claims"):
        assert count(db, f"SELECT count(*) FROM campaign.{table}") == 0, table
    assert count(db, "SELECT count(*) FROM campaign.staging_tables WHERE task_id = 'newsletter'") == 0


def test_a_missing_signing_key_fails_before_anything_is_written(scratch, make_people, context, monkeypatch):
    pop = make_people(5)
    monkeypatch.delenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY")
    with pytest.raises(CampaignError, match=r"unsubscribe_key="):
        email_op(scratch, pop).execute(context("newsletter"))
    _nothing_written(scratch.db)


def test_an_unknown_smtp_connection_fails_before_anything_is_written(scratch, make_people, context):
    pop = make_people(5)
    with pytest.raises(CampaignError, match=r"smtp_conn_id='nowhere': no Airflow connection by that name"):
        email_op(scratch, pop, **smtp_options("nowhere")).execute(context("newsletter"))
    _nothing_written(scratch.db)


def test_a_bad_unsubscribe_url_fails_when_the_dag_is_parsed(scratch, make_people):
    with pytest.raises(CampaignError, match=r"unsubscribe_url='ftp://x': not an http\(s\) URL"):
        email_op(scratch, [], unsubscribe_url="ftp://x")


def test_every_occurrence_carries_its_counts_and_a_simulation_leaves_a_sent_interval_sent(
    scratch, make_people, tmp_path, context
):
    pop = make_people(10)
    folder = tmp_path / "outbox"

    def run(run_type: str, **kwargs: Any) -> tuple:
        ctx = context("newsletter", run_id=f"{run_type}__x")
        ctx["logical_date"] = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)
        ctx["dag_run"] = type("DagRun", (), {"run_type": run_type, "run_id": ctx["run_id"]})()
        email_op(scratch, pop, channel_options={"folder": str(folder)}, **kwargs).execute(ctx)
        return scratch.db.execute(
            "SELECT status, counts->'by_status', finished_at IS NOT NULL FROM campaign.delivery_occurrences"
        ).fetchone()

    assert run("backfill") == ("simulated", {"simulated": 10}, True)
    assert run("scheduled") == ("sent", {"sent": 10}, True)
    assert run("backfill") == ("sent", {"sent": 10}, True)  # simulating a sent interval: still sent
    assert len(list(folder.glob("*.eml"))) == 10


# ---- crash safety inside one process -------------------------------------------------------------


def test_a_zombie_try_is_fenced_off_once_a_newer_try_took_its_rows_over(scratch, make_people, context):
    pop = make_people(10)
    email_op(scratch, pop, delivery="zombie", mode="prepare").execute(context("prepare", run_id="z"))
    occurrence_id = scratch.db.execute("SELECT id FROM campaign.delivery_occurrences").fetchone()[0]
    ids = [r[0] for r in scratch.db.execute("SELECT id FROM campaign.delivery_logs ORDER BY id")]
    zombie = Claimer("test_dag/send/z/-1", 1)
    connection = CampaignHook(campaign_conn_id=scratch.conn_id).connect()
    connection.autocommit = True
    claim_id = register(connection, occurrence_id, zombie)
    scratch.db.execute(
        "UPDATE campaign.delivery_logs SET status = 'claimed', claimed_by = %s WHERE id = ANY(%s)",
        (zombie.token, ids),
    )
    gate = LedgerGate(connection, zombie, claim_id, window=2, rate=None, heartbeat_every=10)
    gate.start()
    try:
        gate.arm(ids)
        assert gate.before(Envelope(ids[0], "p1@example.org", b"x"))  # marked sending: in the channel's hands
        # the zombie stalls; its next try starts and settles what it left
        settled = settle(scratch.db, occurrence_id, Claimer("test_dag/send/z/-1", 2), "unknown", lease=300)
        assert settled["dead_claimers"] == 1 and settled["pending"] == 8 and settled["unknown"] == 2
        gate.after(Result(ids[0], "sent", provider_id="late"))  # the zombie wakes up: its result is fenced
        assert not gate.before(Envelope(ids[5], "p6@example.org", b"x"))  # and it may send nothing more
    finally:
        gate.close()
        connection.close()
    assert gate.lost >= 1 and gate.unrecorded == 2  # the late result, and the row it had marked ahead
    rows = dict(scratch.db.execute("SELECT id, status FROM campaign.delivery_logs").fetchall())
    assert rows[ids[0]] == "unknown" and rows[ids[1]] == "unknown"  # what was in doubt stays in doubt
    assert [rows[i] for i in ids[2:]] == ["pending"] * 8  # the rest is the newer try's to send
    assert (
        scratch.db.execute(
            "SELECT provider_message_id FROM campaign.delivery_logs WHERE id = %s", (ids[0],)
        ).fetchone()[0]
        is None
    )


def test_on_kill_hands_the_claimed_rows_back_and_a_retry_sends_them(scratch, make_people, smtp, context):
    pop = make_people(200)
    inbox = Inbox()
    conn_id = smtp(inbox)
    ctx = context("newsletter", run_id="killed")
    op = email_op(scratch, pop, rate_limit=40, page_size=50, **smtp_options(conn_id, connections=2))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            op.execute(ctx)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while len(inbox.messages) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    op.on_kill()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # handed back at once, while the task is still stopping
        at_kill = statuses(scratch.db)
        if at_kill["claimed"] + at_kill["sending"] <= 4:
            break
        time.sleep(0.01)
    thread.join(30)
    assert not thread.is_alive()
    assert failure and "killed" in str(failure[0])
    # handed back at once, but for the few the connections had marked (2 x 2), handed back as they stop
    assert at_kill["claimed"] + at_kill["sending"] <= 4
    after = statuses(scratch.db)
    assert after["claimed"] == 0 and after["sending"] == 0
    assert after["pending"] > 100 and after["sent"] == len(inbox.messages) - after["unknown"]
    claim = scratch.db.execute("SELECT state FROM campaign.delivery_claims").fetchone()[0]
    assert claim == "failed"

    ctx["ti"].try_number = 2
    email_op(scratch, pop, page_size=50, **smtp_options(conn_id, connections=2)).execute(ctx)
    got = Counter(m.rcpt_tos[0] for m in inbox.messages)
    unknown = {
        r[0]
        for r in scratch.db.execute("SELECT address FROM campaign.delivery_logs WHERE status = 'unknown'")
    }
    everybody = {f"p{g}@example.org" for g in range(1, 201)}
    assert set(got.values()) == {1}  # nobody twice
    assert everybody - unknown <= set(got) <= everybody  # everybody else received it
