"""Fast MIME: messages parsed back by the standard library carry what was put in, as EmailMessage would."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from email.utils import formataddr, parsedate_to_datetime

import pytest

from airflow_campaign.delivery.mime import (
    MimeSkeleton,
    check_headers,
    encode_header,
    format_address,
    message_id,
)
from airflow_campaign.delivery.render import EmailContent, compile_email
from airflow_campaign.delivery.unsubscribe import LinkSigner, parse_and_verify
from airflow_campaign.errors import CampaignError

UNSUBSCRIBE = "https://example.com/unsubscribe?d=spring&r=42&t=AbCdEfGhIjKlMnOpQrStUv"
DELIVERY = "spring_sale/2026-05-01T00:00:00+00:00"

TEXTS = {
    "ascii": "Hello Ann,\n\nYour points: 120.\nSee you soon.\n",
    "accents": "Bonjour Zoë, voilà votre réduction de 10 € sur tout le magasin.\nÀ bientôt !",
    "emoji": "Party time 🎉🎈 for you 👩‍👩‍👧 — enjoy!",
    "cjk": "春のセールが始まりました。ポイントは１２０です。\n中文测试：你好，世界。",
    "long lines": ("word " * 400).strip() + "\n" + "x" * 2000 + "\nend",
    "mbox and smtp traps": "From here on, everything changes.\n.\n..\n.hidden\nFrom: not a header\n=3D not qp\n",
    "trailing space": "trailing space   \nand tab\t\n  leading space",
    "crlf": "windows\r\nline\rends\n",
}


def skeleton(**options: object) -> MimeSkeleton:
    defaults: dict[str, object] = {
        "from_addr": "news@example.com",
        "from_name": "Example News",
        "reply_to": "help@example.com",
        "static_headers": {"X-Campaign": "spring"},
        "delivery_header_value": DELIVERY,
    }
    defaults.update(options)
    return MimeSkeleton(**defaults)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None
    return part.get_content().replace("\r\n", "\n")


def assert_wire_format(raw: bytes) -> None:
    """CRLF only, header lines within 998, encoded body lines within 76, 7-bit bodies."""
    assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    assert all(len(line) <= 78 for line in head.split(b"\r\n") if not line.startswith(b"List-Unsubscribe:"))
    assert all(len(line) <= 76 for line in rest.split(b"\r\n")), max(rest.split(b"\r\n"), key=len)
    assert rest.isascii()
    assert raw.endswith(b"\r\n")
    assert not re.search(rb"\r\nFrom ", rest)


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_parsed_back_headers_and_bodies_are_what_was_put_in(name: str) -> None:
    text = TEXTS[name]
    html = "<p>" + text.replace("\n", "<br>\n") + "</p>"
    subject = f"{name}: {text.splitlines()[0][:120]}"
    raw = skeleton().build("ann@example.com", subject, text, html, "<42.spring@example.com>", UNSUBSCRIBE)
    assert_wire_format(raw)
    message = parse(raw)
    assert message.defects == [] and all(part.defects == [] for part in message.walk())
    assert message["Subject"] == " ".join(subject.split())
    assert message["From"].addresses[0].display_name == "Example News"
    assert message["From"].addresses[0].addr_spec == "news@example.com"
    assert message["To"] == "ann@example.com"
    assert message["Reply-To"] == "help@example.com"
    assert message["Message-ID"] == "<42.spring@example.com>"
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Campaign-Delivery"] == DELIVERY
    assert message["X-Campaign"] == "spring"
    assert message["MIME-Version"] == "1.0"
    assert abs(parsedate_to_datetime(message["Date"]).timestamp() - __import__("time").time()) < 5
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    normalized = text.replace("\r\n", "\n").replace("\r", "\n")
    assert body(message, "plain") == normalized
    assert body(message, "html") == html.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_same_structure_and_content_as_email_message(name: str) -> None:
    text = TEXTS[name].replace("\r\n", "\n").replace("\r", "\n")
    html = f"<html><body><p>{text}</p></body></html>"
    subject = "Zoë 🎉 " + name
    ours = parse(
        skeleton(from_name="Équipe Zoë 🎉").build(
            "ann@example.com", subject, text, html, "<1@example.com>", UNSUBSCRIBE
        )
    )
    reference = EmailMessage()
    reference["From"] = formataddr(("Équipe Zoë 🎉", "news@example.com"))
    reference["To"] = "ann@example.com"
    reference["Subject"] = subject
    reference["Message-ID"] = "<1@example.com>"
    reference["Reply-To"] = "help@example.com"
    reference["List-Unsubscribe"] = f"<{UNSUBSCRIBE}>"
    reference["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    reference["X-Campaign-Delivery"] = DELIVERY
    reference["X-Campaign"] = "spring"
    reference.set_content(text)
    reference.add_alternative(html, subtype="html")
    theirs = parse(reference.as_bytes())

    def shape(message: EmailMessage) -> list[tuple[str, str | None]]:
        return [(part.get_content_type(), part.get_content_charset()) for part in message.walk()]

    assert shape(ours) == shape(theirs)
    for header in (
        "From",
        "To",
        "Subject",
        "Message-ID",
        "Reply-To",
        "List-Unsubscribe",
        "X-Campaign-Delivery",
    ):
        assert str(ours[header]) == str(theirs[header]).strip(), header  # EmailMessage folds long values
    for subtype in ("plain", "html"):
        # EmailMessage ends every body with a newline; ours leaves the content as it is
        assert body(ours, subtype).rstrip("\n") == body(theirs, subtype).rstrip("\n")


def test_encoding_is_chosen_per_part() -> None:
    raw = skeleton().build("a@example.com", "s", TEXTS["cjk"], "<p>plain ascii html</p>", "<1@x>", None)
    plain, html = parse(raw).iter_parts()
    assert plain["Content-Transfer-Encoding"] == "base64"
    assert html["Content-Transfer-Encoding"] == "quoted-printable"
    assert b"<p>plain ascii html</p>" in raw  # readable in the raw message


def test_text_only_message() -> None:
    raw = skeleton(reply_to=None, static_headers={}).build(
        "a@example.com", "Hi", "Just text.", None, "x@y", None
    )
    assert_wire_format(raw)
    message = parse(raw)
    assert message.get_content_type() == "text/plain"
    assert message.get_content() == "Just text.\r\n"  # a single body ends with a line break
    assert message["Message-ID"] == "<x@y>"
    assert message["Reply-To"] is None and message["List-Unsubscribe"] is None
    assert message["List-Unsubscribe-Post"] is None


def test_list_unsubscribe_variants() -> None:
    with_mailto = skeleton(unsubscribe_mailto="unsubscribe@example.com")
    message = parse(with_mailto.build("a@example.com", "s", "t", None, "<1@x>", UNSUBSCRIBE))
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>, <mailto:unsubscribe@example.com>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    message = parse(with_mailto.build("a@example.com", "s", "t", None, "<1@x>", None))
    assert message["List-Unsubscribe"] == "<mailto:unsubscribe@example.com>"
    assert message["List-Unsubscribe-Post"] is None  # one-click needs the https link
    message = parse(skeleton().build("a@example.com", "s", "t", None, "<1@x>", UNSUBSCRIBE, one_click=False))
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>" and message["List-Unsubscribe-Post"] is None
    message = parse(skeleton().build("a@example.com", "s", "t", None, "<1@x>", "http://localhost/u?t=1"))
    assert message["List-Unsubscribe-Post"] is None  # RFC 8058: https only
    with pytest.raises(CampaignError, match="not a URL that can go in a header"):
        skeleton().build("a@example.com", "s", "t", None, "<1@x>", "https://x/\r\nBcc: y@example.com")


def test_headers_cannot_be_injected() -> None:
    raw = skeleton().build("a@example.com", "Hi\r\nBcc: victim@example.com", "t", None, "<1@x>", None)
    message = parse(raw)
    assert message["Bcc"] is None
    assert message["Subject"] == "Hi Bcc: victim@example.com"
    with pytest.raises(CampaignError, match="not one valid email address"):
        skeleton().build("a@example.com\r\nBcc: victim@example.com", "s", "t", None, "<1@x>", None)


@pytest.mark.parametrize(
    "to",
    [
        "x@y.com, victim@evil.com",  # two addresses in one To:
        "Victim <victim@evil.com>",  # a display name
        "x@y.com\x1b[31m",  # an escape sequence
        "x@y.com\x00",
        "",
        "not an address",
    ],
)
def test_to_is_one_address_the_typology_would_accept(to: str) -> None:
    with pytest.raises(CampaignError, match="not one valid email address"):
        skeleton().build(to, "s", "t", None, "<1@x>", None)


@pytest.mark.parametrize("control", ["\x1b", "\x07", "\x7f", "\x00", "\x0b", "\x85", "\x9b"])
def test_control_characters_never_reach_a_header(control: str) -> None:
    subject = f"Hello{control}[31mMallory{control}"
    raw = skeleton(from_name=f"Shop{control}").build("a@example.com", subject, "t", None, "<1@x>", None)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert not any(b < 0x20 and b not in (0x0D, 0x0A) or b == 0x7F for b in head)  # no raw control byte
    assert control.encode("utf-8") not in head
    message = parse(raw)
    assert message["Subject"] == "Hello [31mMallory"  # the control character became a space
    assert message["From"].addresses[0].display_name == "Shop"


def test_long_and_non_ascii_headers_fold_and_decode() -> None:
    long_ascii = " ".join(f"word{i}" for i in range(60))
    assert "\r\n " in encode_header("Subject", long_ascii)
    no_spaces = "x" * 1500
    for subject in (long_ascii, no_spaces, "=?utf-8?q?not_an_encoded_word?=", "ünïcödé " * 30):
        raw = skeleton().build("a@example.com", subject, "t", None, "<1@x>", None)
        assert_wire_format(raw)
        assert parse(raw)["Subject"] == " ".join(subject.split())


def test_non_ascii_names_and_addresses() -> None:
    raw = skeleton(from_name='Zoë "the" Boss, Inc.', static_headers={"X-Note": "prix réduit"}).build(
        "zoë@exämple.com", "s", "t", None, "<1@x>", None
    )
    message = parse(raw)
    assert message["From"].addresses[0].display_name == 'Zoë "the" Boss, Inc.'
    assert message["X-Note"] == "prix réduit"
    assert message["To"].addresses[0].domain == "xn--exmple-cua.com"
    assert format_address('a "b"', "x@y.z") == '"a \\"b\\"" <x@y.z>'
    assert format_address(None, "x@y.z") == "x@y.z"


def test_skeleton_options_are_checked() -> None:
    with pytest.raises(CampaignError, match="from_addr='nobody': not an email address"):
        MimeSkeleton("nobody")
    with pytest.raises(CampaignError, match="'Content-Type' is set for every message"):
        check_headers({"Content-Type": "text/plain"})
    with pytest.raises(CampaignError, match="unsubscribe_mailto='x': not an email address"):
        MimeSkeleton("a@example.com", unsubscribe_mailto="x")


def test_message_id_helper() -> None:
    assert message_id("spring/2026-05-01 #42", "example.com") == "<spring.2026-05-01..42@example.com>"
    assert message_id("7", "exämple.com") == "<7@xn--exmple-cua.com>"
    raw = MimeSkeleton("news@exämple.com", reply_to="répondre@exämple.com").build(
        "a@b.c", "s", "t", None, "<1@x>"
    )
    message = parse(raw)
    assert message["From"].addresses[0].domain == "xn--exmple-cua.com"
    assert "Reply-To: répondre@xn--exmple-cua.com\r\n".encode() in raw  # a UTF-8 local part, RFC 6532


def test_compiled_email_to_message_with_a_link_that_verifies() -> None:
    key = b"k" * 32
    email_content = EmailContent(
        subject="{{ first_name }}, {{ points }} points for you",
        from_addr="news@example.com",
        from_name="Example Shop",
        html='<p>Hello {{ first_name }}!</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
    )
    compiled = compile_email(email_content)
    compiled.check(["first_name", "points"])
    links = LinkSigner(key, "spring", "https://example.com/unsubscribe", service="newsletter")
    skeleton_ = MimeSkeleton.for_email(email_content, "spring/2026-05-01")
    url = links.unsubscribe_url("42")
    subject, html, text = compiled.render({"first_name": "Zoë", "points": 120, "unsubscribe_url": url})
    message = parse(
        skeleton_.build("zoe@example.com", subject, text, html, message_id("42.spring", "example.com"), url)
    )
    assert message["Subject"] == "Zoë, 120 points for you"
    assert body(message, "plain") == f"Hello Zoë!\n\nUnsubscribe ({url})"
    assert 'href="https://example.com/unsubscribe?d=spring&amp;s=newsletter&amp;r=42&amp;t=' in body(
        message, "html"
    )
    header_url = message["List-Unsubscribe"].strip("<>")
    assert parse_and_verify(header_url, key) == {
        "delivery": "spring",
        "recipient_key": "42",
        "service": "newsletter",
        "purpose": "unsubscribe",
    }
    assert parse_and_verify(header_url.replace("r=42", "r=43"), key) is None
