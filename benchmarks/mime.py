"""Email content: render + MIME for N recipients, ours against Jinja + the standard library's EmailMessage.

Both sides make the same N personalised multipart/alternative messages (text and html) from a
~3 KB marketing html template with seven variables, a condition and signed unsubscribe and
mirror links (signed the same way on both sides):

- ours: ``compile_email`` once (the text part derived from the html template once), then per
  recipient ``CompiledEmail.render`` and ``MimeSkeleton.build``;
- the other: the subject, html and a hand-written text template rendered with Jinja's sandboxed
  environment (``Template.render``), then ``EmailMessage`` with ``set_content`` and
  ``add_alternative`` and ``as_bytes()``.

A second comparison times the MIME step alone (the same rendered parts to bytes, bodies twice as
long, for at most 2,000 messages).

Before a ratio is printed, the messages of every run of both sides are parsed and must say the
same (AssertionError otherwise): the same To, Subject, From, Message-ID, List-Unsubscribe and
X-Campaign-Delivery headers, and the same text and html parts once decoded (line breaks as LF,
no trailing ones). Names in results.json: ``Email render + MIME, N msgs`` and ``MIME build only,
N msgs``.

Run by ``benchmarks/run.py`` (``bench_mime``), or alone: ``python -m benchmarks.mime [N]``.
The standard library makes ~500 messages/s: N = 5,000 takes about a minute.
"""

from __future__ import annotations

import email
import os
import sys
import tempfile
import time
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.policy import compat32
from email.utils import formataddr, formatdate
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="campaign-bench-airflow-"))

KEY = b"bench-signing-key-of-32-bytes-ok"
DELIVERY = "spring_sale"
RUN_KEY = "2026-05-01"
REPEAT = int(os.environ.get("BENCH_MIME_REPEAT", "3"))
SUBJECT = "{{ first_name }}, spring sale: {{ loyalty_points }} points for you"
HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Spring sale</title>
<style>body{margin:0;padding:0} td{font-family:Helvetica,Arial,sans-serif;font-size:15px;color:#333}</style></head>
<body style="margin:0;padding:0;background:#f4f4f4">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" style="background:#f4f4f4">
<tr><td align="center" style="padding:24px 0">
 <table role="presentation" width="600" cellpadding="0" cellspacing="0" border="0" style="background:#ffffff">
  <tr><td style="padding:24px"><a href="{{ mirror_url }}" style="color:#999;font-size:12px">View this email in your browser</a></td></tr>
  <tr><td style="padding:0 24px"><img src="https://cdn.shop.example/logo.png" width="120" alt="Example Shop"></td></tr>
  <tr><td style="padding:24px">
   <h1 style="font-size:28px;margin:0 0 16px">Hello {{ first_name }},</h1>
   <p style="margin:0 0 16px">Spring is here and so is our biggest sale of the season. As a member from
   {{ country }} you have <strong>{{ loyalty_points }} points</strong> waiting for you &mdash; enough
   for a nice discount on anything in the shop.</p>
   {% if loyalty_points > 500 %}<p style="margin:0 0 16px">Because you are one of our best customers, you
   also get <em>free shipping</em> on every order until the end of the month.</p>{% endif %}
   <p style="margin:0 0 16px">New this week:</p>
   <ul style="margin:0 0 16px;padding-left:20px">
    <li>Linen shirts in six colours, from &euro;29</li>
    <li>Hand-made ceramic mugs from Portugal</li>
    <li>The garden collection: tools, seeds and planters</li>
   </ul>
   <table role="presentation" cellpadding="0" cellspacing="0" border="0"><tr>
    <td style="background:#e4572e;border-radius:4px"><a href="https://shop.example/spring?utm_source=email&amp;cid={{ id }}" style="color:#ffffff;text-decoration:none;display:inline-block;padding:12px 24px">Shop the sale</a></td>
   </tr></table>
  </td></tr>
  <tr><td style="padding:24px;border-top:1px solid #eee">
   <table role="presentation" width="100%"><tr>
    <td width="50%"><img src="https://cdn.shop.example/p1.jpg" width="270" alt="Linen shirt"><br><a href="https://shop.example/p/1?cid={{ id }}">Linen shirt &ndash; &euro;29</a></td>
    <td width="50%"><img src="https://cdn.shop.example/p2.jpg" width="270" alt="Ceramic mug"><br><a href="https://shop.example/p/2?cid={{ id }}">Ceramic mug &ndash; &euro;14</a></td>
   </tr></table>
  </td></tr>
  <tr><td style="padding:24px;font-size:12px;color:#999">
   You receive this email because you subscribed to Example Shop news with {{ recipient }}.<br>
   Example Shop, 12 Market Street, 75001 Paris, France.<br>
   <a href="{{ unsubscribe_url }}" style="color:#999">Unsubscribe</a> &middot; <a href="https://shop.example/privacy" style="color:#999">Privacy policy</a>
  </td></tr>
 </table>
</td></tr></table>
</body></html>
"""
# the text part the other side is given (ours derives the same from HTML)
TEXT = """View this email in your browser ({{ mirror_url }})

Hello {{ first_name }},

Spring is here and so is our biggest sale of the season. As a member from {{ country }} you have \
{{ loyalty_points }} points waiting for you \u2014 enough for a nice discount on anything in the shop.
{% if loyalty_points > 500 %}
Because you are one of our best customers, you also get free shipping on every order until the end of the month.
{% endif %}
New this week:

* Linen shirts in six colours, from \u20ac29
* Hand-made ceramic mugs from Portugal
* The garden collection: tools, seeds and planters

Shop the sale (https://shop.example/spring?utm_source=email&cid={{ id }})
Linen shirt \u2013 \u20ac29 (https://shop.example/p/1?cid={{ id }})
Ceramic mug \u2013 \u20ac14 (https://shop.example/p/2?cid={{ id }})
You receive this email because you subscribed to Example Shop news with {{ recipient }}.
Example Shop, 12 Market Street, 75001 Paris, France.
Unsubscribe ({{ unsubscribe_url }}) \u00b7 Privacy policy (https://shop.example/privacy)
"""
NAMES = ["Zoë", "Anna", "Bob", "Chloé", "Łukasz", "Søren", "美咲", "José"]
COUNTRIES = ["France", "Deutschland", "España", "Polska", "Danmark", "日本"]


def recipients(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "first_name": NAMES[i % len(NAMES)],
            "country": COUNTRIES[i % len(COUNTRIES)],
            "loyalty_points": (i * 37) % 1000,
            "recipient": f"customer{i}@mail.example",
        }
        for i in range(n)
    ]


def ours(rows: list[dict[str, Any]]) -> list[bytes]:
    from airflow_campaign.delivery.mime import MimeSkeleton
    from airflow_campaign.delivery.render import EmailContent, compile_email
    from airflow_campaign.delivery.unsubscribe import LinkSigner

    content = EmailContent(
        subject=SUBJECT, html=HTML, from_addr="news@shop.example", from_name="Example Shop"
    )
    email = compile_email(content)
    skeleton = MimeSkeleton.for_email(content, f"{DELIVERY}/{RUN_KEY}")
    links = LinkSigner(
        KEY, DELIVERY, "https://shop.example/unsubscribe", mirror_base_url="https://shop.example/m"
    )
    out = []
    for row in rows:
        key = str(row["id"])
        unsubscribe = links.unsubscribe_url(key)
        subject, html, text = email.render(
            {**row, "unsubscribe_url": unsubscribe, "mirror_url": links.mirror_url(key)}
        )
        out.append(
            skeleton.build(
                row["recipient"], subject, text, html, f"<{key}.{DELIVERY}@shop.example>", unsubscribe
            )
        )
    return out


def standard(rows: list[dict[str, Any]]) -> list[bytes]:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    from airflow_campaign.delivery.unsubscribe import LinkSigner

    html_env = SandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
    text_env = SandboxedEnvironment(undefined=StrictUndefined)
    subject_t, html_t, text_t = (
        text_env.from_string(SUBJECT),
        html_env.from_string(HTML),
        text_env.from_string(TEXT),
    )
    links = LinkSigner(
        KEY, DELIVERY, "https://shop.example/unsubscribe", mirror_base_url="https://shop.example/m"
    )
    sender = formataddr(("Example Shop", "news@shop.example"))
    out = []
    for row in rows:
        key = str(row["id"])
        values = {**row, "unsubscribe_url": links.unsubscribe_url(key), "mirror_url": links.mirror_url(key)}
        message = EmailMessage()
        message["From"] = sender
        message["To"] = row["recipient"]
        message["Subject"] = subject_t.render(values)
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = f"<{key}.{DELIVERY}@shop.example>"
        message["List-Unsubscribe"] = f"<{values['unsubscribe_url']}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message["X-Campaign-Delivery"] = f"{DELIVERY}/{RUN_KEY}"
        message.set_content(text_t.render(values))
        message.add_alternative(html_t.render(values), subtype="html")
        out.append(message.as_bytes())
    return out


HEADERS = ("To", "Subject", "From", "Message-ID", "List-Unsubscribe", "X-Campaign-Delivery")


def parsed(message: bytes) -> tuple[str, ...]:
    """What a reader of ``message`` sees: its headers (RFC 2047 words decoded, unfolded) and its
    text and html parts (transfer encodings undone, line breaks as LF, no trailing ones)."""
    msg = email.message_from_bytes(message, policy=compat32)
    headers = [" ".join(str(make_header(decode_header(msg.get(h, "")))).split()) for h in HEADERS]
    bodies = {"text/plain": "", "text/html": ""}
    for part in msg.walk():
        if part.get_content_type() in bodies:
            payload = part.get_payload(decode=True)
            text = payload.decode(part.get_content_charset() or "utf-8") if payload else ""
            bodies[part.get_content_type()] = text.replace("\r\n", "\n").rstrip("\n")
    return (*headers, bodies["text/plain"], bodies["text/html"])


def _checker() -> Any:
    """A ``check`` for ``interleaved``: every run's messages, parsed, against the first run's."""
    first: list[list[tuple[str, ...]]] = []

    def check(side: str, i: int, made: list[bytes]) -> None:
        got = [parsed(m) for m in made]
        if not first:
            first.append(got)
            return
        want = first[0]
        if len(got) != len(want):
            raise AssertionError(f"run {i} of {side}: {len(got)} messages, the first run {len(want)}")
        names = [*HEADERS, "text part", "html part"]
        for k, (a, b) in enumerate(zip(got, want, strict=True)):
            if a != b:
                name, x, y = next((n, x, y) for n, x, y in zip(names, a, b, strict=True) if x != y)
                raise AssertionError(
                    f"run {i} of {side}, message {k}: {name} differs from the first run's: {x[:300]!r} vs {y[:300]!r}"
                )

    return check


def bench_mime(results: list[dict[str, Any]], n: int) -> None:
    from airflow_campaign.delivery.mime import MimeSkeleton
    from benchmarks.run import interleaved, record

    rows = recipients(n)
    ours_s, other_s = interleaved(lambda _: ours(rows), lambda _: standard(rows), REPEAT, check=_checker())
    print(
        f"  render + MIME: ours {n / ours_s:,.0f} msg/s, Jinja + EmailMessage {n / other_s:,.0f} msg/s"
        " (the same messages once parsed, every run)"
    )
    record(
        results,
        f"Email render + MIME, {n:,} msgs",
        ours_s,
        "Jinja + EmailMessage.as_bytes",
        other_s,
        0.25,
        "lower",
    )

    few = rows[: min(n, 2_000)]
    parts = [(row["recipient"], f"Hello {row['first_name']}", TEXT * 2, HTML * 2) for row in few]
    skeleton = MimeSkeleton("news@shop.example", "Example Shop", None, {}, f"{DELIVERY}/{RUN_KEY}")

    def build_ours(_: int) -> list[bytes]:
        return [
            skeleton.build(to, subject, text, html, f"<{i}@shop.example>", "https://shop.example/u?t=1")
            for i, (to, subject, text, html) in enumerate(parts)
        ]

    def build_standard(_: int) -> list[bytes]:
        out = []
        for i, (to, subject, text, html) in enumerate(parts):
            message = EmailMessage()
            message["From"] = "Example Shop <news@shop.example>"
            message["To"] = to
            message["Subject"] = subject
            message["Date"] = formatdate(usegmt=True)
            message["Message-ID"] = f"<{i}@shop.example>"
            message["List-Unsubscribe"] = "<https://shop.example/u?t=1>"
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
            message["X-Campaign-Delivery"] = f"{DELIVERY}/{RUN_KEY}"
            message.set_content(text)
            message.add_alternative(html, subtype="html")
            out.append(message.as_bytes())
        return out

    ours_s, other_s = interleaved(build_ours, build_standard, REPEAT, check=_checker())
    m = len(parts)
    print(
        f"  MIME only: ours {m / ours_s:,.0f} msg/s, EmailMessage {m / other_s:,.0f} msg/s"
        " (the same messages once parsed, every run)"
    )
    record(results, f"MIME build only, {m:,} msgs", ours_s, "EmailMessage.as_bytes", other_s, 0.1, "lower")


if __name__ == "__main__":
    started = time.perf_counter()
    bench_mime([], int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
    print(f"({time.perf_counter() - started:.0f}s)")
