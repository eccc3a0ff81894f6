"""Signed unsubscribe and mirror links: tokens verify, tampered ones do not; keys from Airflow."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_campaign.delivery.unsubscribe import (
    LinkSigner,
    load_key,
    mirror_url,
    parse_and_verify,
    sign,
    unsubscribe_url,
    verify,
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
