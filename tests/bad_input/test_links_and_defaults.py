"""Signed links given anything, a delivery that names no channel, a seed over a real ledger.

- unsubscribe links: the page that receives links calls ``verify_link`` / ``parse_and_verify``
  with whatever the request carried; any input gets a result ("not valid" and why), never an
  exception (an endpoint would answer 500).
- EmailDeliveryOperator: no delivery falls back to a channel nobody chose; without ``channel=``
  the DAG fails to parse unless ``[campaign] default_channel`` names one.
- airflow-campaign seed: refuses a database whose history it would delete, unless ``--force``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from airflow_campaign import cli
from airflow_campaign.delivery.unsubscribe import (
    MAX_LINK_CHARS,
    KeyRing,
    LinkCheck,
    LinkSigner,
    parse_and_verify,
    sign,
    unsubscribe_url,
    verify_link,
)
from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.schema import migrate
from airflow_campaign.seed import seed
from tests.bad_input.matrix import Row, bad_input, cases
from tests.conftest import count

KEY = b"0123456789abcdef0123456789abcdef"
RING = KeyRing("k2", {"k1": b"k1-old-key-of-thirty-two-bytes!!", "k2": KEY})
BASE = "https://example.com/unsubscribe"
URL = unsubscribe_url(BASE, KEY, "spring", "42", service="newsletter")
TOKEN = sign(KEY, "spring", "42", service="newsletter")
T0 = 1_700_000_000  # a fixed "now" in the past (Unix seconds, November 2023)
MIRROR = LinkSigner(KEY, "spring", BASE, mirror_base_url="https://example.com/m", mirror_ttl="7d", now=T0)


def with_token(token: str) -> str:
    return URL.replace(TOKEN, token)


# ---- unsubscribe links --------------------------------------------------------------------------

LINKS = [
    Row(
        "unsubscribe links",
        "a token with non-ASCII characters (t=é…)",
        "not valid (reason 'malformed'), no exception; was a TypeError from hmac.compare_digest",
        args={"url": with_token("é" * 22)},
    ),
    Row(
        "unsubscribe links",
        "url=None",
        "not valid ('malformed'), no exception; was a TypeError",
        args={"url": None},
    ),
    Row(
        "unsubscribe links",
        "an int, a list or a dict as the URL",
        "not valid ('malformed'), no exception",
        args={"url": [42, ["d=spring"], {"d": "spring"}]},
    ),
    Row(
        "unsubscribe links",
        "the URL as bytes that are not UTF-8",
        "not valid ('malformed'); bytes that are UTF-8 are read as the URL",
        args={"url": URL.encode() + b"\xff"},
    ),
    Row(
        "unsubscribe links",
        "invalid percent-encoding in a field (r=%ff)",
        "not valid ('malformed'): the field is not decoded with replacement characters",
        args={"url": URL.replace("r=42", "r=%ff")},
    ),
    Row(
        "unsubscribe links",
        "a lone surrogate in the URL string",
        "not valid ('malformed'), no UnicodeEncodeError",
        args={"url": URL.replace("r=42", "r=\ud800")},
    ),
    Row(
        "unsubscribe links",
        "a truncated token",
        "not valid ('malformed': a token is 22 base64url characters, with an optional '<key id>.')",
        args={"url": with_token(TOKEN[:-3])},
    ),
    Row(
        "unsubscribe links",
        "a token padded with '=='",
        "not valid ('malformed')",
        args={"url": with_token(TOKEN + "==")},
    ),
    Row(
        "unsubscribe links",
        "a token that is not base64url (+, / or a space)",
        "not valid ('malformed')",
        args={"url": [with_token("+" + TOKEN[1:]), with_token("/" + TOKEN[1:]), with_token(" " + TOKEN[1:])]},
    ),
    Row(
        "unsubscribe links",
        "a 1 MB URL",
        f"not valid ('malformed'): anything over {MAX_LINK_CHARS:,} characters is refused before it is parsed",
        args={"url": URL + "&x=" + "a" * 1_000_000},
    ),
    Row(
        "unsubscribe links",
        "a repeated field (two r=)",
        "not valid ('malformed')",
        args={"url": URL + "&r=43"},
    ),
    Row(
        "unsubscribe links",
        "a well-formed token that is not the fields' signature",
        "not valid ('bad_signature')",
        args={"url": with_token(("B" if TOKEN[0] == "A" else "A") + TOKEN[1:]), "reason": "bad_signature"},
    ),
    Row(
        "unsubscribe links",
        "a token naming a key id that is not in the key set",
        "not valid ('unknown_key')",
        args={"url": with_token("k9." + TOKEN), "key": RING, "reason": "unknown_key"},
    ),
    Row(
        "unsubscribe links",
        "a mirror link past its expiry (mirror_link_ttl)",
        "not valid ('expired'), with the link's fields, so the page can say it expired",
        args={
            "url": MIRROR.mirror_url("42"),
            "purpose": "mirror",
            "now": T0 + 7 * 86400,
            "reason": "expired",
        },
    ),
    Row(
        "unsubscribe links",
        "a mirror link whose expiry e= was changed",
        "not valid ('bad_signature'): the expiry is signed",
        args={
            "url": (MIRROR.mirror_url("42") or "").replace(f"e={T0 + 7 * 86400}", "e=99999999999"),
            "purpose": "mirror",
            "now": T0,
            "reason": "bad_signature",
        },
    ),
    Row(
        "unsubscribe links",
        "key=None, an int, an empty or a 5-byte key",
        "not valid ('no_key': the page's key configuration, not the link), no exception",
        args={"key": [None, 42, b"", b"short", [b"short"], {"k1": None}], "reason": "no_key"},
    ),
]


@cases(*LINKS)
def test_a_bad_link_is_not_valid_and_never_raises(row: Row) -> None:
    a = row.args
    urls = a.get("url", URL)
    keys = a.get("key", KEY)
    for url in urls if isinstance(urls, list) else [urls]:
        for key in keys if isinstance(keys, list) else [keys]:
            check = verify_link(url, key, a.get("purpose", "unsubscribe"), now=a.get("now", T0))
            assert isinstance(check, LinkCheck)
            assert not check.valid and check.reason == a.get("reason", "malformed"), (url, key, check)
            assert parse_and_verify(url, key, a.get("purpose", "unsubscribe")) is None
    if a.get("reason") == "expired":
        assert check.recipient_key == "42" and check.delivery == "spring"


@bad_input(
    "unsubscribe links",
    "the key as a str instead of bytes (os.environ[...] without .encode())",
    "accepted as its UTF-8 bytes, as load_key reads a Variable: the link verifies; was a TypeError",
)
def test_a_str_key_is_the_same_key() -> None:
    assert parse_and_verify(URL, KEY.decode()) == parse_and_verify(URL, KEY) is not None
    assert verify_link(URL, [KEY.decode(), "another-key-of-thirty-two-bytes!"]).valid


ALPHABET = "dtrse=&?%.:/_-" + "abcXYZ0129+ " + "é€\u0301\ud800\x00\n\U0001f600"


def _random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def _mutate(rng: random.Random, url: str) -> str:
    i = rng.randrange(len(url))
    kind = rng.randrange(6)
    if kind == 0:
        return url[:i]
    if kind == 1:
        return url[:i] + _random_text(rng, rng.randint(1, 4)) + url[i + 1 :]
    if kind == 2:
        return url[:i] + url[i + 1 :]
    if kind == 3:
        return url + "&" + rng.choice("drste") + "=" + _random_text(rng, rng.randint(0, 30))
    if kind == 4:
        return url.replace("t=", "t=" + rng.choice(["k1.", "k2.", "k9.", ".", "k1..", "é."]), 1)
    return url[:i] + "%" + rng.choice(["ff", "c3", "zz", "", "2"]) + url[i:]


def _random_input(rng: random.Random, links: list[str]) -> Any:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 80))
    if kind == 1:
        return _random_text(rng, rng.randint(0, 120))
    if kind == 2:
        return rng.choice([None, 0, -1, 2**70, 3.5, True, [], {}, object(), b"", ""])
    if kind == 3:
        return rng.choice(links).encode()
    return _mutate(rng, rng.choice(links))


def _random_key(rng: random.Random) -> Any:
    return rng.choice(
        [KEY, KEY.decode(), RING, [KEY], [RING.keys["k1"], KEY], {"k2": KEY}, None, 7, b"", "é" * 20]
        + [rng.randbytes(rng.randint(0, 40)), _random_text(rng, rng.randint(0, 40)), [None], {1: KEY}]
    )


@bad_input(
    "unsubscribe links",
    "3,000 random inputs (deterministic seed): bytes, unicode with surrogates, None, ints and mutated links, "
    "as the URL, with random keys and purposes",
    "always a LinkCheck, never an exception; a mutated link verifies only with its own fields",
)
def test_fuzz_verification_never_raises() -> None:
    rng = random.Random(20260501)
    sources = {
        URL: ("spring", "42", "newsletter"),
        unsubscribe_url(BASE, RING, "spring", "42", service="newsletter"): ("spring", "42", "newsletter"),
        unsubscribe_url(BASE + "?lang=fr", KEY, "ünïcode/&", "id=7&x"): ("ünïcode/&", "id=7&x", None),
        MIRROR.mirror_url("42") or "": ("spring", "42", None),
    }
    links = list(sources)
    outcomes: dict[str | None, int] = {}
    for _ in range(3000):
        url = _random_input(rng, links)
        key = _random_key(rng)
        purpose = rng.choice(["unsubscribe", "unsubscribe", "mirror", "other", None, 3])
        check = verify_link(url, key, purpose, now=rng.choice([T0, None, T0 + 10**8, "soon", float("nan")]))
        assert isinstance(check, LinkCheck)
        if check.expires_at is None:  # else parse_and_verify checks another clock than this now=
            assert parse_and_verify(url, key, purpose) == (check.fields() if check.valid else None)
        outcomes[check.reason] = outcomes.get(check.reason, 0) + 1
        if check.valid:
            assert (check.delivery, check.recipient_key, check.service) in sources.values()
    # the inputs reach every outcome, valid links included
    assert set(outcomes) == {None, "malformed", "no_key", "unknown_key", "bad_signature", "expired"}, outcomes


# ---- EmailDeliveryOperator: the channel ---------------------------------------------------------

EMAIL: dict[str, Any] = {
    "task_id": "newsletter",
    "population": [{"id": 1}],
    "subject": "Hi",
    "from_addr": "news@example.com",
    "text": "Hello",
    "marketing": False,
}


@pytest.fixture
def no_default_channel(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL", raising=False)
    return monkeypatch


@bad_input(
    "EmailDeliveryOperator",
    "no channel=, and no [campaign] default_channel",
    'refused at DAG parse: "channel: not given, and the Airflow configuration option [campaign] '
    "default_channel is not set; pass channel= one of ['outbox', 'smtp', 'ses'] …\"; was: the outbox, "
    "every message written to files",
)
def test_a_delivery_without_a_channel_fails_at_parse_time(no_default_channel: pytest.MonkeyPatch) -> None:
    with pytest.raises(CampaignError) as caught:
        EmailDeliveryOperator(**EMAIL)
    message = str(caught.value)
    assert message.startswith(
        "channel: not given, and the Airflow configuration option [campaign] default_channel"
    )
    assert "pass channel=" in message and "AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL" in message


@bad_input(
    "EmailDeliveryOperator",
    "no channel=, with [campaign] default_channel = smtp (AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL)",
    "the delivery uses smtp; an explicit channel= still wins",
)
def test_the_configured_default_channel_is_used(no_default_channel: pytest.MonkeyPatch) -> None:
    no_default_channel.setenv("AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL", "smtp")
    assert EmailDeliveryOperator(**EMAIL).channel == "smtp"
    assert EmailDeliveryOperator(**EMAIL, channel="outbox").channel == "outbox"


@bad_input(
    "EmailDeliveryOperator",
    "[campaign] default_channel = pigeon",
    "refused at DAG parse: \"[campaign] default_channel='pigeon' (the channel of a delivery that does not "
    "pass channel=) is not one of ['outbox', 'smtp', 'ses'] …\"",
)
def test_a_bad_default_channel_names_the_option(no_default_channel: pytest.MonkeyPatch) -> None:
    no_default_channel.setenv("AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL", "pigeon")
    with pytest.raises(CampaignError, match=r"^\[campaign\] default_channel='pigeon' \(the channel"):
        EmailDeliveryOperator(**EMAIL)
    EmailDeliveryOperator(**EMAIL, channel="ses")  # not read when channel= is given


MIRROR_OPTIONS = {"html": '<a href="{{ mirror_url }}">web</a>', "mirror_url": "https://example.com/m"}


@cases(
    Row(
        "EmailDeliveryOperator",
        "mirror_link_ttl='soon'",
        "refused at DAG parse: \"mirror_link_ttl='soon' is not a duration; write e.g. '7d', …\"",
        args={
            "options": {**MIRROR_OPTIONS, "mirror_link_ttl": "soon"},
            "match": "mirror_link_ttl='soon' is not",
        },
    ),
    Row(
        "EmailDeliveryOperator",
        "mirror_link_ttl=0",
        'refused at DAG parse: "mirror_link_ttl=0: give how long a link works, at least one second …"',
        args={
            "options": {**MIRROR_OPTIONS, "mirror_link_ttl": 0},
            "match": "mirror_link_ttl=0: give how long",
        },
    ),
    Row(
        "EmailDeliveryOperator",
        "mirror_link_ttl without mirror_url",
        "refused at DAG parse: \"mirror_link_ttl='30d': there is no mirror link to expire; give mirror_url= …\"",
        args={"options": {"mirror_link_ttl": "30d"}, "match": "there is no mirror link to expire"},
    ),
)
def test_a_bad_mirror_link_ttl_is_refused(row: Row) -> None:
    with pytest.raises(CampaignError, match=row.args["match"]):
        EmailDeliveryOperator(**{**EMAIL, "channel": "outbox", **row.args["options"]})


# ---- airflow-campaign seed ----------------------------------------------------------------------


@pytest.fixture
def with_history(fresh_database: Callable[[], str]) -> str:
    """A seeded database where a delivery has run: a delivery, an occurrence, 3 ledger rows, a
    subscription event of a task and an audience a task saved."""
    url = fresh_database()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate.upgrade(conn)
        seed(conn, 50)
        conn.execute(
            "WITH d AS (INSERT INTO campaign.deliveries (name, channel) VALUES ('spring', 'email') RETURNING id),"
            " o AS (INSERT INTO campaign.delivery_occurrences (delivery_id, run_key) SELECT id, '2026-05-01'"
            " FROM d RETURNING id, delivery_id)"
            " INSERT INTO campaign.delivery_logs (delivery_id, occurrence_id, run_key, recipient_key, channel,"
            " address, status) SELECT o.delivery_id, o.id, '2026-05-01', g::text, 'email', 'a' || g || '@x.org',"
            " 'sent' FROM o, generate_series(1, 3) g"
        )
        conn.execute(
            "INSERT INTO campaign.subscription_events (service_id, profile_id, operation, origin, dag_id, run_id)"
            " SELECT id, 1, 'unsubscribe', 'link', 'd', 'r' FROM campaign.services WHERE name = 'newsletter'"
        )
        conn.execute("INSERT INTO campaign.audiences (name, type) VALUES ('spring_openers', 'list')")
    return url


def _state(url: str) -> tuple[int, ...]:
    with psycopg.connect(url) as conn:
        return tuple(
            count(conn, f"SELECT count(*) FROM campaign.{t}")  # noqa: S608 - fixed names
            for t in ("profiles", "deliveries", "delivery_occurrences", "delivery_logs", "audiences")
        )


@bad_input(
    "airflow-campaign seed",
    "a database with a delivery ledger (and other history), without --force",
    'refused, exit 1, nothing deleted: "seed: this database holds history that seeding would delete: '
    "delivery log rows (the ledger: who was sent what): 3; delivery occurrences: 1; deliveries: 1; "
    'subscription events not made by the seed: 1; audiences not made by the seed: 1. … pass --force …"; '
    "was: the ledger silently emptied with the services",
)
def test_seed_refuses_a_database_with_history(with_history: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = _state(with_history)
    assert cli.main(["seed", "--profiles", "20", "--url", with_history]) == 1
    err = capsys.readouterr().err
    assert err.startswith("airflow-campaign: seed: this database holds history that seeding would delete: ")
    for what in (
        "delivery log rows (the ledger: who was sent what): 3;",
        "delivery occurrences: 1;",
        "deliveries: 1;",
        "subscription events not made by the seed: 1;",
        "audiences not made by the seed: 1.",
    ):
        assert what in err
    assert "--force" in err and "quarantine entries" not in err  # only the kinds that have rows
    assert _state(with_history) == before


@bad_input(
    "airflow-campaign seed",
    "the same database with --force",
    "seeded: the history is deleted, as asked",
)
def test_seed_with_force_replaces_the_history(with_history: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["seed", "--profiles", "20", "--url", with_history, "--force"]) == 0
    assert "profiles: 20" in capsys.readouterr().out
    assert _state(with_history) == (20, 0, 0, 0, 2)  # the seed's own two audiences
