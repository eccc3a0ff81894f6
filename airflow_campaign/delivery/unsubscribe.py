"""Signed per-recipient links (unsubscribe, mirror page): HMAC-SHA256 tokens with key ids, the
URLs, their verification, and the signing keys.

A link carries the delivery ``d``, the recipient key ``r``, the subscription service ``s``
(when the delivery is bound to one), an expiry ``e`` (mirror links with a time to live) and a
token ``t``: ``<key id>.<mac>``, where the mac is the first 128 bits of HMAC-SHA256(key, purpose,
delivery, service, recipient[, expiry]) in URL-safe base64. A key without an id (one key in the
Variable, as before key ids existed) gives the bare ``<mac>``. Nothing in the link is secret; the
token makes it impossible to forge a link for another recipient, delivery, service or expiry
without the key.

The keys live in an Airflow Variable or Connection (``load_keys``): one key, or a JSON key set
``{"current": "k2", "keys": {"k1": "...", "k2": "..."}}`` whose ``current`` key signs and whose
every key verifies. Verification (``verify_link``, ``parse_and_verify``) never raises: any input
that is not a valid link gives a result saying why (``LinkCheck.reason``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import math
import re
import time
from base64 import urlsafe_b64encode
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import parse_qs, quote, urlsplit

from airflow_campaign.errors import CampaignError, shown

Purpose = Literal["unsubscribe", "mirror"]
Reason = Literal["malformed", "no_key", "unknown_key", "bad_signature", "expired"]
PURPOSES: tuple[str, ...] = get_args(Purpose)
TOKEN_BYTES = 16  # 128 bits
MIN_KEY_BYTES = 16
MAX_LINK_CHARS = 8192  # a longer URL or query string is not one of ours: refused before parsing
KEY_ID_PATTERN = r"[A-Za-z0-9_-]{1,32}"
_KEY_ID = re.compile(KEY_ID_PATTERN)
_TOKEN = re.compile(r"(?:(" + KEY_ID_PATTERN + r")\.)?([A-Za-z0-9_-]{22})")
_EXPIRY = re.compile(r"0|[1-9][0-9]{0,11}")  # canonical: no leading zero, so one expiry has one spelling
KEY_HELP = (
    "airflow variables set campaign_unsubscribe_key "
    "\"$(python -c 'import secrets; print(secrets.token_urlsafe(32))')\""
)
KEY_SET_EXAMPLE = '{"current": "k2", "keys": {"k1": "<the old key>", "k2": "<the new key>"}}'
#: The Variable holding the keys when ``[campaign] unsubscribe_key_variable`` is not set.
DEFAULT_KEY_VARIABLE = "campaign_unsubscribe_key"


def default_key_spec() -> str:
    """Where the signing keys are when a delivery names no ``unsubscribe_key``:
    ``variable:<name>``, the Variable named by ``[campaign] unsubscribe_key_variable``
    (``AIRFLOW__CAMPAIGN__UNSUBSCRIBE_KEY_VARIABLE``), else ``variable:campaign_unsubscribe_key``."""
    from airflow.sdk import conf

    configured = (conf.get("campaign", "unsubscribe_key_variable", fallback=None) or "").strip()
    return f"variable:{configured or DEFAULT_KEY_VARIABLE}"


# ---- keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class KeyRing:
    """The signing keys of links: ``keys[current]`` signs, every key in ``keys`` verifies.

    ``current`` is the id of the signing key, carried in every token it signs. The id ``""``
    is a key without an id (a Variable holding one key): its tokens are the bare mac, as links
    were before key ids, so they keep verifying. A token without a key id is checked against
    every key of the ring; a token with one only against that key.

    The ``repr`` shows the key ids only, never the keys.
    """

    current: str
    keys: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise CampaignError(
                f"KeyRing: current={shown(self.current)} is not one of the key ids {sorted(self.keys)}; "
                "name the key that signs."
            )
        for key_id, key in self.keys.items():
            if key_id and not _KEY_ID.fullmatch(key_id):
                raise CampaignError(
                    f"KeyRing: key id {shown(key_id)} is not 1 to 32 letters, digits, '-' or '_'; rename it."
                )
            if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
                raise CampaignError(
                    f"KeyRing: key {key_id!r} is not at least {MIN_KEY_BYTES} bytes; use a random secret "
                    f"(32 bytes recommended): {KEY_HELP}"
                )

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current!r}, key_ids={sorted(self.keys)})"

    @classmethod
    def single(cls, key: bytes | str) -> KeyRing:
        """A ring of one key without an id: tokens as links had before key ids."""
        return cls("", {"": key.encode("utf-8") if isinstance(key, str) else bytes(key)})

    @property
    def signing_key(self) -> bytes:
        return self.keys[self.current]

    @classmethod
    def parse(cls, value: str, source: str = "unsubscribe_key") -> KeyRing:
        """The ring a Variable's (or connection password's) text describes: one key, or a JSON
        key set ``{"current": "<id>", "keys": {"<id>": "<key>", ...}}`` (a value starting with
        ``{``). ``source`` starts the error messages; they never show a key."""
        text = str(value)
        if not text.lstrip().startswith("{"):
            key = text.encode("utf-8")
            if len(key) < MIN_KEY_BYTES:
                raise CampaignError(
                    f"{source}: the key is {len(key)} bytes long; use a random secret of at least "
                    f"{MIN_KEY_BYTES} bytes (32 recommended): {KEY_HELP}"
                )
            return cls.single(key)
        fix = f"write a key set as {KEY_SET_EXAMPLE}, or one key"
        try:
            spec = json.loads(text)
        except ValueError as exc:
            reason = (
                f"{exc.msg} at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else "invalid"
            )
            raise CampaignError(
                f"{source}: the value starts with '{{' but is not JSON ({reason}); {fix}."
            ) from None
        if not isinstance(spec, dict) or set(spec) != {"current", "keys"}:
            found = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
            raise CampaignError(
                f"{source}: a key set has exactly the fields 'current' and 'keys', not {shown(found)}; {fix}."
            )
        current, keys = spec["current"], spec["keys"]
        if not isinstance(keys, dict) or not keys:
            raise CampaignError(
                f"{source}: 'keys' must be an object of key id to key, with one key or more; {fix}."
            )
        for key_id, key in keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise CampaignError(
                    f"{source}: key id {shown(key_id)} is not 1 to 32 letters, digits, '-' or '_'; rename it."
                )
            if not isinstance(key, str) or len(key.encode("utf-8")) < MIN_KEY_BYTES:
                size = f"{len(key.encode('utf-8'))} bytes long" if isinstance(key, str) else "not a string"
                raise CampaignError(
                    f"{source}: key {key_id!r} is {size}; use a random secret of at least {MIN_KEY_BYTES} "
                    f"bytes (32 recommended): python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
        if not isinstance(current, str) or current not in keys:
            raise CampaignError(
                f"{source}: current={shown(current)} is not one of the key ids {sorted(keys)}; name the key "
                "that signs new links."
            )
        return cls(current, {key_id: key.encode("utf-8") for key_id, key in keys.items()})


def _signing_ring(key: bytes | str | KeyRing) -> KeyRing:
    if isinstance(key, KeyRing):
        return key
    if isinstance(key, (bytes, bytearray, str)):
        return KeyRing.single(bytes(key) if not isinstance(key, str) else key)
    raise CampaignError(f"key: {type(key).__name__} is not a signing key; give bytes, a str or a KeyRing.")


def _verifying_keys(keys: Any) -> list[tuple[str, bytes]] | None:
    """(key id, key) pairs from what a verifier was given, or None when it is not usable keys:
    a KeyRing, one key (bytes or str), a mapping of key id to key, or a list of keys without ids."""
    if isinstance(keys, KeyRing):
        return list(keys.keys.items())
    if isinstance(keys, (bytes, bytearray, str)):
        items: list[tuple[Any, Any]] = [("", keys)]
    elif isinstance(keys, Mapping):
        items = list(keys.items())
    elif isinstance(keys, Iterable):
        items = [("", one) for one in keys]
    else:
        return None
    pairs = []
    for key_id, key in items:
        if not isinstance(key_id, str) or (key_id and not _KEY_ID.fullmatch(key_id)):
            return None
        if isinstance(key, str):
            try:
                key = key.encode("utf-8")
            except UnicodeError:
                return None
        if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
            return None
        pairs.append((key_id, bytes(key)))
    return pairs or None


# ---- tokens -------------------------------------------------------------------------------------


def _field(value: str) -> bytes:
    data = value.encode("utf-8")
    return b"%d:%b" % (len(data), data)


def _prefix(purpose: str, delivery: str, service: str | None) -> bytes:
    """The signed message up to the recipient: every field length-prefixed, so no two
    (delivery, service, recipient[, expiry]) tuples sign the same bytes."""
    return _field(purpose) + _field(delivery) + _field(service or "")


def _tail(recipient_key: str, expires: int | None) -> bytes:
    return _field(recipient_key) + (b"" if expires is None else _field(str(expires)))


def _mac_text(digest: bytes) -> str:
    return urlsafe_b64encode(digest[:TOKEN_BYTES]).rstrip(b"=").decode("ascii")


def _token(key_id: str, mac: hmac.HMAC) -> str:
    return (f"{key_id}." if key_id else "") + _mac_text(mac.digest())


def sign(
    key: bytes | str | KeyRing,
    delivery: str,
    recipient_key: str,
    purpose: Purpose = "unsubscribe",
    service: str | None = None,
    expires: int | None = None,
) -> str:
    """The token of ``recipient_key``'s ``purpose`` link for ``delivery`` (and ``service``,
    valid until ``expires``, Unix seconds, when given), signed with the ring's current key."""
    ring = _signing_ring(key)
    message = _prefix(purpose, delivery, service) + _tail(str(recipient_key), expires)
    return _token(ring.current, hmac.new(ring.signing_key, message, hashlib.sha256))


def _check_token(keys: list[tuple[str, bytes]], token: Any, message: bytes) -> Reason | None:
    """Why ``token`` is not a good signature of ``message`` by one of ``keys``, or None when it is.
    Constant time in the token's value."""
    match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        return "malformed"
    key_id, mac = match.group(1) or "", match.group(2).encode("ascii")
    candidates = [key for one, key in keys if one == key_id] if key_id else [key for _, key in keys]
    if not candidates:
        return "unknown_key"
    good = False
    for key in candidates:
        expected = _mac_text(hmac.new(key, message, hashlib.sha256).digest()).encode("ascii")
        good |= hmac.compare_digest(expected, mac)
    return None if good else "bad_signature"


def verify(
    key: Any,
    token: Any,
    delivery: str,
    recipient_key: str,
    purpose: Purpose = "unsubscribe",
    service: str | None = None,
    expires: int | None = None,
) -> bool:
    """Whether ``token`` was signed for these fields with one of the keys (a KeyRing, one key, or
    several while a rotated key's links are still around). False, never an exception, for any
    token or key that is not valid. Expiry is not checked here (``verify_link`` does)."""
    keys = _verifying_keys(key)
    if keys is None:
        return False
    try:
        message = _prefix(purpose, delivery, service) + _tail(str(recipient_key), expires)
    except (UnicodeError, TypeError, AttributeError):
        return False
    return _check_token(keys, token, message) is None


# ---- links --------------------------------------------------------------------------------------


def check_base_url(option: str, base_url: str) -> None:
    """Raise a CampaignError unless ``base_url`` is an http(s) URL with a host and no fragment."""
    parts = urlsplit(base_url or "")
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment or " " in base_url:
        raise CampaignError(
            f"{option}={shown(base_url)}: not an http(s) URL; give the page that receives the links, such as "
            "'https://example.com/unsubscribe' (https for one-click unsubscribe, RFC 8058)."
        )


def link_ttl_seconds(value: str | float | dt.timedelta | None, option: str = "mirror_link_ttl") -> int | None:
    """Whole seconds of a link's time to live ('30d', '12h', seconds or a timedelta), or None."""
    if value is None:
        return None
    from airflow_campaign.durations import parse_duration

    seconds = parse_duration(value, option)
    if not seconds >= 1:
        raise CampaignError(
            f"{option}={shown(value)}: give how long a link works, at least one second (e.g. '30d'), or None "
            "for links that do not expire."
        )
    return int(seconds)


class LinkSigner:
    """Builds the signed links of one delivery, fast: the URL prefix and the HMAC state of
    everything but the recipient are computed once.

    :param key: the signing keys (``load_keys``), or one key as bytes.
    :param delivery: the delivery's name.
    :param base_url: the unsubscribe page, ``https://example.com/unsubscribe``.
    :param service: the subscription service the delivery is bound to, if any.
    :param mirror_base_url: the mirror page (the email as a web page), if any.
    :param mirror_ttl: mirror links stop working this long after the signer is made (seconds,
        ``'30d'`` or a timedelta); None (default): they do not expire. Unsubscribe links never do.
    :param now: the time links are made (Unix seconds; default the current time).
    """

    def __init__(
        self,
        key: bytes | str | KeyRing,
        delivery: str,
        base_url: str,
        service: str | None = None,
        mirror_base_url: str | None = None,
        mirror_ttl: str | float | dt.timedelta | None = None,
        now: float | None = None,
    ) -> None:
        check_base_url("unsubscribe_url", base_url)
        if mirror_base_url:
            check_base_url("mirror_url", mirror_base_url)
        ring = _signing_ring(key)
        ttl = link_ttl_seconds(mirror_ttl)
        self._key_id = ring.current
        self._unsubscribe = (
            _url_prefix(base_url, delivery, service),
            _mac(ring.signing_key, "unsubscribe", delivery, service),
            None,
        )
        expires = None if ttl is None else int(time.time() if now is None else now) + ttl
        self.mirror_expires = expires if mirror_base_url else None
        self._mirror = (
            (
                _url_prefix(mirror_base_url, delivery, None),
                _mac(ring.signing_key, "mirror", delivery, None),
                expires,
            )
            if mirror_base_url
            else None
        )

    def unsubscribe_url(self, recipient_key: str) -> str:
        return _link(*self._unsubscribe, self._key_id, str(recipient_key))

    def mirror_url(self, recipient_key: str) -> str | None:
        return None if self._mirror is None else _link(*self._mirror, self._key_id, str(recipient_key))


def _url_prefix(base_url: str, delivery: str, service: str | None) -> str:
    prefix = base_url + ("&" if "?" in base_url else "?") + "d=" + quote(delivery, safe="")
    if service:
        prefix += "&s=" + quote(service, safe="")
    return prefix + "&r="


def _mac(key: bytes, purpose: str, delivery: str, service: str | None) -> hmac.HMAC:
    return hmac.new(key, _prefix(purpose, delivery, service), hashlib.sha256)


def _link(prefix: str, mac: hmac.HMAC, expires: int | None, key_id: str, recipient_key: str) -> str:
    mac = mac.copy()
    mac.update(_tail(recipient_key, expires))
    expiry = "" if expires is None else f"&e={expires}"
    return prefix + quote(recipient_key, safe="") + expiry + "&t=" + _token(key_id, mac)


def unsubscribe_url(
    base_url: str, key: bytes | str | KeyRing, delivery: str, recipient_key: str, service: str | None = None
) -> str:
    """``base_url?d=<delivery>&s=<service>&r=<recipient_key>&t=<token>``, every value URL-encoded."""
    return LinkSigner(key, delivery, base_url, service).unsubscribe_url(recipient_key)


def mirror_url(
    base_url: str,
    key: bytes | str | KeyRing,
    delivery: str,
    recipient_key: str,
    ttl: str | float | dt.timedelta | None = None,
    now: float | None = None,
) -> str:
    """``base_url?d=<delivery>&r=<recipient_key>[&e=<expiry>]&t=<token>`` for the mirror page
    (purpose "mirror"), expiring ``ttl`` after ``now`` when a ttl is given."""
    check_base_url("mirror_url", base_url)
    ring = _signing_ring(key)
    expires = (
        None if ttl is None else int(time.time() if now is None else now) + int(link_ttl_seconds(ttl) or 0)
    )
    return _link(
        _url_prefix(base_url, delivery, None),
        _mac(ring.signing_key, "mirror", delivery, None),
        expires,
        ring.current,
        str(recipient_key),
    )


# ---- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkCheck:
    """The result of checking a link: ``valid``, or not and the ``reason``:

    - ``"malformed"``: not a link of this package (not text, longer than MAX_LINK_CHARS, a
      missing or repeated field, a token or expiry that is not well formed, invalid
      percent-encoding, or a purpose other than "unsubscribe" and "mirror");
    - ``"no_key"``: the keys given to the verifier are not usable (none, a wrong type, shorter
      than 16 bytes): a configuration problem of the page, not of the link;
    - ``"unknown_key"``: the token names a key id that is not among the keys;
    - ``"bad_signature"``: the token does not match the fields (a changed recipient, delivery,
      service or expiry, another purpose, a key that was removed);
    - ``"expired"``: an authentic link past its expiry (mirror links with a time to live).

    The fields are filled in when the link is valid, and for an expired one.
    """

    valid: bool
    reason: Reason | None = None
    delivery: str | None = None
    recipient_key: str | None = None
    service: str | None = None
    purpose: str | None = None
    key_id: str | None = None
    expires_at: int | None = None

    def fields(self) -> dict[str, str | None]:
        return {
            "delivery": self.delivery,
            "recipient_key": self.recipient_key,
            "service": self.service,
            "purpose": self.purpose,
        }


def _query_values(url: Any) -> dict[str, str | None] | None:
    """The link's fields d, r, s, e and t (None when absent), or None when it is not a well-formed
    query: not text, too long, a repeated field, invalid percent-encoding."""
    if isinstance(url, (bytes, bytearray)):
        try:
            url = bytes(url).decode("utf-8")
        except UnicodeError:
            return None
    if not isinstance(url, str) or len(url) > MAX_LINK_CHARS:
        return None
    try:
        query = urlsplit(url).query if "?" in url or "://" in url else url
        params = parse_qs(query, keep_blank_values=True, errors="strict")
    except (ValueError, UnicodeError):
        return None
    values: dict[str, str | None] = {}
    for name in ("d", "r", "s", "e", "t"):
        found = params.get(name, [])
        if len(found) > 1:
            return None
        values[name] = found[0] if found else None
    return values


def verify_link(
    url: Any,
    key: Any,
    purpose: Purpose = "unsubscribe",
    *,
    now: float | dt.datetime | None = None,
) -> LinkCheck:
    """Check the link the page received: ``url`` is a whole URL or its query string (str or
    bytes); ``key`` a KeyRing (``KeyRing.parse`` of the Variable's value), one key, or a list of
    keys. Never raises: whatever is given, the result says whether the link is valid and, when
    not, why (see LinkCheck). ``now`` (Unix seconds or a datetime) is for checking the expiry; a
    naive datetime is read as UTC (not local time), and anything else, like None, means the
    clock's time."""
    if not isinstance(purpose, str) or purpose not in PURPOSES:
        return LinkCheck(False, "malformed")
    keys = _verifying_keys(key)
    if keys is None:
        return LinkCheck(False, "no_key")
    values = _query_values(url)
    if values is None:
        return LinkCheck(False, "malformed")
    delivery, recipient_key, service, expiry, token = (values[n] for n in ("d", "r", "s", "e", "t"))
    if not delivery or recipient_key is None or not token:
        return LinkCheck(False, "malformed")
    if expiry is not None and not _EXPIRY.fullmatch(expiry):
        return LinkCheck(False, "malformed")
    expires = None if expiry is None else int(expiry)
    try:
        message = _prefix(purpose, delivery, service or None) + _tail(recipient_key, expires)
    except UnicodeError:  # lone surrogates in a str given as the URL
        return LinkCheck(False, "malformed")
    reason = _check_token(keys, token, message)
    if reason is not None:
        return LinkCheck(False, reason)
    key_id = token.rpartition(".")[0]
    fields: dict[str, Any] = {
        "delivery": delivery,
        "recipient_key": recipient_key,
        "service": service or None,
        "purpose": purpose,
        "key_id": key_id,
        "expires_at": expires,
    }
    if expires is not None:
        if _moment(now) >= expires:
            return LinkCheck(False, "expired", **fields)
    return LinkCheck(True, None, **fields)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _moment(now: Any) -> float:
    """Unix seconds of ``now``: a number as given, a datetime (naive read as UTC) by its
    distance to the epoch (so year 1 and year 9999 work), anything else the clock's time."""
    if isinstance(now, dt.datetime):
        try:
            aware = now if now.utcoffset() is not None else now.replace(tzinfo=dt.timezone.utc)
            return (aware - _EPOCH).total_seconds()
        except Exception:  # a tzinfo whose utcoffset fails: not a time
            return time.time()
    if isinstance(now, (int, float)) and not isinstance(now, bool):
        try:
            if math.isfinite(now):
                return float(now)
        except OverflowError:  # an int beyond what a float holds: later than any expiry
            return math.inf if now > 0 else -math.inf
    return time.time()


def parse_and_verify(url: Any, key: Any, purpose: Purpose = "unsubscribe") -> dict[str, str | None] | None:
    """For the page that receives a link: ``{"delivery", "recipient_key", "service", "purpose"}``
    when ``url`` (a whole URL or its query string) carries a valid, unexpired token, else None
    (never an exception). ``verify_link`` says why a link is not valid."""
    check = verify_link(url, key, purpose)
    return check.fields() if check.valid else None


# ---- the keys, from Airflow ---------------------------------------------------------------------


def _read_secret(spec: str, option: str) -> str:
    """The text of the Variable or connection password ``spec`` names."""
    kind, _, name = (spec or "").partition(":") if isinstance(spec, str) else ("", "", "")
    if kind not in ("variable", "connection") or not name.strip():
        raise CampaignError(
            f"{option}={shown(spec)}: name the key as 'variable:<name>' (an Airflow Variable) or "
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
    return str(value)


def mask_keys(value: str, ring: KeyRing | None = None) -> None:
    """Register the secret text ``value`` and every key of ``ring`` with Airflow's secrets
    masker, so that they show as ``***`` in task logs (and in the supervisor's)."""
    from airflow.sdk.log import mask_secret

    mask_secret(value)
    for key in ring.keys.values() if ring else ():
        try:
            mask_secret(key.decode("utf-8"))
        except UnicodeError:  # a key that is not text cannot appear in a log line as itself
            continue


def load_keys(spec: str | None = None, option: str = "unsubscribe_key") -> KeyRing:
    """The signing keys named by ``spec``: ``variable:<name>`` (an Airflow Variable) or
    ``connection:<conn_id>`` (the password of an Airflow connection), holding one key (at least
    16 bytes) or a JSON key set ``{"current": "k2", "keys": {"k1": "...", "k2": "..."}}``.
    ``None``: :func:`default_key_spec`. The keys are masked in the logs as soon as they are read."""
    if spec is None:
        spec = default_key_spec()
    value = _read_secret(spec, option)
    mask_keys(value)
    ring = KeyRing.parse(value, source=f"{option}={spec!r}")
    mask_keys(value, ring)
    return ring


def load_key(spec: str | None = None, option: str = "unsubscribe_key") -> bytes:
    """The key that signs new links (the current one of a key set); see ``load_keys``."""
    return load_keys(spec, option).signing_key
