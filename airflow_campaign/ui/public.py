"""The public pages a recipient reaches from a message: the one-click unsubscribe endpoint.

``GET`` shows a confirm page whose button posts to the same URL; ``POST`` (RFC 8058: a mailbox
provider's ``List-Unsubscribe=One-Click``, or the confirm page's form) unsubscribes and answers
with no page. The signed link is verified first (``verify_link``); a forged, malformed or expired
link gets 400 and changes nothing. The answer to a valid link is the same whether or not its
recipient exists or is still subscribed, so the endpoint never tells who is on the list. Each
client address is held to ``RATE`` requests a minute (429 beyond).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

import psycopg

from airflow_campaign.delivery.unsubscribe import KeyRing, LinkCheck, verify_link

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


def check(query: str, keys: KeyRing | None) -> LinkCheck:
    return verify_link(query, keys, "unsubscribe")


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
    if key.isascii() and key.isdigit() and len(key) < 19:
        profile = int(key)
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


def confirm_text(link: LinkCheck) -> str:
    import html

    if link.service:
        return f"Stop receiving messages from {html.escape(link.service)}?"
    return "Stop receiving these messages?"


def client_of(request: Any) -> str:
    client = getattr(request, "client", None)
    return str(getattr(client, "host", None) or "unknown")
