"""The public pages a recipient reaches from a message: the one-click unsubscribe endpoint and
the mirror page (the email as a web page).

``GET`` shows a confirm page whose button posts to the same URL; ``POST`` (RFC 8058: a mailbox
provider's ``List-Unsubscribe=One-Click``, or the confirm page's form) unsubscribes and answers
with no page. The signed link is verified first (``verify_link``); a forged, malformed or expired
link gets 400 and changes nothing. The answer to a valid link is the same whether or not its
recipient exists or is still subscribed, so the endpoint never tells who is on the list. Each
client address is held to ``RATE`` requests a minute on each page (429 beyond).

The mirror link names one ledger row (the message sent). The page renders that message again,
from the templates the occurrence kept (``delivery_occurrences.content``, written when the delivery
has a ``mirror_url``) and the recipient's row of the occurrence's population, the same data the
email was made from. A link that is not authentic gets 400; an expired one, or one whose message
cannot be shown any more (its population was dropped by housekeeping, the row was never sent),
gets the same 410 page, so the page never tells which.
"""

from __future__ import annotations

import functools
import html as markup
import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import psycopg
import psycopg.rows

from airflow_campaign.delivery.unsubscribe import KeyRing, LinkCheck, LinkSigner, Purpose, verify_link

log = logging.getLogger(__name__)

RATE = 30  # requests per client and minute
WINDOW = 60.0
_CLIENTS_KEPT = 10_000


class RateLimiter:
    """At most ``rate`` requests per ``window`` seconds per client (a sliding count, in memory:
    one per api-server process; put the same limit in the reverse proxy for several)."""

    def __init__(self, rate: int = RATE, window: float = WINDOW) -> None:
        self.rate, self.window = rate, window
        self._seen: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            times = [t for t in self._seen.pop(client, []) if now - t < self.window]
            allowed = len(times) < self.rate
            if allowed:
                times.append(now)
            self._seen[client] = times
            while len(self._seen) > _CLIENTS_KEPT:
                self._seen.popitem(last=False)
            return allowed


def check(query: str, keys: KeyRing | None, purpose: Purpose = "unsubscribe") -> LinkCheck:
    return verify_link(query, keys, purpose)


def _integer(key: str) -> int | None:
    """A link's key as a bigint (a profile id, a ledger row), or None when it is not one."""
    return int(key) if key.isascii() and key.isdigit() and len(key) < 19 else None


@functools.lru_cache(maxsize=64)
def _compiled(content: str) -> Any:
    """The occurrence's templates, compiled once per process (keyed by their JSON)."""
    from airflow_campaign.delivery.render import EmailContent, compile_email

    kept = json.loads(content)
    return compile_email(
        EmailContent(
            subject=kept["subject"],
            from_addr=kept["from_addr"],
            html=kept.get("html"),
            text=kept.get("text"),
            from_name=kept.get("from_name"),
            reply_to=kept.get("reply_to"),
        ),
        marketing=bool(kept.get("marketing", True)),
    )


def mirror(conn: psycopg.Connection, link: LinkCheck, keys: KeyRing, query: str) -> str | None:
    """The html of the message a verified mirror ``link`` names, rendered again for its recipient,
    or None when it cannot be shown (not a sent message of this delivery, no templates kept, the
    population dropped, a template that no longer renders)."""
    from psycopg import sql

    from airflow_campaign.delivery.engine import RECIPIENT
    from airflow_campaign.hooks.campaign import qualified

    assert link.valid and link.delivery is not None and link.recipient_key is not None
    log_id = _integer(link.recipient_key)
    if log_id is None:
        return None
    found = conn.execute(
        "SELECT l.recipient_key, l.address, o.targets_table, o.content::text FROM campaign.delivery_logs l"
        " JOIN campaign.deliveries d ON d.id = l.delivery_id"
        " JOIN campaign.delivery_occurrences o ON o.id = l.occurrence_id"
        " WHERE l.id = %s AND d.name = %s AND d.channel = 'email' AND l.status IN ('sent', 'unknown')"
        " AND o.content IS NOT NULL AND o.targets_table IS NOT NULL",
        (log_id, link.delivery),
    ).fetchone()
    if found is None:
        return None
    recipient, address, targets, content = found
    try:
        with conn.transaction(), conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            row = cur.execute(
                sql.SQL("SELECT * FROM {} WHERE {} = %s").format(
                    qualified(targets), sql.Identifier(RECIPIENT)
                ),
                (recipient,),
            ).fetchone()
    except psycopg.errors.UndefinedTable:  # housekeeping dropped the population
        return None
    if row is None:
        return None
    kept = json.loads(content)
    url = urlsplit(kept["mirror_url"])._replace(query=query).geturl()  # this page, as the email linked it
    unsubscribe = ""
    if kept.get("unsubscribe_url"):
        unsubscribe = LinkSigner(
            keys, link.delivery, kept["unsubscribe_url"], service=kept.get("service")
        ).unsubscribe_url(recipient)
    try:
        compiled = _compiled(content)
        subject, html, text = compiled.render(
            {
                **row,
                "recipient": address,
                "delivery": link.delivery,
                "unsubscribe_url": unsubscribe,
                "mirror_url": url,
            }
        )
    except Exception as exc:  # the page is public: it never fails, the log says why
        log.warning("mirror page of ledger row %s (%s) cannot be rendered: %s", log_id, link.delivery, exc)
        return None
    if html is not None:
        return html
    return MIRROR_TEXT_PAGE.format(subject=markup.escape(subject), text=markup.escape(text))


def unsubscribe(conn: psycopg.Connection, link: LinkCheck, origin: str, client: str | None) -> str:
    """Apply a verified unsubscribe link and record it in ``campaign.ui_events``; returns what it
    did. With a service: the profile leaves that service (its subscription event says so).
    Without: the profile is denylisted for the delivery's channel (email or SMS)."""
    assert link.valid and link.delivery is not None and link.recipient_key is not None
    key = link.recipient_key
    applied = "no such recipient"
    found = conn.execute(
        "SELECT channel, dag_id FROM campaign.deliveries WHERE name = %s", (link.delivery,)
    ).fetchone()
    channel = found[0] if found else None
    dag_id = found[1] if found else None
    profile = _integer(key)
    if profile is not None:
        if link.service:
            gone = conn.execute(
                "WITH s AS (SELECT id FROM campaign.services WHERE name = %(service)s),"
                " gone AS (DELETE FROM campaign.subscriptions x USING s WHERE x.service_id = s.id"
                "  AND x.profile_id = %(profile)s RETURNING x.service_id, x.profile_id)"
                " INSERT INTO campaign.subscription_events (service_id, profile_id, operation, origin, dag_id)"
                " SELECT service_id, profile_id, 'unsubscribe', %(origin)s, %(dag)s FROM gone RETURNING 1",
                {
                    "service": link.service,
                    "profile": profile,
                    "origin": f"unsubscribe link ({origin})",
                    "dag": dag_id,
                },
            ).fetchall()
            applied = "unsubscribed" if gone else "not subscribed"
        elif channel in ("email", "sms"):
            column = "email_denylisted" if channel == "email" else "sms_denylisted"
            changed = conn.execute(
                f"UPDATE campaign.profiles SET {column} = true, updated_at = now()"  # noqa: S608 (one of two names)
                f" WHERE id = %s AND NOT {column} RETURNING 1",
                (profile,),
            ).fetchall()
            applied = "denylisted" if changed else "already denylisted or no such profile"
    conn.execute(
        "INSERT INTO campaign.ui_events (kind, origin, actor, delivery, service, recipient_key, channel, applied)"
        " VALUES ('unsubscribe', %s, %s, %s, %s, %s, %s, %s)",
        (origin, client, link.delivery, link.service, key[:200], channel, applied),
    )
    return applied


CONFIRM_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>Unsubscribe</title>
<style>body{font:16px system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}
button{font:inherit;padding:.6rem 1.2rem}</style></head>
<body><h1>Unsubscribe</h1><p>{what}</p>
<form method="post"><button type="submit" name="confirm" value="1">Unsubscribe</button></form>
</body></html>"""

DONE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex"><title>Unsubscribed</title>
<style>body{font:16px system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}</style></head>
<body><h1>You are unsubscribed</h1><p>You will not receive these messages any more.</p></body></html>"""

INVALID_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex"><title>Link not valid</title></head>
<body><h1>This link is not valid</h1><p>Use the link of a recent message.</p></body></html>"""


#: The mirror page's headers: never cached or indexed, the link's token never sent on as a
#: referrer, and the email's html in a sandbox of its own (no script, no access to the origin's
#: cookies: the page may be served by the Airflow api-server), its links opening normally.
MIRROR_HEADERS = {
    "Cache-Control": "private, no-store",
    "X-Robots-Tag": "noindex",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "sandbox allow-popups allow-popups-to-escape-sandbox allow-top-navigation-by-user-activation; "
        "script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}

MIRROR_TEXT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{subject}</title></head><body><pre style="white-space:pre-wrap;font:15px system-ui,sans-serif">{text}</pre>
</body></html>"""

GONE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex"><title>Not available</title></head>
<body><h1>This message is no longer available</h1><p>The link has expired or the message was removed.</p>
</body></html>"""


def confirm_text(link: LinkCheck, label: str | None = None) -> str:
    """The confirm page's question, naming the service by its label (else its name)."""
    if link.service:
        return f"Stop receiving messages from {markup.escape(label or link.service)}?"
    return "Stop receiving these messages?"


def service_label(conn: psycopg.Connection, service: str | None) -> str | None:
    if not service:
        return None
    found = conn.execute("SELECT label FROM campaign.services WHERE name = %s", (service,)).fetchone()
    return str(found[0]) if found and found[0] else None


def client_of(request: Any) -> str:
    client = getattr(request, "client", None)
    return str(getattr(client, "host", None) or "unknown")
