"""PushDeliveryOperator and RegisterDevicesOperator: one message per device, APNs and FCM payloads,
the 4 KB limit, silent pushes, disabled endpoints; the outbox and SNS (moto in server mode)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.push import PushDeliveryOperator, RegisterDevicesOperator
from airflow_campaign.operators.targeting import QueryOperator

WHERE = "id <= 400"
CREDENTIALS = {"login": "testing-access-key", "password": "testing-secret-key"}


def devices(db, where: str = WHERE, app: str = "shop") -> dict[str, tuple[int, str]]:
    """Every enabled install of the app by a profile of ``where`` that is not push-denylisted,
    computed here: {device id: (profile id, platform)}."""
    return {
        str(i): (p, platform)
        for i, p, platform in db.execute(
            "SELECT a.id, a.profile_id, a.platform FROM campaign.app_subscriptions a JOIN campaign.profiles p"
            f" ON p.id = a.profile_id WHERE {where.replace('id', 'p.id')} AND a.app = %s AND a.enabled"
            " AND NOT p.push_denylisted",
            (app,),
        )
    }


@pytest.fixture
def setup(scratch, context, tmp_path):
    pop = QueryOperator(
        task_id="targets",
        campaign_conn_id=scratch.conn_id,
        where=WHERE,
        columns=["first_name", "loyalty_points"],
    ).execute(context("targets"))
    return scratch, pop, tmp_path / "outbox"


def operator(scratch, pop, folder, **kwargs: Any) -> PushDeliveryOperator:
    options: dict[str, Any] = {
        "task_id": "push",
        "population": pop,
        "app": "shop",
        "title": "Hi {{ first_name }}",
        "body": "{{ loyalty_points }} points wait for you",
        "data": {"points": "{{ loyalty_points }}"},
        "deeplink": "shop://points",
        "channel": "outbox",
        "channel_options": {"folder": str(folder)},
        "campaign_conn_id": scratch.conn_id,
        **kwargs,
    }
    return PushDeliveryOperator(**options)


def files(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


def test_one_message_per_device_with_the_payload_of_its_platform(setup, context):
    scratch, pop, folder = setup
    ctx = context("push")
    operator(scratch, pop, folder, badge=3, sound="default", ttl="6h", collapse_key="points").execute(ctx)
    expected = devices(scratch.db)
    got = files(folder)
    logs = scratch.db.execute(
        "SELECT destination, address FROM campaign.delivery_logs WHERE status = 'sent'"
    ).fetchall()
    assert len(got) == len(logs) == len(expected) > 20
    assert {d.split(":")[1] for d, _ in logs} == set(expected)
    names = dict(scratch.db.execute("SELECT id, first_name FROM campaign.profiles").fetchall())
    points = dict(scratch.db.execute("SELECT id, loyalty_points FROM campaign.profiles").fetchall())
    tokens = dict(scratch.db.execute("SELECT id, device_token FROM campaign.app_subscriptions").fetchall())
    by_to = {m["to"]: m for m in got}
    for destination, address in logs:
        platform, device = destination.split(":")
        profile, own = expected[device]
        assert platform == own and address == f"{platform}:{tokens[int(device)]}"
        m = by_to[address]
        assert m["platform"] == platform and m["ttl"] == 21600
        sns = json.loads(m["sns_message"])
        apns, fcm = json.loads(sns["APNS"]), json.loads(sns["GCM"])
        assert sns["APNS_SANDBOX"] == sns["APNS"]
        assert apns["aps"]["alert"] == {
            "title": f"Hi {names[profile]}",
            "body": f"{points[profile]} points wait for you",
        }
        assert apns["aps"]["badge"] == 3 and apns["aps"]["sound"] == "default"
        assert apns["points"] == str(points[profile]) and apns["deeplink"] == "shop://points"
        message = fcm["fcmV1Message"]["message"]
        assert message["notification"]["title"] == f"Hi {names[profile]}"
        assert message["data"] == {"points": str(points[profile]), "deeplink": "shop://points"}
        assert message["android"] == {"priority": "HIGH", "collapse_key": "points", "ttl": "21600s"}
        assert m["payload"] == (apns if platform == "ios" else fcm)
    # a profile without the app is in the ledger with its reason, once
    report = ctx["ti"].xcoms["report"]
    assert report["excluded"].get("no device (no enabled install of shop)", 0) > 0
    # the same run again sends nothing more
    again = context("push", run_id=ctx["run_id"])
    operator(scratch, pop, folder).execute(again)
    assert len(files(folder)) == len(expected)


def test_a_silent_push_and_a_payload_over_4kb(scratch, context, tmp_path, capsys):
    scratch.db.execute(
        "INSERT INTO campaign.profiles (id, first_name) VALUES (960001, 'Ann'), (960002, %s)", ("x" * 5000,)
    )
    scratch.db.execute(
        "INSERT INTO campaign.app_subscriptions (profile_id, app, platform, device_token) VALUES"
        " (960001, 'shop', 'ios', 'tok-a1'), (960001, 'shop', 'android', 'tok-a2'), (960002, 'shop', 'android', 'tok-b')"
    )
    pop = QueryOperator(
        task_id="t", campaign_conn_id=scratch.conn_id, where="id > 960000", columns=["first_name"]
    ).execute(context("t"))
    ctx = context("push")
    operator(
        scratch, pop, tmp_path / "big", title=None, body="Hi {{ first_name }}", data={}, deeplink=None
    ).execute(ctx)
    reasons = dict(
        scratch.db.execute(
            "SELECT address, coalesce(exclusion_reason, status) FROM campaign.delivery_logs"
        ).fetchall()
    )
    assert reasons["ios:tok-a1"] == reasons["android:tok-a2"] == "sent"  # two devices, two messages
    assert reasons["android:tok-b"].startswith("payload too large (android: 50")
    assert "1 device(s) would get a payload over 4096 bytes" in capsys.readouterr().out
    assert len(list((tmp_path / "big").glob("*.json"))) == 2

    silent = context("silent")
    operator(
        scratch,
        pop,
        tmp_path / "silent",
        task_id="silent",
        title=None,
        body=None,
        silent=True,
        data={"sync": "inbox"},
        deeplink=None,
        platforms=["ios"],
    ).execute(silent)
    (only,) = files(tmp_path / "silent")
    assert only["payload"] == {"aps": {"content-available": 1}, "sync": "inbox"}
    fcm = json.loads(json.loads(only["sns_message"])["GCM"])["fcmV1Message"]["message"]
    assert "notification" not in fcm and fcm["data"] == {"sync": "inbox"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"body": None}, r"body: give the notification's text"),
        ({"silent": True}, r"silent=True: a silent push wakes the app with data only"),
        ({"data": {"aps": "x"}}, r"data: 'aps' cannot be a custom key"),
        ({"ttl": "60d"}, r"ttl='60d': give a duration from 0 to 28 days"),
        ({"platforms": ["windows"]}, r"platforms: 'windows' is not a platform"),
        ({"android_priority": "urgent"}, r"android_priority"),
        ({"channel_options": {"folder": "x", "threads": 2}}, r"channel_options: \['threads'\]"),
        ({"title": "{{ nope }}"}, r"the notification uses \{\{ nope \}\}"),
        ({"proof_to": 42}, r"proof_to=42: give a list of profile ids"),
        ({"proof_to": ["me@example.com"]}, r"proof_to: 'me@example.com' is not a profile id"),
    ],
)
def test_bad_options_fail_before_anything_is_written(setup, context, kwargs, message):
    scratch, pop, folder = setup
    with pytest.raises(CampaignError, match=message):
        operator(scratch, pop, folder, **kwargs).execute(context("push"))
    assert scratch.db.execute("SELECT count(*) FROM campaign.delivery_logs").fetchone() == (0,)


# ---- SNS platform endpoints (moto in server mode) ---------------------------------------------------


@pytest.fixture
def sns(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    reset_moto(s3_endpoint)
    extra = {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_PUSH", json.dumps({"conn_type": "aws", **CREDENTIALS, "extra": extra})
    )
    client = boto3.client(
        "sns",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["login"],
        aws_secret_access_key=CREDENTIALS["password"],
    )
    apps = {
        "ios": client.create_platform_application(Name="shop-ios", Platform="APNS", Attributes={})[
            "PlatformApplicationArn"
        ],
        "android": client.create_platform_application(Name="shop-android", Platform="GCM", Attributes={})[
            "PlatformApplicationArn"
        ],
    }
    return type("Sns", (), {"endpoint": s3_endpoint, "client": client, "apps": apps})


def reset_moto(endpoint: str) -> None:
    """Forget what earlier tests left on the session's moto server: some of its S3 objects make
    /moto-api/data.json fail with a 500, and this test reads it."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()  # noqa: S310


def endpoint_messages(endpoint: str) -> dict[str, list[str]]:
    with urllib.request.urlopen(f"{endpoint}/moto-api/data.json") as response:  # noqa: S310 (local server)
        data = json.load(response)
    return {e["arn"]: list(e["messages"].values()) for e in data.get("sns", {}).get("PlatformEndpoint", [])}


def test_register_then_push_through_sns_and_a_disabled_endpoint_is_quarantined(setup, context, sns):
    scratch, pop, _ = setup
    expected = devices(scratch.db)
    scratch.db.execute("UPDATE campaign.app_subscriptions SET endpoint = NULL")
    registered = RegisterDevicesOperator(
        task_id="register",
        app="shop",
        platform_applications=sns.apps,
        aws_conn_id="aws_push",
        campaign_conn_id=scratch.conn_id,
    ).execute(context("register"))
    total = scratch.db.execute(
        "SELECT count(*) FROM campaign.app_subscriptions WHERE app = 'shop'"
    ).fetchone()[0]
    assert registered == {"registered": total, "refused": 0}
    endpoints = dict(
        scratch.db.execute("SELECT id::text, endpoint FROM campaign.app_subscriptions").fetchall()
    )
    assert all(e and e.startswith("arn:aws:sns:us-east-1:") for e in endpoints.values())
    # again: nothing left to register
    assert RegisterDevicesOperator(
        task_id="register",
        app="shop",
        platform_applications=sns.apps,
        aws_conn_id="aws_push",
        campaign_conn_id=scratch.conn_id,
    ).execute(context("register2")) == {"registered": 0, "refused": 0}

    dead = endpoints[sorted(expected)[0]]
    sns.client.set_endpoint_attributes(EndpointArn=dead, Attributes={"Enabled": "false"})
    ctx = context("push")
    operator(
        scratch,
        pop,
        None,
        channel="sns",
        channel_options={"aws_conn_id": "aws_push", "threads": 4},
        max_error_rate=None,
    ).execute(ctx)
    received = endpoint_messages(sns.endpoint)
    for device in expected:
        arn = endpoints[device]
        if arn == dead:
            assert received.get(arn, []) == []
            continue
        (message,) = received[arn]  # one message per device
        structure = json.loads(message)
        assert set(structure) == {"default", "APNS", "APNS_SANDBOX", "GCM"}
        assert json.loads(structure["APNS"])["aps"]["alert"]["title"].startswith("Hi ")
    row = scratch.db.execute(
        "SELECT status, error FROM campaign.delivery_logs WHERE address = %s", (dead,)
    ).fetchone()
    assert row[0] == "failed" and row[1].startswith("EndpointDisabled")
    assert scratch.db.execute(
        "SELECT enabled FROM campaign.app_subscriptions WHERE endpoint = %s", (dead,)
    ).fetchone() == (False,)
    assert scratch.db.execute(
        "SELECT reason FROM campaign.quarantine WHERE channel = 'push' AND address = lower(%s)", (dead,)
    ).fetchone() == ("invalid",)
    # the next delivery leaves the device out before sending
    nxt = context("push_next")
    operator(
        scratch, pop, None, task_id="push_next", channel="sns", channel_options={"aws_conn_id": "aws_push"}
    ).execute(nxt)
    assert scratch.db.execute(
        "SELECT count(*) FROM campaign.delivery_logs l JOIN campaign.deliveries d ON d.id = l.delivery_id"
        " WHERE d.name LIKE %s AND l.address = %s",
        ("%push_next", dead),
    ).fetchone() == (0,)  # its install is disabled: no longer one of the profile's devices


def test_proofs_go_to_the_devices_of_the_test_profiles_only(setup, context):
    scratch, pop, folder = setup
    # a test profile outside the population, with installs of the app (the seed gives some two)
    tester, installs = scratch.db.execute(
        "SELECT a.profile_id, count(*) FROM campaign.app_subscriptions a WHERE a.profile_id > 400"
        " AND a.app = 'shop' AND a.enabled GROUP BY 1 ORDER BY 1 LIMIT 1"
    ).fetchone()
    ctx = context("push", run_id="proof")
    operator(scratch, pop, folder, proof_to=[tester]).execute(ctx)
    got = files(folder)
    tokens = {
        f"{platform}:{token}"
        for platform, token in scratch.db.execute(
            "SELECT platform, device_token FROM campaign.app_subscriptions WHERE profile_id = %s"
            " AND app = 'shop' AND enabled",
            (tester,),
        )
    }
    assert len(got) == installs and {m["to"] for m in got} == tokens
    first = scratch.db.execute("SELECT first_name FROM campaign.profiles WHERE id = 1").fetchone()[0]
    for m in got:
        title = m["payload"]["aps"]["alert"]["title"] if m["platform"] == "ios" else None
        title = title or m["payload"]["fcmV1Message"]["message"]["notification"]["title"]
        assert title == f"[PROOF] Hi {first}"
    proofs = ctx["ti"].xcoms["proofs"]
    assert sorted(proofs["to"]) == sorted(tokens) and proofs["sent"] == installs
    assert proofs["profiles"] == [str(tester)]
    assert scratch.db.execute("SELECT count(*) FROM campaign.delivery_logs").fetchone()[0] == 0

    # a test profile without the app: refused, nothing sent or written
    bare = scratch.db.execute(
        "SELECT id FROM campaign.profiles p WHERE NOT EXISTS (SELECT 1 FROM campaign.app_subscriptions a"
        " WHERE a.profile_id = p.id) ORDER BY id LIMIT 1"
    ).fetchone()[0]
    other = folder.parent / "other"
    with pytest.raises(CampaignError, match=rf"proof_to: profile\(s\) \['{bare}'\] have no enabled install"):
        operator(scratch, pop, other, proof_to=[bare]).execute(context("push", run_id="p2"))
    assert not other.exists() or not list(other.glob("*.json"))
    assert scratch.db.execute("SELECT count(*) FROM campaign.delivery_logs").fetchone()[0] == 0
