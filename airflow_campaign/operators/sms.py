"""SmsDeliveryOperator: a personalised SMS to a population, once or on a schedule, never twice."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, cast

import psycopg
import psycopg.rows
from psycopg import sql

from airflow_campaign import options as opt
from airflow_campaign.delivery import engine
from airflow_campaign.delivery.sms import MAX_PARTS_LIMIT, MessageType, parts_of, too_long
from airflow_campaign.delivery.typology import E164_SYNTAX, Typology, sms_typology
from airflow_campaign.errors import CampaignError, shown
from airflow_campaign.hooks.campaign import CampaignHook, qualified
from airflow_campaign.operators.base import check_choice, literal_choices
from airflow_campaign.operators.deliveries import DeliveryOperator, resolve_channel
from airflow_campaign.resources import Resource

SmsChannelName = Literal["outbox", "sns"]
REGION = "_campaign_region"
NORMALISE_PAGE = 5000  # distinct raw numbers parsed per round trip
RENDER_PAGE = 2000  # recipients fetched per page when prepare counts the parts
_SENDER_ID = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9]{1,11}$")
_E164 = re.compile(E164_SYNTAX)


class SmsDeliveryOperator(DeliveryOperator):
    """Send a personalised SMS to a population, once or on a schedule, never twice to anyone.

    :param text: the message (a Jinja template over the population's columns, plus
        ``{{ recipient }}``, the E.164 number, and ``{{ delivery }}``).
    :param stop_footer: added on a line of its own after the text: how to opt out (``"STOP 36111"``).
        Required for ``message_type="promotional"``.
    :param message_type: ``"promotional"`` (default) or ``"transactional"`` (SNS ``SMSType``).
    :param sender_id: an alphanumeric sender id (1-11 letters and digits, at least one letter),
        where the destination countries allow one.
    :param origination_number: the number messages come from, in E.164 (a toll-free number, a
        10DLC or short code registered for the account).
    :param max_parts: at most this many parts per message after personalisation (1-10, default
        3); a longer message is excluded with the reason ``message too long``, never truncated.
        The prepare step counts every recipient's parts and logs how many are over.
    :param transliterate: replace characters outside GSM 03.38 with their closest GSM-7 spelling
        (``ç`` → ``c``, ``’`` → ``'``), so the message goes as GSM-7 (160 characters a part, not 70).
    :param region_column: the column (population, else resource) holding each profile's region
        code (ISO 3166 alpha-2, e.g. ``FR``) for reading national numbers (``06 12 34 56 78``);
        default ``country``. ``None``: only ``default_region``.
    :param default_region: the region for profiles whose ``region_column`` is empty (or for all
        when it is None). Without a region, only international numbers (``+33…``) are valid.
    :param channel: ``"sns"`` (Amazon SNS) or ``"outbox"`` (one ``.json`` file per message, for
        demos and dry runs). Required, unless ``[campaign] default_channel`` names one of them.
    :param channel_options: the channel's options: sns ``{"aws_conn_id", "threads",
        "region_name", "max_price"}``; outbox ``{"folder"}`` or ``{"null": True}``.
    :param proof_to: send a proof (prefixed ``[PROOF]``) of the first recipients' messages to these
        numbers (E.164) only; nothing goes to the population and the ledger is not touched.

    Phone numbers are normalised to E.164 with ``phonenumbers`` once per distinct raw value and
    region, cached in ``campaign.phone_numbers``; a number that is not valid is excluded with
    the reason ``invalid phone number (...)``. The address column defaults to ``phone``, the
    typology to :func:`~airflow_campaign.delivery.typology.sms_typology`. Every parameter of the
    delivery engine (``delivery``, ``service``, ``mode``, ``shard``, ``on_backfill``,
    ``rate_limit``, ...) is described on :class:`DeliveryOperator`.
    """

    channel_name = "sms"
    default_address_column = "phone"
    ui_color = "#e3ecfa"

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "text": opt.text,
        "stop_footer": opt.optional(opt.text),
        "sender_id": opt.optional(opt.text),
        "origination_number": opt.optional(opt.text),
        "max_parts": opt.integer(1, MAX_PARTS_LIMIT),
        "transliterate": opt.flag,
        "region_column": opt.optional(opt.name),
        "default_region": opt.optional(opt.text),
        "channel_options": opt.optional(opt.mapping),
        "proof_to": opt.optional(opt.names),
    }

    def __init__(
        self,
        *,
        text: str,
        stop_footer: str | None = None,
        message_type: MessageType = "promotional",
        sender_id: str | None = None,
        origination_number: str | None = None,
        max_parts: int = 3,
        transliterate: bool = False,
        region_column: str | None = "country",
        default_region: str | None = None,
        channel: SmsChannelName | None = None,
        channel_options: dict[str, Any] | None = None,
        proof_to: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from airflow_campaign.delivery.sms import CompiledSms, check_region

        check_choice("message_type", message_type, literal_choices(MessageType))
        chosen = cast(SmsChannelName, resolve_channel(channel, literal_choices(SmsChannelName)))
        self.check_channel_options(chosen, channel_options)
        if message_type == "promotional" and not (stop_footer or "").strip():
            raise CampaignError(
                "stop_footer: a promotional SMS must tell its recipient how to opt out, e.g. "
                "stop_footer='STOP 36111' (added after the text); or message_type='transactional' for "
                "messages the recipient asked for (a code, an order update)."
            )
        if sender_id is not None and not _SENDER_ID.match(sender_id):
            raise CampaignError(
                f"sender_id={shown(sender_id)}: a sender id is 1 to 11 letters and digits with at least one "
                "letter (e.g. 'ACME'); leave it out to send from the account's number."
            )
        if origination_number is not None and not _E164.match(origination_number):
            raise CampaignError(
                f"origination_number={shown(origination_number)}: give the number in E.164, e.g. '+18005550100'."
            )
        self.default_region = check_region("default_region", default_region)
        self.compiled = CompiledSms(text, footer=stop_footer, transliterate=transliterate)
        for number in proof_to or []:
            if not isinstance(number, str) or not _E164.match(number):
                raise CampaignError(
                    f"proof_to: {shown(number)} is not a phone number in E.164 ('+33612345678')."
                )
        self.text = text
        self.stop_footer = stop_footer
        self.message_type: MessageType = message_type
        self.sender_id = sender_id
        self.origination_number = origination_number
        self.max_parts = max_parts
        self.transliterate = transliterate
        self.region_column = region_column
        self.channel: SmsChannelName = chosen
        self.channel_options = dict(channel_options or {})
        self.proof_to = list(proof_to or [])

    # ---- what the engine asks of a channel -------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "channel": self.channel,
            "message_type": self.message_type,
            "sender_id": self.sender_id,
            "max_parts": self.max_parts,
        }

    def default_typology(self) -> Typology:
        return sms_typology(once_per_period=self.once_per_period)

    def check_content(self, columns: Sequence[str]) -> None:
        self.compiled.check(columns)

    def target_columns(self) -> dict[str, tuple[str, str]]:
        return {REGION: (self.region_column, "region_column")} if self.region_column else {}

    def channel_option_names(self, kind: str) -> list[str]:
        from airflow_campaign.channels.sms import sms_channel_options

        return sms_channel_options(kind)

    def build_channel(self, kind: str, **options: Any) -> Any:
        from airflow_campaign.channels.sms import sms_channel

        return sms_channel(cast(SmsChannelName, kind), **options)

    def make_composer(self, columns: Sequence[str]) -> engine.Composer:
        from airflow_campaign.delivery.sms import SmsComposer, SmsSettings

        return SmsComposer(
            self.compiled,
            SmsSettings(self.sender_id, self.origination_number, self.message_type, self.max_parts),
            self._name,
        )

    # ---- prepare: numbers and lengths, set-based around one pass each ----------------------------

    def _region(self) -> sql.Composable:
        default = sql.Literal(self.default_region or "")
        if not self.region_column:
            return default
        return sql.SQL("coalesce(nullif(upper(btrim(t.{})), ''), {})").format(sql.Identifier(REGION), default)

    def destinations(
        self, conn: psycopg.Connection, targets: str, resource: Resource, context: Any
    ) -> sql.Composable | None:
        """Each recipient's number in E.164, or the reason it is excluded before the rules: not a
        number, or a message over ``max_parts``."""
        table = qualified(targets)
        region = self._region()
        addr = sql.Identifier(engine.ADDRESS)
        parsed = normalise_numbers(conn, table, region, self.log)
        over = self._count_parts(conn, table, region)
        if parsed:
            self.log.info("%s: %d new phone number(s) normalised", self._name, parsed)
        if over:
            self.log.warning(
                "%s: %d recipient(s) would get a message over max_parts=%d after personalisation: excluded "
                "(message too long), never truncated",
                self._name,
                over,
                self.max_parts,
            )
        return sql.SQL(
            "SELECT t.{rk}, ''::text, coalesce(n.e164, t.{addr}),"
            " CASE WHEN n.reason IS NOT NULL THEN 'invalid phone number (' || n.reason || ')'"
            " ELSE l.reason"
            " END FROM {t} t"
            " LEFT JOIN campaign.phone_numbers n ON n.raw = t.{addr} AND n.region = {region}"
            " LEFT JOIN sms_too_long l ON l.recipient_key = t.{rk}"
        ).format(
            rk=sql.Identifier(engine.RECIPIENT),
            addr=addr,
            t=table,
            region=region,
        )

    def _count_parts(self, conn: psycopg.Connection, table: sql.Composable, region: sql.Composable) -> int:
        """Render every valid number's message once; keep the over-long ones in ``sms_too_long``."""
        conn.execute(
            "CREATE TEMP TABLE sms_too_long (recipient_key text PRIMARY KEY, reason text) ON COMMIT DROP"
        )
        over: list[tuple[str, str]] = []
        composer_row = {"delivery": self._name}
        render = self.compiled.render
        query = sql.SQL(
            "SELECT t.*, n.e164 AS _campaign_e164 FROM {t} t JOIN campaign.phone_numbers n"
            " ON n.raw = t.{addr} AND n.region = {region} WHERE n.e164 IS NOT NULL"
        ).format(t=table, addr=sql.Identifier(engine.ADDRESS), region=region)
        from airflow_campaign.delivery.render import RenderError

        with conn.cursor(name="sms_parts", row_factory=psycopg.rows.dict_row) as cur:
            cur.itersize = RENDER_PAGE
            cur.execute(query)
            for row in cur:
                try:
                    text = render({**row, **composer_row, "recipient": row["_campaign_e164"]})
                except CampaignError as exc:
                    raise RenderError(
                        f"{exc} (recipient {str(row[engine.RECIPIENT])[:100]!r}). Nothing was prepared: fix the "
                        "template (e.g. a default for a missing value)."
                    ) from exc
                parts = parts_of(text)
                if parts.parts > self.max_parts:
                    over.append((str(row[engine.RECIPIENT]), too_long(parts, self.max_parts)))
        if over:
            CampaignHook.copy_rows_in(conn, "sms_too_long", ["recipient_key", "reason"], over)
        return len(over)

    # ---- proofs -----------------------------------------------------------------------------------

    def proofs(self, conn: psycopg.Connection, targets: str, context: Any) -> dict[str, Any] | None:
        if not self.proof_to:
            return None
        from airflow_campaign.delivery.sms import CompiledSms, SmsComposer, SmsSettings

        proof = CompiledSms("[PROOF] " + self.text, footer=self.stop_footer, transliterate=self.transliterate)
        settings = SmsSettings(self.sender_id, self.origination_number, self.message_type, MAX_PARTS_LIMIT)
        return self.send_proofs(conn, targets, self.proof_to, SmsComposer(proof, settings, self._name))


def normalise_numbers(
    conn: psycopg.Connection, table: sql.Composable, region: sql.Composable, log: Any
) -> int:
    """Parse the distinct (raw number, region) pairs of ``table`` (alias ``t``) that
    ``campaign.phone_numbers`` does not hold yet, and add them; return how many.

    One server-side pass over the pairs, ``NORMALISE_PAGE`` at a time: each page is parsed by
    ``phonenumbers`` in the worker and COPYed into a temporary table, then added to the cache
    (``ON CONFLICT DO NOTHING``: another delivery may add the same number meanwhile).
    """
    from airflow_campaign.delivery.sms import normalised_rows

    addr = sql.Identifier(engine.ADDRESS)
    conn.execute(
        "CREATE TEMP TABLE sms_new_numbers (raw text, region text, e164 text, reason text) ON COMMIT DROP"
    )
    query = sql.SQL(
        "SELECT DISTINCT t.{addr}, {region} FROM {t} t WHERE t.{addr} IS NOT NULL AND btrim(t.{addr}) <> ''"
        " AND NOT EXISTS (SELECT 1 FROM campaign.phone_numbers n WHERE n.raw = t.{addr} AND n.region = {region})"
    ).format(addr=addr, region=region, t=table)
    added = 0
    with conn.cursor(name="sms_numbers") as cur:
        cur.itersize = NORMALISE_PAGE
        cur.execute(query)
        while pairs := cur.fetchmany(NORMALISE_PAGE):
            rows = list(normalised_rows((str(raw), str(reg)) for raw, reg in pairs))
            CampaignHook.copy_rows_in(conn, "sms_new_numbers", ["raw", "region", "e164", "reason"], rows)
            added += len(rows)
            if added % (NORMALISE_PAGE * 20) == 0:
                log.info("normalised %d phone numbers so far", added)
    if added:
        conn.execute(
            "INSERT INTO campaign.phone_numbers (raw, region, e164, reason) SELECT raw, region, e164, reason"
            " FROM sms_new_numbers ON CONFLICT DO NOTHING"
        )
    conn.execute("DROP TABLE sms_new_numbers")
    return added
