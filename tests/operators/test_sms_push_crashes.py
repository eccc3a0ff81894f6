"""The SMS delivery through a crash, as the email one: a try SIGKILLed mid-send leaves in doubt
only the message in the channel's hands, the next try sends everybody else once, and nobody
gets two messages. The SNS endpoint is a local one that records every publish."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from airflow_campaign.operators.push import PushDeliveryOperator
from airflow_campaign.operators.sms import SmsDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator
from tests.channels.sns_stub import SnsStub
from tests.operators.test_delivery_crashes import gone, statuses

PEOPLE = 1200
BASE = 910_000
DAY = dt.datetime(2026, 4, 2, tzinfo=dt.timezone.utc)
CONTENT = {"text": "Hi {{ first_name }}", "stop_footer": "STOP 36111"}
CREDENTIALS = {"login": "testing-access-key", "password": "testing-secret-key"}

KILLED_TRY = textwrap.dedent(
    """
    import datetime as dt, json, sys
    from types import SimpleNamespace
    from airflow_campaign.operators.sms import SmsDeliveryOperator

    pop, content = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    op = SmsDeliveryOperator(
        task_id="daily", population=pop, channel="sns", campaign_conn_id="campaign_scratch",
        channel_options={"aws_conn_id": "aws_stub", "threads": 1}, page_size=100, max_error_rate=None,
        **content,
    )
    ti = SimpleNamespace(dag_id="crash_dag", task_id="daily", run_id="killed", map_index=-1, try_number=1,
                         xcom_push=lambda key, value: None)
    op.execute({"ti": ti, "run_id": "killed", "logical_date": dt.datetime.fromisoformat(sys.argv[3])})
    """
)


@pytest.fixture
def stub(monkeypatch):
    stub = SnsStub()
    extra = {"endpoint_url": stub.url, "region_name": "eu-west-1"}
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_STUB", json.dumps({"conn_type": "aws", **CREDENTIALS, "extra": extra})
    )
    yield stub
    stub.stop()


@pytest.fixture
def people(scratch, context):
    scratch.db.execute(
        "INSERT INTO campaign.profiles (id, phone, country, first_name)"
        " SELECT %s + g, '06' || lpad(g::text, 8, '0'), 'FR', 'Name' || g FROM generate_series(1, %s) g",
        (BASE, PEOPLE),
    )
    return QueryOperator(
        task_id="everyone", campaign_conn_id=scratch.conn_id, where=f"id > {BASE}", columns=["first_name"]
    ).execute(context("everyone", dag_id="crash_dag"))


def test_an_sms_send_killed_mid_page_leaves_at_most_the_message_in_flight(
    scratch, people, stub, context, tmp_path
):
    stub.delay = 0.002
    script = tmp_path / "killed_try.py"
    script.write_text(KILLED_TRY)
    child = subprocess.Popen(
        [sys.executable, str(script), json.dumps(people), json.dumps(CONTENT), DAY.isoformat()],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(stub.published) < 300 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.002)
    assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    gone(scratch.db)
    at_kill = statuses(scratch.db)
    received_before = len(stub.published)
    assert 300 <= received_before < PEOPLE
    assert at_kill["sending"] <= 2  # one thread: the message in flight and the next one marked
    assert at_kill["sent"] >= received_before - 2

    stub.delay = 0
    ctx = context("daily", dag_id="crash_dag", run_id="killed")
    ctx["ti"].try_number = 2
    ctx["logical_date"] = DAY
    SmsDeliveryOperator(
        task_id="daily",
        population=people,
        channel="sns",
        channel_options={"aws_conn_id": "aws_stub", "threads": 1},
        campaign_conn_id=scratch.conn_id,
        page_size=100,
        **CONTENT,
    ).execute(ctx)
    by_status = ctx["ti"].xcoms["report"]["by_status"]
    assert sum(by_status.values()) == PEOPLE
    assert set(by_status) <= {"sent", "unknown"}
    assert by_status.get("unknown", 0) == at_kill["sending"] <= 2
    got = Counter(p["PhoneNumber"] for p in stub.published)
    assert set(got.values()) == {1}  # nobody twice
    everybody = {f"+336{i:08d}" for i in range(1, PEOPLE + 1)}
    unknown = {
        a
        for (a,) in scratch.db.execute("SELECT address FROM campaign.delivery_logs WHERE status = 'unknown'")
    }
    assert everybody - unknown <= set(got) <= everybody


def test_sms_shards_send_everybody_once(scratch, people, stub, context):
    """prepare once, then three send tasks as shards of one delivery, side by side in threads."""
    import threading

    common = {
        "delivery": "sharded_sms",
        "population": people,
        "channel": "sns",
        "channel_options": {"aws_conn_id": "aws_stub", "threads": 2},
        "campaign_conn_id": scratch.conn_id,
        "page_size": 50,
        **CONTENT,
    }
    run = "shards"
    SmsDeliveryOperator(task_id="prepare", mode="prepare", **common).execute(
        context("prepare", dag_id="crash_dag", run_id=run)
    )
    errors: list[BaseException] = []

    def shard(i: int) -> None:
        try:
            SmsDeliveryOperator(task_id="send", mode="send", shard=i, **common).execute(
                context("send", dag_id="crash_dag", run_id=run, map_index=i)
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    got = Counter(p["PhoneNumber"] for p in stub.published)
    assert len(got) == PEOPLE and set(got.values()) == {1}
    claimers = scratch.db.execute(
        "SELECT count(DISTINCT split_part(claimed_by, '#', 1)) FROM campaign.delivery_logs WHERE status = 'sent'"
    ).fetchone()[0]
    assert claimers >= 2  # the shards shared the work


# ---- the same for push: one message per device ----------------------------------------------------

PUSH_KILLED_TRY = textwrap.dedent(
    """
    import datetime as dt, json, sys
    from types import SimpleNamespace
    from airflow_campaign.operators.push import PushDeliveryOperator

    pop = json.loads(sys.argv[1])
    op = PushDeliveryOperator(
        task_id="daily_push", population=pop, app="crash_app", body="Hi {{ first_name }}", channel="sns",
        campaign_conn_id="campaign_scratch", channel_options={"aws_conn_id": "aws_stub", "threads": 1},
        page_size=100, max_error_rate=None,
    )
    ti = SimpleNamespace(dag_id="crash_dag", task_id="daily_push", run_id="killed", map_index=-1, try_number=1,
                         xcom_push=lambda key, value: None)
    op.execute({"ti": ti, "run_id": "killed", "logical_date": dt.datetime.fromisoformat(sys.argv[2])})
    """
)


def test_a_push_send_killed_mid_page_leaves_at_most_the_message_in_flight(
    scratch, people, stub, context, tmp_path
):
    # two devices for each of 600 profiles: 1,200 messages
    scratch.db.execute(
        "INSERT INTO campaign.app_subscriptions (profile_id, app, platform, device_token, endpoint)"
        " SELECT %s + g, 'crash_app', p, 'tok-' || g || '-' || p,"
        " 'arn:aws:sns:eu-west-1:123456789012:endpoint/' || p || '/crash/' || g"
        " FROM generate_series(1, 600) g CROSS JOIN (VALUES ('ios'), ('android')) AS v(p)",
        (BASE,),
    )
    devices = 1200
    stub.delay = 0.002
    script = tmp_path / "killed_push.py"
    script.write_text(PUSH_KILLED_TRY)
    child = subprocess.Popen(
        [sys.executable, str(script), json.dumps(people), DAY.isoformat()],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(stub.published) < 300 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.002)
    assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    gone(scratch.db)
    at_kill = statuses(scratch.db)
    assert 300 <= len(stub.published) < devices
    assert at_kill["sending"] <= 2

    stub.delay = 0
    ctx = context("daily_push", dag_id="crash_dag", run_id="killed")
    ctx["ti"].try_number = 2
    ctx["logical_date"] = DAY
    PushDeliveryOperator(
        task_id="daily_push",
        population=people,
        app="crash_app",
        body="Hi {{ first_name }}",
        channel="sns",
        channel_options={"aws_conn_id": "aws_stub", "threads": 1},
        campaign_conn_id=scratch.conn_id,
        page_size=100,
    ).execute(ctx)
    by_status = ctx["ti"].xcoms["report"]["by_status"]
    # the 600 profiles without a device of the app are in the ledger once each, excluded
    assert by_status.get("sent", 0) + by_status.get("unknown", 0) == devices
    assert by_status.get("unknown", 0) == at_kill["sending"] <= 2
    got = Counter(p["TargetArn"] for p in stub.published)
    assert set(got.values()) == {1}  # no device twice
    assert all(p.get("MessageStructure") == "json" for p in stub.published)
    unknown = {
        a
        for (a,) in scratch.db.execute("SELECT address FROM campaign.delivery_logs WHERE status = 'unknown'")
    }
    everyone = {
        a
        for (a,) in scratch.db.execute(
            "SELECT endpoint FROM campaign.app_subscriptions WHERE app = 'crash_app'"
        )
    }
    assert everyone - unknown <= set(got) <= everyone
