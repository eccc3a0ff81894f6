"""PushDeliveryOperator (a notification to each device of an app) and RegisterDevicesOperator
(device tokens to SNS platform endpoints)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, cast

import psycopg
import psycopg.rows
from psycopg import sql

from airflow_campaign import options as opt
from airflow_campaign.delivery import engine
from airflow_campaign.delivery.push import MAX_PAYLOAD, AndroidPriority, PushContent, size, too_large
from airflow_campaign.delivery.typology import (
    Denylisted,
    DuplicateAddress,
    MissingAddress,
    NotSubscribed,
    OncePerPeriod,
    Quarantined,
    Rule,
    Typology,
)
from airflow_campaign.durations import parse_duration
from airflow_campaign.errors import CampaignError, shown
from airflow_campaign.hooks.campaign import CampaignHook, qualified
from airflow_campaign.operators.base import CampaignBaseOperator, check_choice, literal_choices
from airflow_campaign.operators.deliveries import DeliveryOperator, resolve_channel
from airflow_campaign.resources import Resource

PushChannelName = Literal["outbox", "sns"]
RENDER_PAGE = 2000
REGISTER_PAGE = 500
MAX_TTL = 28 * 86400  # FCM keeps a message at most 4 weeks


def profile_ids(option: str, value: Any) -> list[str]:
    """A list of profile ids (integers, or strings of digits)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise CampaignError(f"{option}={shown(value)}: give a list of profile ids, e.g. [42].")
    for item in value:
        if isinstance(item, bool) or not (
            isinstance(item, int) or (isinstance(item, str) and item.isascii() and item.isdigit())
        ):
            raise CampaignError(f"{option}: {shown(item)} is not a profile id; give integers, e.g. [42].")
    return [str(item) for item in value]


def push_typology(*, once_per_period: bool = False, extra: Sequence[Rule] = ()) -> Typology:
    """Device missing (no enabled install of the app, or not registered), denylisted
    (``push_denylisted``), quarantined (an endpoint found disabled), not subscribed, the same
    endpoint twice, (already sent this period), your extra rules."""
    rules: list[Rule] = [MissingAddress(), Denylisted(), Quarantined(), NotSubscribed(), DuplicateAddress()]
    if once_per_period:
        rules.append(OncePerPeriod())
    rules.extend(extra)
    return Typology(rules)


class PushDeliveryOperator(DeliveryOperator):
    """Send a personalised mobile notification to each device of an app, never twice.

    :param app: the app (``campaign.app_subscriptions.app``): each enabled install of it by a
        recipient is one device, one ledger row, one message.
    :param title: the notification's title (a Jinja template over the population's columns and
        ``{{ platform }}``).
    :param body: its text (a template); required unless ``silent``.
    :param data: custom keys delivered to the app, ``{"offer": "{{ offer_code }}"}`` (templates;
        FCM ``data`` and APNs top-level keys).
    :param deeplink: a link the app opens (a template), sent as the custom key ``deeplink``.
    :param media_url: an image (a template): FCM ``notification.image``, APNs ``mutable-content``
        and the custom key ``media_url`` for the app's service extension.
    :param badge: the app icon's badge number (APNs).
    :param sound: the sound to play (APNs), e.g. ``"default"``.
    :param category: the APNs category (actions) of the notification.
    :param thread_id: the APNs thread it is grouped in.
    :param mutable_content: let the app's notification service extension modify it (APNs).
    :param silent: a background push: ``content-available`` (APNs) / data only (FCM), no alert.
    :param android_priority: ``"high"`` (default) or ``"normal"`` (FCM).
    :param collapse_key: a newer message with the same key replaces an undelivered one (FCM).
    :param ttl: how long the push services keep trying (``"6h"``, seconds, a timedelta; at most
        28 days): FCM ``android.ttl`` and the SNS TTL attributes of every platform. None: their default.
    :param platforms: only these platforms (``["ios"]``); default both.
    :param channel: ``"sns"`` (SNS platform endpoints, registered by RegisterDevicesOperator) or
        ``"outbox"`` (one ``.json`` file per device).
    :param channel_options: sns ``{"aws_conn_id", "threads", "region_name"}``; outbox ``{"folder"}``.
    :param proof_to: test profiles (ids of ``campaign.profiles``): instead of the delivery, each
        enabled install of the app by these profiles gets a proof (title prefixed ``[PROOF]``; a
        silent push carries the custom key ``proof``) of a first recipient's notification. The
        ledger is not touched.

    The payload of each device's platform is checked after personalisation: over 4,096 bytes it
    is excluded (``payload too large``) before anything is sent. A device whose endpoint SNS
    reports disabled is disabled in ``campaign.app_subscriptions`` and quarantined, so the next
    delivery leaves it out. Every parameter of the delivery engine is on :class:`DeliveryOperator`.
    """

    channel_name = "push"
    default_address_column = "id"
    ui_color = "#f3e3fa"

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "app": opt.name,
        "title": opt.optional(opt.text),
        "body": opt.optional(opt.text),
        "data": opt.optional(opt.string_mapping),
        "deeplink": opt.optional(opt.text),
        "media_url": opt.optional(opt.text),
        "badge": opt.optional(opt.integer(0, 1_000_000)),
        "sound": opt.optional(opt.text),
        "category": opt.optional(opt.text),
        "thread_id": opt.optional(opt.text),
        "mutable_content": opt.flag,
        "silent": opt.flag,
        "collapse_key": opt.optional(opt.text),
        "channel_options": opt.optional(opt.mapping),
        "proof_to": opt.optional(profile_ids),
    }

    def __init__(
        self,
        *,
        app: str,
        title: str | None = None,
        body: str | None = None,
        data: Mapping[str, str] | None = None,
        deeplink: str | None = None,
        media_url: str | None = None,
        badge: int | None = None,
        sound: str | None = None,
        category: str | None = None,
        thread_id: str | None = None,
        mutable_content: bool = False,
        silent: bool = False,
        android_priority: AndroidPriority = "high",
        collapse_key: str | None = None,
        ttl: str | float | dt.timedelta | None = None,
        platforms: Sequence[str] | None = None,
        channel: PushChannelName | None = None,
        channel_options: dict[str, Any] | None = None,
        proof_to: Sequence[int | str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from airflow_campaign.delivery.push import CompiledPush

        check_choice("android_priority", android_priority, literal_choices(AndroidPriority))
        chosen = cast(PushChannelName, resolve_channel(channel, literal_choices(PushChannelName)))
        self.check_channel_options(chosen, channel_options)
        seconds = None
        if ttl is not None:
            seconds = int(parse_duration(ttl, "ttl"))
            if not 0 <= seconds <= MAX_TTL:
                raise CampaignError(
                    f"ttl={ttl!r}: give a duration from 0 to 28 days (FCM keeps no message longer)."
                )
        for platform in platforms or ():
            if platform not in ("ios", "android"):
                raise CampaignError(
                    f"platforms: {shown(platform)} is not a platform; give 'ios' and/or 'android'."
                )
        self.content = PushContent(
            title=title,
            body=body,
            data=dict(data or {}),
            deeplink=deeplink,
            media_url=media_url,
            badge=badge,
            sound=sound,
            category=category,
            thread_id=thread_id,
            mutable_content=mutable_content,
            silent=silent,
            android_priority=android_priority,
            collapse_key=collapse_key,
            ttl=seconds,
        )
        self.compiled = CompiledPush(self.content)
        self.app = app
        self.title = title
        self.body = body
        self.data = dict(data or {})
        self.deeplink = deeplink
        self.media_url = media_url
        self.badge = badge
        self.sound = sound
        self.category = category
        self.thread_id = thread_id
        self.mutable_content = mutable_content
        self.silent = silent
        self.android_priority: AndroidPriority = android_priority
        self.collapse_key = collapse_key
        self.ttl = ttl
        self.platforms = list(platforms) if platforms else ["ios", "android"]
        self.channel: PushChannelName = chosen
        self.channel_options = dict(channel_options or {})
        self.proof_to = [str(p) for p in proof_to or []]

    # ---- what the engine asks of a channel -------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        return {"app": self.app, "title": self.title, "body": self.body, "channel": self.channel}

    def default_typology(self) -> Typology:
        return push_typology(once_per_period=self.once_per_period)

    def check_content(self, columns: Sequence[str]) -> None:
        self.compiled.check(columns)

    def channel_option_names(self, kind: str) -> list[str]:
        from airflow_campaign.channels.push import push_channel_options

        return push_channel_options(kind)

    def build_channel(self, kind: str, **options: Any) -> Any:
        from airflow_campaign.channels.push import push_channel

        return push_channel(cast(PushChannelName, kind), **options)

    def make_composer(self, columns: Sequence[str]) -> engine.Composer:
        from airflow_campaign.delivery.push import PushComposer

        return PushComposer(self.compiled, self._name)

    # ---- proofs: to the devices of test profiles -------------------------------------------------

    def proofs(self, conn: psycopg.Connection, targets: str, context: Any) -> dict[str, Any] | None:
        if not self.proof_to:
            return None
        from dataclasses import replace

        from airflow_campaign.delivery.push import CompiledPush, PushComposer

        devices = conn.execute(
            "SELECT profile_id::text, id, platform, endpoint, device_token FROM campaign.app_subscriptions"
            " WHERE profile_id::text = ANY(%s) AND app = %s AND enabled AND platform = ANY(%s)"
            " ORDER BY profile_id, id",
            (self.proof_to, self.app, self.platforms),
        ).fetchall()
        if self.channel == "sns":
            devices = [d for d in devices if d[3]]
        without = [p for p in self.proof_to if p not in {d[0] for d in devices}]
        if without:
            registered = " registered (with an SNS endpoint)" if self.channel == "sns" else ""
            raise CampaignError(
                f"proof_to: profile(s) {without} have no enabled{registered} install of app {self.app!r} "
                f"on {self.platforms}; install the app on a test device for them (and register it "
                "with RegisterDevicesOperator for sns), or leave them out of proof_to."
            )
        content = self.content
        if content.silent:
            content = replace(content, data={**content.data, "proof": "true"})
        elif content.title:
            content = replace(content, title="[PROOF] " + content.title)
        else:
            content = replace(content, body="[PROOF] " + (content.body or ""))
        to = [
            endpoint if self.channel == "sns" else endpoint or f"{platform}:{token}"
            for _, _, platform, endpoint, token in devices
        ]
        extra = [{"_campaign_destination": f"{platform}:{device}"} for _, device, platform, _, _ in devices]
        outcome = self.send_proofs(conn, targets, to, PushComposer(CompiledPush(content), self._name), extra)
        return {**outcome, "profiles": list(self.proof_to)}

    # ---- prepare: one row per device, sizes checked --------------------------------------------

    def _devices(self, targets: sql.Composable) -> sql.Composable:
        """Each recipient's enabled installs of the app (a recipient with none: one row, no device)."""
        return sql.SQL(
            "SELECT t.*, a.id AS _campaign_device, a.platform AS _campaign_platform, a.endpoint AS _campaign_endpoint,"
            " a.device_token AS _campaign_token FROM {t} t LEFT JOIN campaign.app_subscriptions a"
            " ON a.profile_id::text = t.{rk} AND a.app = {app} AND a.enabled AND a.platform = ANY({platforms})"
        ).format(
            t=targets,
            rk=sql.Identifier(engine.RECIPIENT),
            app=sql.Literal(self.app),
            platforms=sql.Literal(self.platforms),
        )

    def destinations(
        self, conn: psycopg.Connection, targets: str, resource: Resource, context: Any
    ) -> sql.Composable | None:
        if resource.table != "campaign.profiles":
            raise CampaignError(
                f"population: a push goes to the devices of profiles (campaign.app_subscriptions); this "
                f"population is of resource {resource.name!r}. Reconcile it with profiles first."
            )
        devices = self._devices(qualified(targets))
        over = self._check_sizes(conn, devices)
        if over:
            self.log.warning(
                "%s: %d device(s) would get a payload over %d bytes after personalisation: excluded "
                "(payload too large), never cut",
                self._name,
                over,
                MAX_PAYLOAD,
            )
        # the outbox needs no endpoint: the device's token stands for it
        address = (
            sql.SQL("d._campaign_endpoint")
            if self.channel == "sns"
            else sql.SQL("coalesce(d._campaign_endpoint, d._campaign_platform || ':' || d._campaign_token)")
        )
        return sql.SQL(
            "SELECT d.{rk}, coalesce(d._campaign_platform || ':' || d._campaign_device, ''), {address},"
            " CASE WHEN d._campaign_device IS NULL THEN {none}"
            " WHEN {address} IS NULL THEN 'device not registered (no SNS endpoint)'"
            " ELSE l.reason END"
            " FROM ({devices}) d LEFT JOIN push_too_large l ON l.device = d._campaign_device"
        ).format(
            rk=sql.Identifier(engine.RECIPIENT),
            address=address,
            none=sql.Literal(f"no device (no enabled install of {self.app})"),
            devices=devices,
        )

    def _check_sizes(self, conn: psycopg.Connection, devices: sql.Composable) -> int:
        """Render every device's payload once; keep the ones over 4 KB in ``push_too_large``."""
        from airflow_campaign.delivery.push import apns_payload, fcm_payload
        from airflow_campaign.delivery.render import RenderError

        conn.execute(
            "CREATE TEMP TABLE push_too_large (device bigint PRIMARY KEY, reason text) ON COMMIT DROP"
        )
        over: list[tuple[int, str]] = []
        render, content = self.compiled.render, self.content
        with conn.cursor(name="push_sizes", row_factory=psycopg.rows.dict_row) as cur:
            cur.itersize = RENDER_PAGE
            cur.execute(sql.SQL("SELECT * FROM ({}) d WHERE d._campaign_device IS NOT NULL").format(devices))
            for row in cur:
                platform = row["_campaign_platform"]
                try:
                    texts = render(
                        {
                            **row,
                            "recipient": row["_campaign_endpoint"] or "",
                            "delivery": self._name,
                            "platform": platform,
                        }
                    )
                except CampaignError as exc:
                    raise RenderError(
                        f"{exc} (recipient {str(row[engine.RECIPIENT])[:100]!r}). Nothing was prepared: fix the template."
                    ) from exc
                payload = apns_payload(content, texts) if platform == "ios" else fcm_payload(content, texts)
                nbytes = size(payload)
                if nbytes > MAX_PAYLOAD:
                    over.append((int(row["_campaign_device"]), too_large(platform, nbytes)))
        if over:
            CampaignHook.copy_rows_in(conn, "push_too_large", ["device", "reason"], over)
        return len(over)

    def after_send(self, conn: psycopg.Connection, occurrence_id: int) -> None:
        """Devices SNS reported disabled or unknown: subscription disabled, endpoint quarantined."""
        rows = conn.execute(
            "WITH dead AS (SELECT DISTINCT address FROM campaign.delivery_logs WHERE occurrence_id = %s"
            " AND status = 'failed' AND (error LIKE 'EndpointDisabled%%' OR error LIKE 'NotFound%%'"
            " OR error LIKE 'InvalidPlatformToken%%') AND address LIKE 'arn:%%'),"
            " off AS (UPDATE campaign.app_subscriptions a SET enabled = false, updated_at = now() FROM dead"
            " WHERE a.endpoint = dead.address AND a.enabled RETURNING 1),"
            " q AS (INSERT INTO campaign.quarantine AS q (channel, address, reason) SELECT 'push', lower(address),"
            " 'invalid' FROM dead ON CONFLICT (channel, address) DO UPDATE SET event_count = q.event_count + 1,"
            " updated_at = now() RETURNING 1)"
            " SELECT (SELECT count(*) FROM dead), (SELECT count(*) FROM off)",
            (occurrence_id,),
        ).fetchone()
        if rows and rows[0]:
            self.log.warning(
                "%s: %d endpoint(s) SNS reported disabled or unknown: %d subscription(s) disabled and the "
                "endpoints quarantined",
                self._name,
                rows[0],
                rows[1],
            )


class RegisterDevicesOperator(CampaignBaseOperator):
    """Register an app's device tokens as Amazon SNS platform endpoints.

    :param app: the app whose installs (``campaign.app_subscriptions``) to register.
    :param platform_applications: the SNS platform application ARN of each platform,
        ``{"ios": "arn:aws:sns:...:app/APNS/shop", "android": "arn:aws:sns:...:app/GCM/shop"}``.
    :param aws_conn_id: the amazon provider's AWS connection.
    :param region_name: the AWS region, when the connection does not name one.

    Each enabled install without an endpoint gets one (``CreatePlatformEndpoint``, idempotent for
    a token SNS already has), written back in pages of 500; a token SNS refuses
    (``InvalidParameter``) disables its install. Returns the counts.
    """

    ui_color = "#f3e3fa"
    template_fields: Sequence[str] = ("app",)
    option_checks: ClassVar[dict[str, opt.Check]] = {
        "app": opt.name,
        "platform_applications": opt.string_mapping,
    }

    def __init__(
        self,
        *,
        app: str,
        platform_applications: Mapping[str, str],
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for platform, arn in platform_applications.items():
            if platform not in ("ios", "android"):
                raise CampaignError(
                    f"platform_applications: {shown(platform)} is not a platform; the keys are 'ios' and 'android'."
                )
            if not isinstance(arn, str) or not arn.startswith("arn:"):
                raise CampaignError(
                    f"platform_applications[{platform!r}]={shown(arn)}: give the SNS platform application's ARN "
                    "('arn:aws:sns:<region>:<account>:app/APNS/<name>')."
                )
        if not platform_applications:
            raise CampaignError(
                "platform_applications: give the SNS platform application ARN of each platform."
            )
        self.app = app
        self.platform_applications = dict(platform_applications)
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name

    def execute(self, context: Any) -> dict[str, int]:
        from airflow_campaign.channels.ses import classify, make_client

        client = make_client("sns", self.aws_conn_id, self.region_name, 1, "RegisterDevicesOperator")
        counts = {"registered": 0, "refused": 0}
        conn = self.autocommit_connection()
        try:
            self.require_schema(conn)
            while True:
                with conn.transaction():
                    rows = conn.execute(
                        "SELECT id, platform, device_token, profile_id FROM campaign.app_subscriptions"
                        " WHERE app = %s AND enabled AND endpoint IS NULL AND platform = ANY(%s)"
                        " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                        (self.app, list(self.platform_applications), REGISTER_PAGE),
                    ).fetchall()
                    if not rows:
                        break
                    done: list[tuple[int, str | None]] = []
                    for sub_id, platform, token, profile_id in rows:
                        try:
                            response = client.create_platform_endpoint(
                                PlatformApplicationArn=self.platform_applications[platform],
                                Token=token,
                                CustomUserData=str(profile_id),
                            )
                            done.append((int(sub_id), str(response["EndpointArn"])))
                        except Exception as exc:
                            kind, text = classify(exc)
                            if kind != "permanent":
                                raise CampaignError(
                                    f"app={self.app!r}: SNS did not register device {sub_id} ({text}); the devices "
                                    f"registered so far are kept ({counts['registered']}). Retry the task."
                                ) from exc
                            self.log.warning("device %s: token refused by SNS (%s); disabled", sub_id, text)
                            done.append((int(sub_id), None))
                    conn.execute(
                        "CREATE TEMP TABLE IF NOT EXISTS registered (id bigint, endpoint text) ON COMMIT DROP"
                    )
                    CampaignHook.copy_rows_in(conn, "registered", ["id", "endpoint"], done)
                    conn.execute(
                        "UPDATE campaign.app_subscriptions a SET endpoint = r.endpoint, enabled = r.endpoint IS NOT NULL,"
                        " updated_at = now() FROM registered r WHERE a.id = r.id"
                    )
                counts["registered"] += sum(1 for _, e in done if e)
                counts["refused"] += sum(1 for _, e in done if not e)
                self.log.info(
                    "%s: %d device(s) registered, %d refused so far",
                    self.app,
                    counts["registered"],
                    counts["refused"],
                )
        finally:
            conn.close()
            client.close()
        return counts
