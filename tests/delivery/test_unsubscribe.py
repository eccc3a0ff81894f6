"""Signed unsubscribe and mirror links: tokens verify, tampered ones do not; keys from Airflow."""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_campaign.delivery.unsubscribe import (
    KeyRing,
    LinkSigner,
    load_key,
    load_keys,
    mirror_url,
    parse_and_verify,
    sign,
    unsubscribe_url,
    verify,
    verify_link,
)
from airflow_campaign.errors import CampaignError

KEY = b"0123456789abcdef0123456789abcdef"
OTHER = b"fedcba9876543210fedcba9876543210"


def test_token_is_128_bits_url_safe_and_deterministic() -> None:
    token = sign(KEY, "spring", "42")
    assert len(token) == 22 and token == sign(KEY, "spring", "42")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert verify(KEY, token, "spring", "42")


@pytest.mark.parametrize(
    ("key", "delivery", "recipient", "purpose", "service"),
    [
        (OTHER, "spring", "42", "unsubscribe", None),
        (KEY, "spring2", "42", "unsubscribe", None),
        (KEY, "spring", "43", "unsubscribe", None),
        (KEY, "spring", "42", "mirror", None),
        (KEY, "spring", "42", "unsubscribe", "newsletter"),
        (KEY, "sprin", "g42", "unsubscribe", None),  # fields are length-prefixed: no shifting across them
    ],
)
def test_token_does_not_verify_for_other_fields(
    key: bytes, delivery: str, recipient: str, purpose: str, service: str | None
) -> None:
    token = sign(KEY, "spring", "42")
    assert not verify(key, token, delivery, recipient, purpose, service)  # type: ignore[arg-type]


def test_tampered_token_fails_and_rotated_keys_verify() -> None:
    token = sign(KEY, "spring", "42")
    tampered = ("B" if token[0] == "A" else "A") + token[1:]
    assert not verify(KEY, tampered, "spring", "42")
    assert not verify(KEY, token[:-1], "spring", "42")
    assert verify([OTHER, KEY], token, "spring", "42")  # an old key still verifies its links
    assert not verify([OTHER], token, "spring", "42")


def test_unsubscribe_url_encodes_and_parses_back() -> None:
    url = unsubscribe_url("https://example.com/u", KEY, "spring sale/é&x", "id=7&x", service="news letter")
    query = parse_qs(urlsplit(url).query)
    assert query == {
        "d": ["spring sale/é&x"],
        "s": ["news letter"],
        "r": ["id=7&x"],
        "t": [sign(KEY, "spring sale/é&x", "id=7&x", service="news letter")],
    }
    assert url.isascii() and " " not in url
    assert parse_and_verify(url, KEY) == {
        "delivery": "spring sale/é&x",
        "recipient_key": "id=7&x",
        "service": "news letter",
        "purpose": "unsubscribe",
    }
    # a base url that already has a query string
    with_query = unsubscribe_url("https://example.com/u?lang=fr", KEY, "spring", "42")
    assert with_query.startswith("https://example.com/u?lang=fr&d=spring&r=42&t=")
    assert parse_and_verify(with_query, KEY) is not None
    assert parse_and_verify(urlsplit(with_query).query, KEY) is not None  # the query string alone


@pytest.mark.parametrize(
    "change",
    [
        lambda u: u.replace("r=42", "r=43"),
        lambda u: u.replace("d=spring", "d=summer"),
        lambda u: u.replace("s=newsletter", "s=offers"),
        lambda u: u.replace("&s=newsletter", ""),
        lambda u: u + "&r=43",
        lambda u: u.split("&t=")[0],
        lambda u: u[:-2],
    ],
)
def test_changed_links_do_not_verify(change: object) -> None:
    url = unsubscribe_url("https://example.com/u", KEY, "spring", "42", service="newsletter")
    assert parse_and_verify(url, KEY) is not None
    assert parse_and_verify(change(url), KEY) is None  # type: ignore[operator]
    assert parse_and_verify(url, OTHER) is None


def test_mirror_links_are_signed_for_their_purpose() -> None:
    url = mirror_url("https://example.com/m", KEY, "spring", "42")
    assert parse_and_verify(url, KEY, purpose="mirror") == {
        "delivery": "spring",
        "recipient_key": "42",
        "service": None,
        "purpose": "mirror",
    }
    assert parse_and_verify(url, KEY) is None  # not an unsubscribe link
    signer = LinkSigner(KEY, "spring", "https://example.com/u", mirror_base_url="https://example.com/m")
    assert signer.mirror_url("42") == url
    assert signer.unsubscribe_url("42") == unsubscribe_url("https://example.com/u", KEY, "spring", "42")
    assert LinkSigner(KEY, "spring", "https://example.com/u").mirror_url("42") is None


@pytest.mark.parametrize(
    "base", ["example.com/u", "ftp://example.com/u", "https:///u", "https://example.com/u#x", ""]
)
def test_base_url_must_be_http(base: str) -> None:
    with pytest.raises(CampaignError, match="not an http\\(s\\) URL"):
        LinkSigner(KEY, "spring", base)


# ---- the key, from Airflow ----------------------------------------------------------------------


def test_key_from_an_airflow_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_TEST_UNSUBSCRIBE_KEY", "a-long-random-secret-of-32-bytes!")
    assert load_key("variable:campaign_test_unsubscribe_key") == b"a-long-random-secret-of-32-bytes!"


def test_key_from_an_airflow_connection_password(monkeypatch: pytest.MonkeyPatch) -> None:
    connection = {"conn_type": "generic", "password": "another-long-random-secret-123456"}
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_TEST_SIGNING", json.dumps(connection))
    assert load_key("connection:campaign_test_signing") == b"another-long-random-secret-123456"


def test_missing_or_weak_keys_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CampaignError) as caught:
        load_key("variable:campaign_test_no_such_key")
    assert "no Airflow Variable 'campaign_test_no_such_key'" in str(caught.value)
    assert "airflow variables set campaign_test_no_such_key" in str(caught.value)
    with pytest.raises(
        CampaignError, match="no Airflow connection 'campaign_test_nothing'.*airflow connections add"
    ):
        load_key("connection:campaign_test_nothing")
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_TEST_SHORT_KEY", "short")
    with pytest.raises(
        CampaignError, match="the key is 5 bytes long; use a random secret of at least 16 bytes"
    ):
        load_key("variable:campaign_test_short_key")
    with pytest.raises(CampaignError, match="name the key as 'variable:<name>'"):
        load_key("campaign_unsubscribe_key")


# ---- key ids and rotation -----------------------------------------------------------------------

K1 = "k1-old-key-of-thirty-two-bytes!!"
K2 = "k2-new-key-of-thirty-two-bytes!!"
KEY_SET = json.dumps({"current": "k2", "keys": {"k1": K1, "k2": K2}})


def test_one_key_signs_as_before_and_a_key_set_signs_with_its_current_key_id() -> None:
    single = KeyRing.parse(KEY.decode())
    assert single.current == "" and sign(single, "spring", "42") == sign(KEY, "spring", "42")  # no key id
    ring = KeyRing.parse(KEY_SET)
    assert ring.current == "k2" and ring.signing_key == K2.encode()
    token = sign(ring, "spring", "42")
    assert token.startswith("k2.") and len(token) == 3 + 22
    assert verify(ring, token, "spring", "42")
    assert verify({"k2": K2}, token, "spring", "42")  # a mapping of key id to key verifies too
    assert not verify({"k1": K1}, token, "spring", "42")
    assert "thirty-two" not in repr(ring) and repr(ring) == "KeyRing(current='k2', key_ids=['k1', 'k2'])"


def test_rotation_keeps_old_links_working_until_their_key_is_removed() -> None:
    before = unsubscribe_url("https://example.com/u", K1, "spring", "42")  # one key, no id: links sent before
    after_k1 = unsubscribe_url("https://example.com/u", KeyRing("k1", {"k1": K1.encode()}), "spring", "42")
    ring = KeyRing.parse(KEY_SET)
    now = unsubscribe_url("https://example.com/u", ring, "spring", "42")
    for url in (before, after_k1, now):
        check = verify_link(url, ring)
        assert check.valid and check.reason is None and check.recipient_key == "42"
    assert verify_link(before, ring).key_id == "" and verify_link(now, ring).key_id == "k2"
    retired = KeyRing("k2", {"k2": K2.encode()})  # k1 removed from the set
    assert verify_link(now, retired).valid
    assert verify_link(after_k1, retired).reason == "unknown_key"
    assert verify_link(before, retired).reason == "bad_signature"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "starts with '{' but is not JSON"),
        ('{"keys": {"k1": "' + K1 + '"}}', "exactly the fields 'current' and 'keys', not ['keys']"),
        ('{"current": "k1", "keys": {}}', "'keys' must be an object of key id to key"),
        ('{"current": "k3", "keys": {"k1": "' + K1 + '"}}', "current='k3' is not one of the key ids ['k1']"),
        ('{"current": "k1", "keys": {"k1": "short-secret"}}', "key 'k1' is 12 bytes long"),
        ('{"current": "k.1", "keys": {"k.1": "' + K1 + '"}}', "key id 'k.1' is not 1 to 32 letters"),
        ("short", "the key is 5 bytes long"),
    ],
)
def test_a_bad_key_set_names_the_fix_and_never_shows_a_key(value: str, message: str) -> None:
    with pytest.raises(CampaignError) as caught:
        KeyRing.parse(value, source="unsubscribe_key='variable:x'")
    assert message in str(caught.value) and str(caught.value).startswith("unsubscribe_key='variable:x': ")
    assert K1 not in str(caught.value) and "short-secret" not in str(caught.value)


def test_a_key_set_from_an_airflow_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_TEST_KEY_SET", KEY_SET)
    ring = load_keys("variable:campaign_test_key_set")
    assert ring == KeyRing("k2", {"k1": K1.encode(), "k2": K2.encode()})
    assert load_key("variable:campaign_test_key_set") == K2.encode()  # the key that signs


# ---- mirror links that expire -------------------------------------------------------------------

T0 = 1_700_000_000  # a fixed "now" in the past (Unix seconds, November 2023)


def test_a_mirror_link_with_a_ttl_expires_and_its_expiry_is_signed() -> None:
    signer = LinkSigner(
        KEY,
        "spring",
        "https://example.com/u",
        mirror_base_url="https://example.com/m",
        mirror_ttl="1d",
        now=T0,
    )
    url = signer.mirror_url("42")
    assert url is not None and f"&e={T0 + 86400}&t=" in url
    assert url == mirror_url("https://example.com/m", KEY, "spring", "42", ttl=86400, now=T0)
    assert "e=" not in signer.unsubscribe_url("42")  # unsubscribe links never expire
    fresh = verify_link(url, KEY, "mirror", now=T0 + 86399)
    assert fresh.valid and fresh.expires_at == T0 + 86400
    expired = verify_link(url, KEY, "mirror", now=dt.datetime.fromtimestamp(T0 + 86400, dt.timezone.utc))
    assert not expired.valid and expired.reason == "expired" and expired.recipient_key == "42"
    later = url.replace(f"e={T0 + 86400}", f"e={T0 + 10 * 86400}")  # a reader pushing the expiry back
    assert verify_link(later, KEY, "mirror", now=T0).reason == "bad_signature"
    assert verify_link(url.replace(f"&e={T0 + 86400}", ""), KEY, "mirror", now=T0).reason == "bad_signature"
    assert parse_and_verify(url, KEY, purpose="mirror") is None  # parse_and_verify checks the clock: expired


# ---- keys are masked in the logs ----------------------------------------------------------------


def task_log(*values: object) -> str:
    """What Airflow's task-log processors (its secrets masker among them) write for these values."""
    import io

    import structlog
    from airflow.sdk.log import logging_processors

    out = io.BytesIO()
    log = structlog.wrap_logger(
        structlog.BytesLogger(out), processors=list(logging_processors(json_output=True))
    )
    for value in values:
        log.info("signing with %s", value)
    return out.getvalue().decode()


def test_loaded_keys_are_masked_in_the_task_log(monkeypatch: pytest.MonkeyPatch) -> None:
    import secrets

    single, old, new = (secrets.token_urlsafe(32) for _ in range(3))  # never masked before this test
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_TEST_LOGGED_KEY", single)
    monkeypatch.setenv(
        "AIRFLOW_VAR_CAMPAIGN_TEST_LOGGED_SET", json.dumps({"current": "k2", "keys": {"k1": old, "k2": new}})
    )
    assert single in task_log(single)  # the masker does not know it yet
    load_key("variable:campaign_test_logged_key")
    load_keys("variable:campaign_test_logged_set")
    logged = task_log(single, old, new, single.encode())
    assert "***" in logged
    for key in (single, old, new):
        assert key not in logged


def test_a_delivery_signs_with_the_current_key_and_its_mirror_links_expire(
    scratch, context, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    import email
    import email.policy
    import re
    import time

    from airflow_campaign.operators.deliveries import EmailDeliveryOperator
    from airflow_campaign.operators.targeting import QueryOperator

    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_TEST_DELIVERY_KEYS", KEY_SET)
    pop = QueryOperator(
        task_id="targets", campaign_conn_id=scratch.conn_id, where="id <= 40", columns=["first_name"]
    ).execute(context("targets"))
    started = int(time.time())
    EmailDeliveryOperator(
        task_id="newsletter",
        population=pop,
        subject="Hello {{ first_name }}",
        html='<p>Hi</p><a href="{{ mirror_url }}">web</a> <a href="{{ unsubscribe_url }}">Unsubscribe</a>',
        from_addr="news@example.com",
        unsubscribe_url="https://example.com/unsubscribe",
        unsubscribe_key="variable:campaign_test_delivery_keys",
        mirror_url="https://example.com/mirror",
        mirror_link_ttl="30d",
        channel="outbox",
        channel_options={"folder": str(tmp_path)},
        campaign_conn_id=scratch.conn_id,
    ).execute(context("newsletter"))
    files = sorted(tmp_path.glob("*.eml"))
    assert files
    ring = KeyRing.parse(KEY_SET)
    for path in files:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        unsubscribe = re.search(r"<(https://[^>]+)>", msg["List-Unsubscribe"]).group(1)
        assert "&t=k2." in unsubscribe and verify_link(unsubscribe, ring).valid
        html = msg.get_body(("html",)).get_content()
        mirror = re.search(r'href="(https://example.com/mirror[^"]+)"', html).group(1).replace("&amp;", "&")
        check = verify_link(mirror, ring, "mirror")
        assert check.valid and check.key_id == "k2"
        assert started + 30 * 86400 <= check.expires_at <= int(time.time()) + 30 * 86400
        assert verify_link(mirror, ring, "mirror", now=check.expires_at).reason == "expired"
