"""Signed per-recipient links (unsubscribe, mirror page): HMAC-SHA256 tokens, the URLs, their verification.

A link carries the delivery ``d``, the recipient key ``r``, the subscription service ``s``
(when the delivery is bound to one) and a token ``t``: the first 128 bits of
HMAC-SHA256(key, purpose, delivery, service, recipient), URL-safe base64. Nothing in the link
is secret; the token makes it impossible to forge a link for another recipient, delivery or
service without the key. The key lives in an Airflow Variable or Connection (``load_key``).
"""

from __future__ import annotations

import hashlib
import hmac
from base64 import urlsafe_b64encode
from collections.abc import Sequence
from typing import Literal
from urllib.parse import parse_qs, quote, urlsplit

from airflow_campaign.errors import CampaignError

Purpose = Literal["unsubscribe", "mirror"]
TOKEN_BYTES = 16  # 128 bits
MIN_KEY_BYTES = 16
KEY_HELP = (
    "airflow variables set campaign_unsubscribe_key "
    "\"$(python -c 'import secrets; print(secrets.token_urlsafe(32))')\""
)


def _field(value: str) -> bytes:
    data = value.encode("utf-8")
    return b"%d:%b" % (len(data), data)


def _prefix(purpose: str, delivery: str, service: str | None) -> bytes:
    """The signed message up to the recipient: every field length-prefixed, so no two
    (delivery, service, recipient) triples sign the same bytes."""
    return _field(purpose) + _field(delivery) + _field(service or "")


def _token(mac: hmac.HMAC) -> str:
    return urlsafe_b64encode(mac.digest()[:TOKEN_BYTES]).rstrip(b"=").decode("ascii")


def sign(
    key: bytes,
    delivery: str,
    recipient_key: str,
    purpose: Purpose = "unsubscribe",
    service: str | None = None,
) -> str:
    """The token of ``recipient_key``'s ``purpose`` link for ``delivery`` (and ``service``)."""
    mac = hmac.new(key, _prefix(purpose, delivery, service) + _field(str(recipient_key)), hashlib.sha256)
    return _token(mac)


def verify(
    key: bytes | Sequence[bytes],
    token: str,
    delivery: str,
    recipient_key: str,
    purpose: Purpose = "unsubscribe",
    service: str | None = None,
) -> bool:
    """Whether ``token`` was signed for these fields with ``key`` (or with one of several keys,
    while a rotated key's links are still around). Constant-time comparison."""
    keys = [key] if isinstance(key, (bytes, bytearray)) else list(key)
    good = False
    for one in keys:
        good |= hmac.compare_digest(sign(bytes(one), delivery, recipient_key, purpose, service), token)
    return good


def check_base_url(option: str, base_url: str) -> None:
    """Raise a CampaignError unless ``base_url`` is an http(s) URL with a host and no fragment."""
    parts = urlsplit(base_url or "")
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment or " " in base_url:
        raise CampaignError(
            f"{option}={base_url!r}: not an http(s) URL; give the page that receives the links, such as "
            "'https://example.com/unsubscribe' (https for one-click unsubscribe, RFC 8058)."
        )


class LinkSigner:
    """Builds the signed links of one delivery, fast: the URL prefix and the HMAC state of
    everything but the recipient are computed once.

    :param key: the signing key (``load_key``).
    :param delivery: the delivery's name.
    :param base_url: the unsubscribe page, ``https://example.com/unsubscribe``.
    :param service: the subscription service the delivery is bound to, if any.
    :param mirror_base_url: the mirror page (the email as a web page), if any.
    """

    def __init__(
        self,
        key: bytes,
        delivery: str,
        base_url: str,
        service: str | None = None,
        mirror_base_url: str | None = None,
    ) -> None:
        check_base_url("unsubscribe_url", base_url)
        if mirror_base_url:
            check_base_url("mirror_url", mirror_base_url)
        self._unsubscribe = (
            _url_prefix(base_url, delivery, service),
            _mac(key, "unsubscribe", delivery, service),
        )
        self._mirror = (
            (_url_prefix(mirror_base_url, delivery, None), _mac(key, "mirror", delivery, None))
            if mirror_base_url
            else None
        )

    def unsubscribe_url(self, recipient_key: str) -> str:
        return _link(*self._unsubscribe, str(recipient_key))

    def mirror_url(self, recipient_key: str) -> str | None:
        return None if self._mirror is None else _link(*self._mirror, str(recipient_key))


def _url_prefix(base_url: str, delivery: str, service: str | None) -> str:
    prefix = base_url + ("&" if "?" in base_url else "?") + "d=" + quote(delivery, safe="")
    if service:
        prefix += "&s=" + quote(service, safe="")
    return prefix + "&r="


def _mac(key: bytes, purpose: str, delivery: str, service: str | None) -> hmac.HMAC:
    return hmac.new(key, _prefix(purpose, delivery, service), hashlib.sha256)


def _link(prefix: str, mac: hmac.HMAC, recipient_key: str) -> str:
    mac = mac.copy()
    mac.update(_field(recipient_key))
    return prefix + quote(recipient_key, safe="") + "&t=" + _token(mac)


def unsubscribe_url(
    base_url: str, key: bytes, delivery: str, recipient_key: str, service: str | None = None
) -> str:
    """``base_url?d=<delivery>&s=<service>&r=<recipient_key>&t=<token>``, every value URL-encoded."""
    return LinkSigner(key, delivery, base_url, service).unsubscribe_url(recipient_key)


def mirror_url(base_url: str, key: bytes, delivery: str, recipient_key: str) -> str:
    """``base_url?d=<delivery>&r=<recipient_key>&t=<token>`` for the mirror page (purpose "mirror")."""
    check_base_url("mirror_url", base_url)
    return _link(
        _url_prefix(base_url, delivery, None), _mac(key, "mirror", delivery, None), str(recipient_key)
    )


def parse_and_verify(
    url: str, key: bytes | Sequence[bytes], purpose: Purpose = "unsubscribe"
) -> dict[str, str | None] | None:
    """For the page that receives a link: ``{"delivery", "recipient_key", "service", "purpose"}``
    when ``url`` (a whole URL or its query string) carries a valid token, else None."""
    query = urlsplit(url).query if "?" in url or "://" in url else url
    params = parse_qs(query, keep_blank_values=True)
    values = {}
    for name in ("d", "r", "s", "t"):
        found = params.get(name, [])
        if len(found) > 1:
            return None
        values[name] = found[0] if found else None
    delivery, recipient_key, service, token = values["d"], values["r"], values["s"], values["t"]
    if not delivery or recipient_key is None or not token:
        return None
    if not verify(key, token, delivery, recipient_key, purpose, service or None):
        return None
    return {
        "delivery": delivery,
        "recipient_key": recipient_key,
        "service": service or None,
        "purpose": purpose,
    }


def load_key(spec: str, option: str = "unsubscribe_key") -> bytes:
    """The signing key named by ``spec``: ``variable:<name>`` (an Airflow Variable) or
    ``connection:<conn_id>`` (the password of an Airflow connection). At least 16 bytes."""
    kind, _, name = (spec or "").partition(":")
    if kind not in ("variable", "connection") or not name.strip():
        raise CampaignError(
            f"{option}={spec!r}: name the key as 'variable:<name>' (an Airflow Variable) or "
            f"'connection:<conn_id>' (the password of an Airflow connection), such as "
            f"'variable:campaign_unsubscribe_key'; create it with: {KEY_HELP}"
        )
    name = name.strip()
    value: str | None
    if kind == "variable":
        from airflow.sdk import Variable

        try:
            value = Variable.get(name, default=None)
        except Exception as exc:
            raise CampaignError(f"{option}={spec!r}: cannot read Airflow Variable {name!r} ({exc}).") from exc
        if not value:
            raise CampaignError(
                f"{option}={spec!r}: no Airflow Variable {name!r}. Create it with a random secret: "
                + KEY_HELP.replace("campaign_unsubscribe_key", name, 1)
            )
    else:
        from airflow.sdk import BaseHook

        try:
            value = BaseHook.get_connection(name).password
        except Exception as exc:
            raise CampaignError(
                f"{option}={spec!r}: no Airflow connection {name!r}. Create one whose password is a random "
                f"secret: airflow connections add {name} --conn-type generic --conn-password "
                "\"$(python -c 'import secrets; print(secrets.token_urlsafe(32))')\""
            ) from exc
        if not value:
            raise CampaignError(
                f"{option}={spec!r}: connection {name!r} has no password; put the signing key (a random "
                "secret of 32 bytes or more) in its password."
            )
    key = str(value).encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise CampaignError(
            f"{option}={spec!r}: the key is {len(key)} bytes long; use a random secret of at least "
            f"{MIN_KEY_BYTES} bytes (32 recommended): {KEY_HELP}"
        )
    return key
