"""The Campaigns pages in a running Airflow 3 api-server (the plugin loaded from its entry point):
auth, DAG filtering, masking, the quarantine release, the public unsubscribe endpoint, and a real
headless Chromium that opens the pages and checks their numbers against the ledger."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from airflow_campaign.embedded import connection_fields
from tests.airflow_cluster import AirflowCluster

KEY = "ui-test-unsubscribe-signing-key-0123456789"
PUBLIC_BASE = "http://127.0.0.1/campaign/public/unsubscribe"
MIRROR_BASE = "http://127.0.0.1/campaign/public/mirror"
USERS = {
    "admin": ("admin", "admin-pw"),
    "viewer": ("viewer", "viewer-pw"),
    "outsider": ("viewer", "outsider-pw"),
}
DAGS = ("campaign_ui_news", "campaign_ui_private")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "images"
DAG_FILE = textwrap.dedent(
    """
    import datetime as dt
    from airflow.sdk import DAG
    from airflow.providers.standard.operators.empty import EmptyOperator

    for dag_id, schedule in zip({dags!r}, ("@daily", None)):
        with DAG(dag_id, schedule=schedule, start_date=dt.datetime(2026, 1, 1), catchup=False):
            EmptyOperator(task_id="newsletter")
    """
)


def _deliver(conn_id: str, dag_id: str, run_id: str, where: str, folder: Path, service: str | None) -> None:
    from airflow_campaign.operators.deliveries import EmailDeliveryOperator
    from airflow_campaign.operators.targeting import QueryOperator
    from tests.conftest import FakeTaskInstance

    def ctx(task_id: str) -> dict[str, Any]:
        ti = FakeTaskInstance(
            dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=-1, try_number=1, xcoms={}
        )
        return {"ti": ti, "run_id": run_id}

    pop = QueryOperator(
        task_id="targets", campaign_conn_id=conn_id, where=where, columns=["first_name"]
    ).execute(ctx("targets"))
    mirror = service is not None  # the newsletter has a mirror page, the other delivery none
    EmailDeliveryOperator(
        task_id="newsletter",
        population=pop,
        subject="Hello {{ first_name }}",
        from_addr="news@shop.example",
        html=('<p><a href="{{ mirror_url }}">View in your browser</a></p>' if mirror else "")
        + '<p>Hi {{ first_name }}</p><a href="{{ unsubscribe_url }}">unsubscribe</a>',
        unsubscribe_url=PUBLIC_BASE,
        mirror_url=MIRROR_BASE if mirror else None,
        service=service,
        channel="outbox",
        channel_options={"folder": str(folder)},
        campaign_conn_id=conn_id,
    ).execute(ctx("newsletter"))


@pytest.fixture(scope="module")
def campaign(
    database_url: str, scratch_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A copy of the seeded database with two runs of a newsletter of one DAG and one of another."""
    name = f"campaign_ui_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(scratch_template)
            )
        )
    url = make_conninfo(database_url, dbname=name)
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_CONN_CAMPAIGN_UI", json.dumps(connection_fields(url)))
    mp.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", KEY)
    outbox = tmp_path_factory.mktemp("outbox")
    _deliver("campaign_ui", DAGS[0], "manual__1", "id <= 150", outbox / "1", "newsletter")
    _deliver("campaign_ui", DAGS[0], "manual__2", "id <= 220", outbox / "2", "newsletter")
    _deliver("campaign_ui", DAGS[1], "manual__1", "id <= 80", outbox / "private", None)
    mp.undo()
    with psycopg.connect(url, autocommit=True) as db:
        yield SimpleNamespace(
            url=url,
            db=db,
            outbox=outbox,
            env={"AIRFLOW_CONN_CAMPAIGN_UI": json.dumps(connection_fields(url))},
        )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def airflow(database_url: str, campaign: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("ui")
    dags = home / "dags"
    dags.mkdir()
    (dags / "ui_dags.py").write_text(DAG_FILE.format(dags=DAGS))
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({user: pw for user, (_, pw) in USERS.items()}))
    env = {
        "AIRFLOW_CONN_CAMPAIGN_DEFAULT": json.dumps(connection_fields(campaign.url)),
        "AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY": KEY,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{role}" for u, (role, _) in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__AUTH_MANAGER": "tests.ui_auth_manager.ScopedAuthManager",
        "AIRFLOW__CAMPAIGN__PUBLIC_RATE_LIMIT": "12",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    with AirflowCluster(database_url, dags, env=env) as cluster:
        for dag_id in DAGS:
            cluster.wait_for_dag(dag_id)
        yield cluster


def token(airflow: Any, user: str) -> str:
    response = httpx.post(
        f"{airflow.api_url}/auth/token", json={"username": user, "password": USERS[user][1]}
    )
    assert response.status_code in (200, 201), response.text
    return str(response.json()["access_token"])


def get(airflow: Any, path: str, user: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token(airflow, user)}"} if user else {}
    return httpx.get(f"{airflow.api_url}/campaign{path}", headers=headers, follow_redirects=False, **kwargs)


def delivery_ids(db: psycopg.Connection) -> dict[str, int]:
    return {r[1]: r[0] for r in db.execute("SELECT id, dag_id FROM campaign.deliveries")}


PRIVATE_ROUTES = ["/deliveries", "/api/deliveries", "/audiences", "/services", "/quarantine", "/",
                  "/deliveries/{news}", "/api/deliveries/{news}", "/report?dag_id=campaign_ui_news&task_id=newsletter",
                  "/run?dag_id=campaign_ui_news&run_id=manual__1", "/services/1/events"]  # fmt: skip


def test_anonymous_requests_to_every_private_route_get_401(airflow, campaign):
    ids = delivery_ids(campaign.db)
    for route in PRIVATE_ROUTES:
        response = get(airflow, route.format(news=ids[DAGS[0]]))
        assert response.status_code == 401, (route, response.status_code, response.text[:200])
    response = httpx.post(
        f"{airflow.api_url}/campaign/quarantine/release", data={"channel": "email", "address": "x"}
    )
    assert response.status_code == 401
    # a forged bearer token is refused too
    forged = httpx.get(
        f"{airflow.api_url}/campaign/api/deliveries", headers={"Authorization": "Bearer abc.def.ghi"}
    )
    assert forged.status_code in (401, 403)


def test_lists_are_filtered_to_the_dags_the_user_may_read(airflow, campaign):
    ids = delivery_ids(campaign.db)
    listed = get(airflow, "/api/deliveries", "viewer").json()
    assert {d["dag_id"] for d in listed} == set(DAGS)
    # each with its DAG's schedule, read from Airflow's metadata
    assert {d["dag_id"]: d["schedule"] for d in listed} == {DAGS[0]: "0 0 * * *", DAGS[1]: "none (triggered)"}
    outsider = get(airflow, "/api/deliveries", "outsider").json()
    assert {d["dag_id"] for d in outsider} == {DAGS[0]}
    page = get(airflow, "/deliveries", "outsider").text
    assert "campaign_ui_news" in page and "campaign_ui_private" not in page
    for path in (f"/deliveries/{ids[DAGS[1]]}", f"/api/deliveries/{ids[DAGS[1]]}", "/report?dag_id=campaign_ui_private&task_id=newsletter",
                 "/run?dag_id=campaign_ui_private&run_id=manual__1"):  # fmt: skip
        assert get(airflow, path, "outsider").status_code == 403, path
    assert get(airflow, f"/api/deliveries/{ids[DAGS[1]]}", "viewer").status_code == 200


def test_the_report_counts_are_the_ledger_counts(airflow, campaign):
    ids = delivery_ids(campaign.db)
    body = get(airflow, f"/api/deliveries/{ids[DAGS[0]]}", "viewer").json()
    last = body["occurrences"][0]
    counted = dict(
        campaign.db.execute(
            "SELECT status, count(*) FROM campaign.delivery_logs WHERE occurrence_id = %s GROUP BY 1",
            (last["id"],),
        ).fetchall()
    )
    assert last["run_id"] == "manual__2" and last["funnel"]["targeted"] == sum(counted.values()) == 220
    assert last["funnel"]["sent"] == counted["sent"] and last["funnel"]["excluded"] == counted.get(
        "excluded", 0
    )
    reasons = dict(
        campaign.db.execute(
            "SELECT exclusion_reason, count(*) FROM campaign.delivery_logs WHERE occurrence_id = %s"
            " AND status = 'excluded' GROUP BY 1",
            (last["id"],),
        ).fetchall()
    )
    assert dict(last["funnel"]["reasons"]) == reasons
    assert len(body["periods"]) == 2
    # each occurrence is its own period here, oldest first; counts are JSON numbers
    assert body["periods"][-1]["sent"] == last["funnel"]["sent"] and isinstance(
        body["periods"][-1]["sent"], int
    )
    # the task instance's report lands on this delivery and this run's occurrence
    response = get(airflow, "/report?dag_id=campaign_ui_news&task_id=newsletter&run_id=manual__1", "viewer")
    assert response.status_code == 307
    assert (
        response.headers["location"] == f"deliveries/{ids[DAGS[0]]}?occurrence={body['occurrences'][1]['id']}"
    )


def test_addresses_are_masked_unless_the_user_may_edit(airflow, campaign):
    address = campaign.db.execute(
        "SELECT address FROM campaign.quarantine WHERE channel = 'email' ORDER BY address LIMIT 1"
    ).fetchone()[0]
    as_viewer = get(airflow, "/quarantine?channel=email", "viewer").text
    as_admin = get(airflow, "/quarantine?channel=email", "admin").text
    local, _, domain = address.partition("@")
    assert f"{local[:1]}***@{domain}" in as_viewer and address not in as_viewer and "Release" not in as_viewer
    assert address in as_admin and "Release" in as_admin


def test_a_release_needs_edit_access_and_is_recorded(airflow, campaign):
    address = campaign.db.execute(
        "SELECT address FROM campaign.quarantine WHERE channel = 'email' ORDER BY address DESC LIMIT 1"
    ).fetchone()[0]
    url = f"{airflow.api_url}/campaign/quarantine/release"
    form = {"channel": "email", "address": address}
    refused = httpx.post(url, data=form, headers={"Authorization": f"Bearer {token(airflow, 'viewer')}"})
    assert refused.status_code == 403
    assert (
        campaign.db.execute(
            "SELECT count(*) FROM campaign.quarantine WHERE address = %s", (address,)
        ).fetchone()[0]
        == 1
    )
    cross = httpx.post(
        url,
        data=form,
        headers={"Authorization": f"Bearer {token(airflow, 'admin')}", "Origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    done = httpx.post(url, data=form, headers={"Authorization": f"Bearer {token(airflow, 'admin')}"})
    assert done.status_code == 303
    assert (
        campaign.db.execute(
            "SELECT count(*) FROM campaign.quarantine WHERE address = %s", (address,)
        ).fetchone()[0]
        == 0
    )
    event = campaign.db.execute(
        "SELECT kind, actor, channel, applied FROM campaign.ui_events WHERE address = %s", (address,)
    ).fetchone()
    assert (
        event[0] == "quarantine_release"
        and event[1] == "admin"
        and event[2] == "email"
        and event[3].startswith("released (")
    )


def _link(delivery: str, recipient: str, service: str | None) -> str:
    from airflow_campaign.delivery.unsubscribe import LinkSigner

    return LinkSigner(KEY.encode(), delivery, PUBLIC_BASE, service=service).unsubscribe_url(recipient)


def _message(path: Path) -> Any:
    import email
    import email.policy

    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def _public(airflow: Any, url: str) -> str:
    """A link of a message, sent to this cluster's api-server."""
    return url.replace("http://127.0.0.1/campaign/", f"{airflow.api_url}/campaign/", 1)


def test_a_sent_email_s_mirror_page_and_unsubscribe_link(airflow, campaign, monkeypatch):
    """The links of a message the delivery operator wrote: its mirror page shows that message to
    its recipient, forged or foreign links get 4xx, and its List-Unsubscribe URL, POSTed as a
    mailbox provider does (RFC 8058), ends the subscription so the next preparation excludes it."""
    from airflow_campaign.delivery.unsubscribe import mirror_url, verify_link

    db = campaign.db
    messages = sorted((campaign.outbox / "2").glob("*.eml"), key=lambda p: int(p.stem))
    assert len(messages) > 100
    msg = _message(messages[-1])
    to = str(msg["To"])
    profile, first_name = db.execute(
        "SELECT id, first_name FROM campaign.profiles WHERE email = %s", (to,)
    ).fetchone()
    html = msg.get_body(("html",)).get_content()
    link = re.search(r'href="(http://127.0.0.1/campaign/public/mirror\?[^"]+)"', html).group(1)
    link = link.replace("&amp;", "&")

    page = httpx.get(_public(airflow, link))
    assert page.status_code == 200, page.text
    assert f"<p>Hi {first_name}</p>" in page.text and "View in your browser" in page.text
    assert (
        "sandbox" in page.headers["content-security-policy"] and "no-store" in page.headers["cache-control"]
    )
    # the page's unsubscribe link is this recipient's own, for the newsletter
    shown = re.search(r'href="(http://127.0.0.1/campaign/public/unsubscribe\?[^"]+)"', page.text).group(1)
    check = verify_link(shown.replace("&amp;", "&"), KEY)
    assert check.valid and check.recipient_key == str(profile) and check.service == "newsletter"

    # another message's page is that recipient's: the link names one message
    other = _message(messages[0])
    other_link = re.search(
        r'href="(http://127.0.0.1/campaign/public/mirror\?[^"]+)"', other.get_body(("html",)).get_content()
    )
    other_page = httpx.get(_public(airflow, other_link.group(1).replace("&amp;", "&")))
    other_name = db.execute(
        "SELECT first_name FROM campaign.profiles WHERE email = %s", (str(other["To"]),)
    ).fetchone()[0]
    assert other_page.status_code == 200 and f"<p>Hi {other_name}</p>" in other_page.text

    delivery = db.execute("SELECT name FROM campaign.deliveries WHERE dag_id = %s", (DAGS[0],)).fetchone()[0]
    private = db.execute("SELECT name FROM campaign.deliveries WHERE dag_id = %s", (DAGS[1],)).fetchone()[0]
    log_id = messages[-1].stem
    base = f"{airflow.api_url}/campaign/public/mirror"
    forged = link.replace(f"r={log_id}", f"r={int(log_id) - 1}")
    never_sent = db.execute(
        "SELECT l.id FROM campaign.delivery_logs l JOIN campaign.deliveries d ON d.id = l.delivery_id"
        " WHERE d.name = %s AND l.status = 'excluded' LIMIT 1",
        (delivery,),
    ).fetchone()[0]
    answers = {
        "forged": httpx.get(_public(airflow, forged)).status_code,
        "truncated": httpx.get(_public(airflow, link.rsplit("&t=", 1)[0])).status_code,
        "unsubscribe purpose": httpx.get(
            _public(airflow, shown.replace("&amp;", "&").replace("/unsubscribe", "/mirror"))
        ).status_code,
        "expired": httpx.get(mirror_url(base, KEY, delivery, log_id, ttl=1, now=1_000_000)).status_code,
        "no such row": httpx.get(mirror_url(base, KEY, delivery, "987654321")).status_code,
        "not sent": httpx.get(mirror_url(base, KEY, delivery, str(never_sent))).status_code,
        "another delivery": httpx.get(mirror_url(base, KEY, private, log_id)).status_code,
    }
    assert answers == {
        "forged": 400,
        "truncated": 400,
        "unsubscribe purpose": 400,
        "expired": 410,
        "no such row": 410,
        "not sent": 410,
        "another delivery": 410,
    }
    # once housekeeping drops the occurrence's population, the message cannot be shown: 410
    first = sorted((campaign.outbox / "1").glob("*.eml"), key=lambda p: int(p.stem))[0]
    first_link = (
        re.search(
            r'href="(http://127.0.0.1/campaign/public/mirror\?[^"]+)"',
            _message(first).get_body(("html",)).get_content(),
        )
        .group(1)
        .replace("&amp;", "&")
    )
    assert httpx.get(_public(airflow, first_link)).status_code == 200
    targets = db.execute(
        "SELECT o.targets_table FROM campaign.delivery_logs l JOIN campaign.delivery_occurrences o"
        " ON o.id = l.occurrence_id WHERE l.id = %s",
        (int(first.stem),),
    ).fetchone()[0]
    db.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(*targets.split(".", 1))))
    gone = httpx.get(_public(airflow, first_link))
    assert (
        gone.status_code == 410 and gone.text == httpx.get(mirror_url(base, KEY, delivery, "987654321")).text
    )

    # the message's List-Unsubscribe URL, POSTed one-click: the subscription ends
    unsubscribe = re.search(r"<(http://[^>]+)>", str(msg["List-Unsubscribe"])).group(1)
    assert msg["List-Unsubscribe-Post"] is None  # RFC 8058's one-click header needs an https link

    def subscribed() -> bool:
        return db.execute(
            "SELECT EXISTS (SELECT 1 FROM campaign.subscriptions s JOIN campaign.services v ON v.id = s.service_id"
            " WHERE v.name = 'newsletter' AND s.profile_id = %s)",
            (profile,),
        ).fetchone()[0]

    assert subscribed()
    posted = httpx.post(
        _public(airflow, unsubscribe),
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert posted.status_code == 200 and posted.content == b"" and not subscribed()
    # the next preparation excludes the profile, and sends to the others as before
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", KEY)
    for name, value in campaign.env.items():
        monkeypatch.setenv(name, value)
    _deliver("campaign_ui", DAGS[0], "manual__3", "id <= 220", campaign.outbox / "3", "newsletter")
    ledger = dict(
        db.execute(
            "SELECT l.recipient_key, coalesce(l.exclusion_reason, l.status) FROM campaign.delivery_logs l"
            " JOIN campaign.delivery_occurrences o ON o.id = l.occurrence_id"
            " JOIN campaign.deliveries d ON d.id = l.delivery_id WHERE d.name = %s AND o.run_id = %s",
            (delivery, "manual__3"),
        ).fetchall()
    )
    assert ledger[str(profile)] == "not subscribed"
    sent_to = {str(_message(p)["To"]) for p in (campaign.outbox / "3").glob("*.eml")}
    assert to not in sent_to and len(sent_to) == sum(1 for v in ledger.values() if v == "sent")


def test_the_public_unsubscribe_endpoint(airflow, campaign):
    db = campaign.db
    delivery = db.execute("SELECT name FROM campaign.deliveries WHERE dag_id = %s", (DAGS[0],)).fetchone()[0]
    subscribed = db.execute(
        "SELECT s.profile_id FROM campaign.subscriptions s JOIN campaign.services v ON v.id = s.service_id"
        " WHERE v.name = 'newsletter' ORDER BY 1 LIMIT 1"
    ).fetchone()[0]
    link = _link(delivery, str(subscribed), "newsletter")
    query = link.split("?", 1)[1]
    events_before = db.execute(
        "SELECT count(*) FROM campaign.ui_events WHERE kind = 'unsubscribe'"
    ).fetchone()[0]
    endpoint = f"{airflow.api_url}/campaign/public/unsubscribe?{query}"

    def subscriptions() -> int:
        return db.execute(
            "SELECT count(*) FROM campaign.subscriptions s JOIN campaign.services v ON v.id = s.service_id"
            " WHERE v.name = 'newsletter' AND s.profile_id = %s",
            (subscribed,),
        ).fetchone()[0]

    # GET: a confirm page whose form posts to the same URL; nothing changes
    page = httpx.get(endpoint)
    assert page.status_code == 200 and '<form method="post">' in page.text and subscriptions() == 1
    label = db.execute(
        "SELECT coalesce(label, name) FROM campaign.services WHERE name = 'newsletter'"
    ).fetchone()[0]
    assert f"Stop receiving messages from {label}?" in page.text  # the service as people know it
    # forged, malformed: 400 and nothing changes
    forged = endpoint.replace(f"r={subscribed}", f"r={subscribed + 1}")
    for bad in (
        forged,
        endpoint.rsplit("&t=", 1)[0],
        f"{airflow.api_url}/campaign/public/unsubscribe?d=x&r=1&t=AAAAAAAAAAAAAAAAAAAAAA",
    ):
        for method in ("GET", "POST"):
            response = httpx.request(method, bad, content=b"List-Unsubscribe=One-Click")
            assert response.status_code == 400, (bad, method)
    assert (
        subscriptions() == 1
        and db.execute("SELECT count(*) FROM campaign.ui_events WHERE kind = 'unsubscribe'").fetchone()[0]
        == events_before
    )
    # RFC 8058 one-click POST: unsubscribed, no page, the event recorded with its origin
    one_click = httpx.post(
        endpoint,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200 and one_click.content == b""
    assert subscriptions() == 0
    events = db.execute(
        "SELECT origin, applied, delivery, service FROM campaign.ui_events WHERE kind = 'unsubscribe' AND recipient_key = %s",
        (str(subscribed),),
    ).fetchall()
    assert events == [("one-click", "unsubscribed", delivery, "newsletter")]
    assert (
        db.execute(
            "SELECT origin FROM campaign.subscription_events WHERE profile_id = %s AND operation = 'unsubscribe'",
            (subscribed,),
        ).fetchone()[0]
        == "unsubscribe link (one-click)"
    )
    # the services page: the newsletter's subscribers line ends at today's count, one less now
    now = db.execute(
        "SELECT count(*) FROM campaign.subscriptions s JOIN campaign.services v ON v.id = s.service_id"
        " WHERE v.name = 'newsletter'"
    ).fetchone()[0]
    label = db.execute(
        "SELECT coalesce(label, name) FROM campaign.services WHERE name = 'newsletter'"
    ).fetchone()[0]
    services = get(airflow, "/services", "viewer").text
    line = re.search(rf"<td>{re.escape(label)}</td>.*?data-values=\"(\[[^\]]*\])\"", services, re.S)
    assert line and json.loads(line.group(1))[-1] == now
    # a valid link for nobody answers exactly as one for somebody: the endpoint tells nothing
    nobody = _link(delivery, "987654321", "newsletter").split("?", 1)[1]
    again = httpx.post(
        f"{airflow.api_url}/campaign/public/unsubscribe?{nobody}", content=b"List-Unsubscribe=One-Click"
    )
    assert again.status_code == 200 and again.content == b""
    # the rate limit (12 a minute in this cluster): past it, 429
    codes = [httpx.get(endpoint).status_code for _ in range(14)]
    assert codes[-1] == 429 and 200 in codes


def test_a_real_browser_sees_the_ledger_numbers(airflow, campaign):
    chromium = shutil.which("chromium") or shutil.which("chromium-headless-shell")
    assert chromium, "install Debian's chromium (apt-get install chromium): the browser tests drive it"
    from playwright.sync_api import sync_playwright

    ids = delivery_ids(campaign.db)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    jwt = token(airflow, "viewer")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.add_cookies([{"name": "_token", "value": jwt, "url": airflow.api_url}])
        page = context.new_page()
        page.goto(f"{airflow.api_url}/campaign/deliveries")
        row = page.locator(f"tr[data-delivery='{DAGS[0]}.newsletter']")
        shown = {
            k: int(row.locator(f"td[data-count='{k}']").inner_text().replace(",", ""))
            for k in ("targeted", "sent", "excluded")
        }
        last = campaign.db.execute(
            "SELECT max(occurrence_id) FROM campaign.delivery_logs WHERE delivery_id = %s", (ids[DAGS[0]],)
        ).fetchone()[0]
        counted = dict(campaign.db.execute(
            "SELECT status, count(*) FROM campaign.delivery_logs WHERE occurrence_id = %s GROUP BY 1", (last,)
        ).fetchall())  # fmt: skip
        assert shown == {
            "targeted": sum(counted.values()),
            "sent": counted["sent"],
            "excluded": counted.get("excluded", 0),
        }
        page.wait_for_selector(".spark canvas")
        page.screenshot(path=str(SCREENSHOTS / "ui-deliveries.png"), full_page=True)

        page.goto(f"{airflow.api_url}/campaign/deliveries/{ids[DAGS[0]]}")
        page.wait_for_selector(".chart canvas")
        assert (
            int(page.locator("#funnel td[data-count='sent']").inner_text().replace(",", ""))
            == counted["sent"]
        )
        page.screenshot(path=str(SCREENSHOTS / "ui-delivery-report.png"), full_page=True)
        for name in ("audiences", "services", "quarantine"):
            page.goto(f"{airflow.api_url}/campaign/{name}")
            assert page.locator("h1").count() == 1
            page.screenshot(path=str(SCREENSHOTS / f"ui-{name}.png"), full_page=True)
        # the Airflow UI's own navigation carries the Campaigns entry (the plugin's external view)
        page.goto(f"{airflow.api_url}/plugin/campaigns")
        page.wait_for_selector("iframe", timeout=30000)
        frame = page.frame_locator("iframe").first
        frame.locator("h1").wait_for(timeout=30000)
        assert re.sub(r"\s+", " ", frame.locator("h1").inner_text()) == "Deliveries"
        page.screenshot(path=str(SCREENSHOTS / "ui-in-airflow.png"))

        # a DAG run's "Campaign" tab and a task instance's "Delivery report" tab, on a run Airflow knows
        admin = {"Authorization": f"Bearer {token(airflow, 'admin')}"}
        made = httpx.post(
            f"{airflow.api_url}/api/v2/dags/{DAGS[0]}/dagRuns",
            json={"dag_run_id": "manual__2", "logical_date": None},
            headers=admin,
        )
        assert made.status_code in (200, 409), made.text
        run = campaign.db.execute(
            "SELECT o.id FROM campaign.delivery_occurrences o WHERE o.delivery_id = %s AND o.run_id = 'manual__2'",
            (ids[DAGS[0]],),
        ).fetchone()[0]
        run_sent = campaign.db.execute(
            "SELECT count(*) FROM campaign.delivery_logs WHERE occurrence_id = %s AND status = 'sent'", (run,)
        ).fetchone()[0]
        page.goto(f"{airflow.api_url}/dags/{DAGS[0]}/runs/manual__2/plugin/campaign-run")
        frame = page.frame_locator("iframe").first
        frame.locator("h1").wait_for(timeout=30000)
        assert f"{DAGS[0]}.newsletter" in frame.locator("table").first.inner_text()
        page.screenshot(path=str(SCREENSHOTS / "ui-run-tab.png"))
        page.goto(f"{airflow.api_url}/dags/{DAGS[0]}/runs/manual__2/tasks/newsletter/plugin/delivery-report")
        frame = page.frame_locator("iframe").first
        frame.locator("#funnel td[data-count='sent']").wait_for(timeout=30000)
        assert int(frame.locator("#funnel td[data-count='sent']").inner_text().replace(",", "")) == run_sent
        page.screenshot(path=str(SCREENSHOTS / "ui-task-tab.png"))
        # its "DAG run" link opens the run in the Airflow UI itself, not a UI inside the frame
        frame.get_by_role("link", name="DAG run").click()
        page.wait_for_url(f"**/dags/{DAGS[0]}/runs/manual__2", timeout=30000)
        page.locator("iframe").wait_for(
            state="detached", timeout=30000
        )  # the run's own page, framed by nothing
        page.get_by_text("Task Instances", exact=True).first.wait_for(timeout=30000)
        assert len(page.frames) == 1
        browser.close()
