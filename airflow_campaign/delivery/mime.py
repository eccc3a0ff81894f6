"""Fast MIME for email deliveries: the message skeleton is built once, each recipient fills only its parts.

``MimeSkeleton`` holds what every message of a delivery shares (sender, static headers, the
delivery header, the boundary, the part headers) as ready bytes; ``build`` adds the recipient's
To, Subject, Date, Message-ID and List-Unsubscribe headers and the bodies, encoded
quoted-printable (mostly ASCII) or base64 (mostly not), with CRLF line endings and lines of at
most 76 characters in the bodies and 998 in the headers (78 where a header can be folded).
"""

from __future__ import annotations

import re
import secrets
import time
from binascii import b2a_base64, b2a_qp
from collections.abc import Mapping
from email.utils import formatdate
from typing import TYPE_CHECKING

from airflow_campaign.delivery.typology import EMAIL_SYNTAX
from airflow_campaign.errors import CampaignError

if TYPE_CHECKING:
    from airflow_campaign.delivery.render import EmailContent

# headers every message gets from the builder: a static header of the same name is refused
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
        "Content-Transfer-Encoding", "Reply-To", "List-Unsubscribe", "List-Unsubscribe-Post",
        "X-Campaign-Delivery", "Sender", "Return-Path",
    )
)  # fmt: skip
DELIVERY_HEADER = "X-Campaign-Delivery"
ONE_CLICK = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"

_HEADER_NAME = re.compile(r"[!-9;-~]+\Z")
_ADDRESS = re.compile(r"""[^\s@<>()\[\],;:\\"]+@[^\s@<>()\[\],;:\\"]+\Z""")
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*\Z")  # a display name that needs no quoting
_RECIPIENT = re.compile(EMAIL_SYNTAX)  # what the typology's InvalidAddress rule accepts
# C0 and C1 control characters and DEL: never written into a header, whatever the data says
_CONTROLS = dict.fromkeys([*range(0x20), 0x7F, *range(0x80, 0xA0)], " ")
_WORD_BYTES = 42  # utf-8 bytes per encoded word: 56 base64 characters, 68 with the =?utf-8?b?...?= frame


def check_address(option: str, value: str) -> None:
    """Raise a CampaignError unless ``value`` is one plain address, ``name@example.com``."""
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise CampaignError(
            f"{option}={value!r}: not an email address; give one address such as 'news@example.com' "
            "(the display name goes in from_name)."
        )


def check_headers(headers: Mapping[str, str]) -> None:
    """Raise a CampaignError for a header name that is malformed or set by the builder, or a value
    that is not one line of text."""
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise CampaignError(
                f"headers: {name!r} is not a header name; use printable ASCII without spaces or ':', "
                "such as 'X-Campaign'."
            )
        if name.lower() in RESERVED_HEADERS:
            raise CampaignError(
                f"headers: {name!r} is set for every message by the delivery; remove it from headers "
                "(sender and reply address have options of their own: from_addr, from_name, reply_to)."
            )
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise CampaignError(f"headers: {name}={value!r}: a header value is one line of text.")


def encode_header(name: str, value: str) -> str:
    """``value`` ready to follow ``name: ``: as it is when short ASCII, folded at spaces when long,
    as RFC 2047 encoded words (utf-8, base64) when it has non-ASCII characters. Line breaks and
    other control characters (ESC, BEL, DEL...) in ``value`` become spaces, runs of whitespace
    one space."""
    value = " ".join(without_controls(value).split())
    if value.isascii() and "=?" not in value:
        if len(name) + len(value) <= 76:
            return value
        folded = _fold(value, len(name) + 2)
        if folded is not None:
            return folded
    return _encoded_words(value)


def without_controls(value: str) -> str:
    """``value`` with every control character (C0, DEL, C1) replaced by a space."""
    return value if value.isprintable() else value.translate(_CONTROLS)


def check_recipient(to: str) -> None:
    """Raise a CampaignError unless ``to`` is one address the typology would accept."""
    if not isinstance(to, str) or _RECIPIENT.fullmatch(to) is None or "\x00" in to:
        raise CampaignError(
            f"to={to[:200] if isinstance(to, str) else to!r}: not one valid email address; the message is "
            "not built (an address list, a display name or a control character cannot go in To:)."
        )


def _fold(value: str, used: int) -> str | None:
    """``value`` folded before spaces into lines of at most 78 characters where it can be, None
    when a word would leave a line longer than 998."""
    lines: list[str] = []
    line = ""
    room = 78 - used
    for word in value.split(" "):
        if line and len(line) + 1 + len(word) > room:
            lines.append(line)
            line, room = word, 77
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    if max(map(len, lines)) > 990:
        return None
    return "\r\n ".join(lines)


def _encoded_words(value: str) -> str:
    data = value.encode("utf-8")
    words = []
    start = 0
    while start < len(data):
        end = min(start + _WORD_BYTES, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # never split a character
            end -= 1
        words.append("=?utf-8?b?" + b2a_base64(data[start:end], newline=False).decode("ascii") + "?=")
        start = end
    return "\r\n ".join(words)


def format_address(name: str | None, addr: str) -> str:
    """``Name <addr>``: the name as it is, quoted, or RFC 2047 encoded, as it needs."""
    if not name:
        return addr
    name = " ".join(without_controls(name).split())
    if name.isascii():
        if _ATOMS.match(name) and "=?" not in name:
            shown = name
        else:
            shown = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        shown = _encoded_words(name)
    return f"{shown} <{addr}>"


def message_id(unique: str, domain: str) -> str:
    """A Message-ID, ``<unique@domain>``: ``unique`` made of letters, digits and ``.-_+=``
    (other characters are replaced by ``.``), ``domain`` the sender's domain (IDNA-encoded)."""
    local = re.sub(r"[^A-Za-z0-9.\-_+=]", ".", unique).strip(".") or secrets.token_hex(8)
    return f"<{local}@{_idna_domain(domain)}>"


def _body(text: str) -> tuple[bytes, bytes]:
    """(Content-Transfer-Encoding, encoded body) for ``text``: quoted-printable for mostly-ASCII
    text (readable, small), base64 when more than about 1 byte in 11 is beyond ASCII."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    data = text.encode("utf-8")
    if (len(data) - len(text)) * 11 < len(data):
        body = b2a_qp(data.replace(b"\n", b"\r\n"), istext=True)
        if b"From " in body:  # some transfer agents rewrite "From " at a line start: keep it out
            body = body.replace(b"\r\nFrom ", b"\r\n=46rom ")
            if body.startswith(b"From "):
                body = b"=46rom " + body[5:]
        return b"quoted-printable", body
    encoded = b2a_base64(data, newline=False)
    return b"base64", b"\r\n".join([encoded[i : i + 76] for i in range(0, len(encoded), 76)])


class MimeSkeleton:
    """The bytes every message of one email shares, and ``build`` for one recipient.

    :param from_addr: the sender's address.
    :param from_name: the sender's display name (RFC 2047 encoded when not ASCII).
    :param reply_to: a Reply-To address, or None.
    :param static_headers: headers carried unchanged by every message.
    :param delivery_header_value: the value of ``X-Campaign-Delivery``: ``<delivery>/<run key>``.
    :param unsubscribe_mailto: an address for ``<mailto:...>`` in List-Unsubscribe, next to the link.
    """

    def __init__(
        self,
        from_addr: str,
        from_name: str | None = None,
        reply_to: str | None = None,
        static_headers: Mapping[str, str] | None = None,
        delivery_header_value: str = "",
        *,
        unsubscribe_mailto: str | None = None,
    ) -> None:
        check_address("from_addr", from_addr)
        if reply_to:
            check_address("reply_to", reply_to)
        if unsubscribe_mailto:
            check_address("unsubscribe_mailto", unsubscribe_mailto)
        static_headers = dict(static_headers or {})
        check_headers(static_headers)
        self.sender = from_addr
        self.boundary = "=_" + secrets.token_hex(12)  # "=_" never occurs in quoted-printable or base64
        self._mailto = f"<mailto:{unsubscribe_mailto}>".encode() if unsubscribe_mailto else None
        head = [f"From: {format_address(from_name, _idna(from_addr).decode())}"]
        if reply_to:
            head.append(f"Reply-To: {_idna(reply_to).decode()}")
        if delivery_header_value:
            head.append(f"{DELIVERY_HEADER}: {encode_header(DELIVERY_HEADER, delivery_header_value)}")
        head.extend(f"{name}: {encode_header(name, value)}" for name, value in static_headers.items())
        head.append("MIME-Version: 1.0")
        self._head = ("\r\n".join(head) + "\r\n").encode("utf-8")
        b = self.boundary
        self._multipart = f'Content-Type: multipart/alternative;\r\n boundary="{b}"\r\n\r\n--{b}\r\n'.encode()
        self._text_type = b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: '
        self._html_head = f'\r\n--{b}\r\nContent-Type: text/html; charset="utf-8"\r\n'.encode()
        self._end = f"\r\n--{b}--\r\n".encode()
        self._date: tuple[int, bytes] = (0, b"")

    @classmethod
    def for_email(
        cls, content: EmailContent, delivery_header_value: str, *, unsubscribe_mailto: str | None = None
    ) -> MimeSkeleton:
        """The skeleton of an ``EmailContent`` (sender, reply address, static headers)."""
        return cls(
            content.from_addr,
            content.from_name,
            content.reply_to,
            content.headers,
            delivery_header_value,
            unsubscribe_mailto=unsubscribe_mailto,
        )

    def _now(self) -> bytes:
        now = int(time.time())
        cached = self._date
        if cached[0] != now:
            cached = (now, formatdate(now, usegmt=True).encode("ascii"))
            self._date = cached
        return cached[1]

    def build(
        self,
        to: str,
        subject: str,
        text: str,
        html: str | None,
        message_id: str,
        list_unsubscribe: str | None = None,
        one_click: bool = True,
    ) -> bytes:
        """The whole message for one recipient, RFC 5322 bytes with CRLF line endings.

        :param to: the recipient's address.
        :param subject: the rendered subject (line breaks become spaces).
        :param text: the text part.
        :param html: the html part; None for a text-only message.
        :param message_id: ``<unique@domain>`` (angle brackets added when missing).
        :param list_unsubscribe: the recipient's https unsubscribe link, or None.
        :param one_click: with an https ``list_unsubscribe``, add ``List-Unsubscribe-Post:
            List-Unsubscribe=One-Click`` (RFC 8058: the link unsubscribes on a POST, no page).
        """
        check_recipient(to)
        if "\n" in message_id or "\r" in message_id:
            raise CampaignError(f"message_id={message_id!r}: a line break in a header.")
        if not message_id.startswith("<"):
            message_id = f"<{message_id}>"
        out = [
            self._head,
            b"To: ",
            to.encode("utf-8") if to.isascii() else _idna(to),
            b"\r\nSubject: ",
            encode_header("Subject", subject).encode("ascii"),
            b"\r\nDate: ",
            self._now(),
            b"\r\nMessage-ID: ",
            message_id.encode("utf-8"),
            b"\r\n",
        ]
        if list_unsubscribe or self._mailto:
            out.append(self._list_unsubscribe(list_unsubscribe))
            if one_click and list_unsubscribe and list_unsubscribe.startswith("https://"):
                out.append(ONE_CLICK)
        cte, body = _body(text)
        if html is None:
            # like EmailMessage, the message ends with a line break (part of a single body's content)
            out += [self._text_type, cte, b"\r\n\r\n", body, b"" if body.endswith(b"\r\n") else b"\r\n"]
        else:
            html_cte, html_body = _body(html)
            out += [
                self._multipart,
                self._text_type,
                cte,
                b"\r\n\r\n",
                body,
                self._html_head,
                b"Content-Transfer-Encoding: ",
                html_cte,
                b"\r\n\r\n",
                html_body,
                self._end,
            ]
        return b"".join(out)

    def _list_unsubscribe(self, url: str | None) -> bytes:
        links = []
        if url:
            if "\r" in url or "\n" in url or ">" in url or " " in url or not url.isascii():
                raise CampaignError(f"list_unsubscribe={url!r}: not a URL that can go in a header.")
            links.append(f"<{url}>".encode("ascii"))
        if self._mailto:
            links.append(self._mailto)
        value = b",\r\n ".join(links)
        if len(value) > 960:
            raise CampaignError(f"list_unsubscribe={url!r}: longer than a header line may be (998).")
        return b"List-Unsubscribe: " + value + b"\r\n"


def _idna(address: str) -> bytes:
    """A non-ASCII address: the domain as IDNA (xn--), the local part as UTF-8 (RFC 6532)."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{_idna_domain(domain)}".encode()


def _idna_domain(domain: str) -> str:
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain
