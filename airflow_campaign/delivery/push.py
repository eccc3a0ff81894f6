"""Push content: the APNs and FCM payloads of one notification, built per platform, and their size.

A push delivery sends one message per *device* (a row of ``campaign.app_subscriptions``): the
ledger's destination is ``<platform>:<subscription id>`` and its address the device's SNS
endpoint ARN. Each message is one SNS ``Publish(TargetArn=…, MessageStructure="json")`` whose
message maps ``APNS``, ``APNS_SANDBOX`` and ``GCM`` to the payload of that platform (SNS hands
each endpoint the one for its platform):

- **APNs**: ``{"aps": {"alert": {"title", "body"}, "badge", "sound", "category", "thread-id",
  "mutable-content": 1, "content-available": 1}, <custom keys>}``; a silent push has
  ``content-available`` and no alert, sound or badge.
- **FCM v1** (what SNS sends to Firebase): ``{"fcmV1Message": {"message": {"notification":
  {"title", "body", "image"}, "data": {<custom keys as strings>}, "android": {"priority",
  "collapse_key", "ttl"}}}}``; a silent push has data only.

Both services refuse a payload over 4,096 bytes, so the size is checked after
personalisation, for the device's own platform: over it, the device is excluded before sending
(``payload too large``), never cut.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow_campaign.channels.base import Envelope
from airflow_campaign.errors import CampaignError

Platform = Literal["ios", "android"]
AndroidPriority = Literal["high", "normal"]
MAX_PAYLOAD = 4096  # bytes, APNs and FCM alike
PUSH_BUILTINS = frozenset({"recipient", "delivery", "platform"})
#: Keys a custom ``data`` entry may not take: they belong to the payload itself.
RESERVED = frozenset({"aps", "fcmV1Message", "from", "notification", "message_type", "collapse_key"})


@dataclass(frozen=True)
class PushContent:
    """What every device receives (each text field a Jinja template over the recipient's row)."""

    title: str | None = None
    body: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)
    deeplink: str | None = None
    media_url: str | None = None
    badge: int | None = None
    sound: str | None = None
    category: str | None = None
    thread_id: str | None = None
    mutable_content: bool = False
    silent: bool = False
    android_priority: AndroidPriority = "high"
    collapse_key: str | None = None
    ttl: int | None = None  # seconds


class CompiledPush:
    """The templates of a notification, compiled once in the sandbox; ``render`` fills them."""

    def __init__(self, content: PushContent) -> None:
        from airflow_campaign.delivery.render import _TEXT_ENV, _compile, _variables

        if content.silent and (content.title or content.body or content.sound or content.badge is not None):
            raise CampaignError(
                "silent=True: a silent push wakes the app with data only; leave out title, body, sound and "
                "badge (or set silent=False)."
            )
        if not content.silent and not (content.body or "").strip():
            raise CampaignError(
                "body: give the notification's text (a Jinja template), or silent=True for data only."
            )
        for key in content.data:
            if not isinstance(key, str) or not key or key in RESERVED or key.startswith("google."):
                raise CampaignError(
                    f"data: {key!r} cannot be a custom key (reserved: {', '.join(sorted(RESERVED))}, google.*); "
                    "rename it."
                )
        self.content = content
        sources: dict[str, str] = {}
        for name in ("title", "body", "deeplink", "media_url"):
            value = getattr(content, name)
            if value is not None:
                sources[name] = value
        for key, value in content.data.items():
            if not isinstance(value, str):
                raise CampaignError(
                    f"data[{key!r}]={value!r}: give text (a template); FCM data values are strings."
                )
            sources[f"data[{key!r}]"] = value
        self._templates = {}
        self.variables: frozenset[str] = frozenset()
        for name, source in sources.items():
            template, ast = _compile(_TEXT_ENV, source, "text")
            self._templates[name] = template
            self.variables |= _variables(ast)
        first = next(iter(self._templates.values()), None)
        self._globals = dict(first.globals) if first is not None else {}

    def check(self, columns: Iterable[str]) -> None:
        available = list(dict.fromkeys(columns))
        missing = sorted(self.variables - set(available) - PUSH_BUILTINS)
        if missing:
            raise CampaignError(
                f"the notification uses {', '.join('{{ ' + m + ' }}' for m in missing)}, not a column of the "
                f"population. Columns: {', '.join(available) or '(none)'}; built-ins: "
                f"{', '.join(sorted(PUSH_BUILTINS))}. Add the column or change the template."
            )

    def render(self, row: Mapping[str, Any]) -> dict[str, str]:
        from airflow_campaign.delivery.render import _run

        context = {**self._globals, **row}
        return {name: _run(t, context, name).strip() for name, t in self._templates.items()}


def apns_payload(content: PushContent, texts: Mapping[str, str]) -> dict[str, Any]:
    aps: dict[str, Any] = {}
    if content.silent:
        aps["content-available"] = 1
    else:
        alert = {"body": texts.get("body", "")}
        if texts.get("title"):
            alert["title"] = texts["title"]
        aps["alert"] = alert
        if content.badge is not None:
            aps["badge"] = content.badge
        if content.sound:
            aps["sound"] = content.sound
        if content.mutable_content or content.media_url:
            aps["mutable-content"] = 1
    if content.category:
        aps["category"] = content.category
    if content.thread_id:
        aps["thread-id"] = content.thread_id
    payload: dict[str, Any] = {"aps": aps}
    payload.update(_custom(content, texts))
    return payload


def fcm_payload(content: PushContent, texts: Mapping[str, str]) -> dict[str, Any]:
    message: dict[str, Any] = {}
    if not content.silent:
        notification = {"body": texts.get("body", "")}
        if texts.get("title"):
            notification["title"] = texts["title"]
        if texts.get("media_url"):
            notification["image"] = texts["media_url"]
        message["notification"] = notification
    data = _custom(content, texts)
    if data:
        message["data"] = data
    android: dict[str, Any] = {"priority": content.android_priority.upper()}
    if content.collapse_key:
        android["collapse_key"] = content.collapse_key
    if content.ttl is not None:
        android["ttl"] = f"{content.ttl}s"
    message["android"] = android
    return {"fcmV1Message": {"message": message}}


def _custom(content: PushContent, texts: Mapping[str, str]) -> dict[str, str]:
    out = {key: texts[f"data[{key!r}]"] for key in content.data}
    if texts.get("deeplink"):
        out["deeplink"] = texts["deeplink"]
    if texts.get("media_url"):
        out["media_url"] = texts["media_url"]
    return out


def size(payload: Mapping[str, Any]) -> int:
    """The payload's size on the wire: compact JSON, UTF-8."""
    return len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())


def sns_message(apns: Mapping[str, Any], fcm: Mapping[str, Any]) -> str:
    """The ``MessageStructure="json"`` message: one payload per SNS platform key."""
    compact = {"ensure_ascii": False, "separators": (",", ":")}
    ios = json.dumps(apns, **compact)  # type: ignore[arg-type]
    return json.dumps(
        {"default": "", "APNS": ios, "APNS_SANDBOX": ios, "GCM": json.dumps(fcm, **compact)},  # type: ignore[arg-type]
        ensure_ascii=False,
    )


def too_large(platform: str, nbytes: int) -> str:
    return f"payload too large ({platform}: {nbytes} bytes > {MAX_PAYLOAD})"


class PushComposer:
    """Renders each device's notification and packs the per-platform payloads.

    The envelope's message is JSON: ``{"to", "platform", "payload" (the device's platform's),
    "sns_message" (the SNS MessageStructure=json message), "ttl", "delivery"}``.
    """

    def __init__(self, compiled: CompiledPush, delivery: str) -> None:
        self.compiled = compiled
        self.delivery = delivery

    def compose(self, rows: Sequence[dict[str, Any]]) -> tuple[list[Envelope], list[tuple[int, str]]]:
        from airflow_campaign.delivery.engine import LOG_ID, RECIPIENT, SEND_TO
        from airflow_campaign.delivery.render import RenderError

        envelopes: list[Envelope] = []
        refused: list[tuple[int, str]] = []
        content = self.compiled.content
        for row in rows:
            log_id = int(row[LOG_ID])
            if row.get(RECIPIENT) is None:
                raise RenderError(
                    f"ledger row {log_id}: no recipient row to personalise the notification with."
                )
            platform = str(row.get("_campaign_destination") or "").partition(":")[0]
            to = row[SEND_TO]
            try:
                texts = self.compiled.render(
                    {**row, "recipient": to, "delivery": self.delivery, "platform": platform}
                )
            except CampaignError as exc:
                raise RenderError(
                    f"{exc} (recipient {str(row[RECIPIENT])[:100]!r}, ledger row {log_id}). Nothing more is sent: "
                    "fix the template and clear the task; the devices not sent to yet are still pending."
                ) from exc
            apns, fcm = apns_payload(content, texts), fcm_payload(content, texts)
            own = apns if platform == "ios" else fcm
            nbytes = size(own)
            if nbytes > MAX_PAYLOAD:
                refused.append((log_id, too_large(platform, nbytes)))
                continue
            message = {
                "to": to,
                "platform": platform,
                "payload": own,
                "sns_message": sns_message(apns, fcm),
                "ttl": content.ttl,
                "delivery": self.delivery,
            }
            envelopes.append(Envelope(log_id, to, json.dumps(message, ensure_ascii=False).encode()))
        return envelopes, refused
