"""Typology rules: which targeted recipients a delivery leaves out, and why, in a fixed order.

A rule is a small object with a ``reason`` and a SQL condition. The engine applies the rules
of a typology one after the other to the recipients no earlier rule excluded, in one statement
each (``UPDATE work SET reason = ... WHERE reason IS NULL AND <condition>``), so a recipient
carries the first reason that applies. Subclass :class:`Rule` (or use :class:`SqlRule`) to add
your own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from airflow_campaign import sqlcheck
from airflow_campaign.errors import CampaignError

# The WHATWG HTML "valid e-mail address" grammar (what browsers accept in <input type=email>),
# widened to internationalised addresses (RFC 6531): any non-ASCII character in the local part
# and in domain labels, which the message builder sends as UTF-8 and IDNA.
_U = r"[^\x01-\x9f]"  # beyond ASCII, and not a C1 control character
EMAIL_SYNTAX = (
    rf"^(?:[a-zA-Z0-9.!#$%&'*+/=?^_`{{|}}~-]|{_U})+@(?:[a-zA-Z0-9]|{_U})(?:(?:[a-zA-Z0-9-]|{_U}){{0,61}}(?:[a-zA-Z0-9]|{_U}))?"
    rf"(?:\.(?:[a-zA-Z0-9]|{_U})(?:(?:[a-zA-Z0-9-]|{_U}){{0,61}}(?:[a-zA-Z0-9]|{_U}))?)+$"
)


@dataclass
class RuleContext:
    """What a rule's SQL may refer to.

    The work table (alias ``w``) has one row per targeted recipient and destination:
    ``recipient_key`` (text), ``destination`` (``''`` for email: one per recipient),
    ``address``, ``reason`` (NULL while not excluded) and ``r_*``-free access to the resource
    row through ``resource`` joined on ``key``. ``delivery_id``, ``occurrence_id``, ``channel``,
    ``service_id`` (or None), ``period_key`` and ``seed`` describe the delivery being prepared.
    """

    work: sql.Composable
    resource: sql.Composable
    key: str
    delivery_id: int
    occurrence_id: int
    channel: str
    service_id: int | None
    period_key: str
    seed: str
    denylist_column: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    def resource_row(self) -> sql.Composable:
        """``EXISTS``-friendly join condition from ``w`` to its resource row ``r``."""
        return sql.SQL("r.{}::text = w.recipient_key").format(sql.Identifier(self.key))


class Rule:
    """One exclusion rule. ``condition`` is SQL over ``w`` that is true for the rows to exclude."""

    reason: str = ""

    def condition(self, ctx: RuleContext) -> sql.Composable:
        raise NotImplementedError

    def statement(self, ctx: RuleContext) -> sql.Composed:
        """The UPDATE that marks this rule's exclusions among the rows still in."""
        return sql.SQL("UPDATE {} w SET reason = {} WHERE w.reason IS NULL AND ({})").format(
            ctx.work, sql.Literal(self.reason), self.condition(ctx)
        )

    def describe(self) -> str:
        return self.reason


class MissingAddress(Rule):
    reason = "missing address"

    def condition(self, ctx: RuleContext) -> sql.Composable:
        return sql.SQL("w.address IS NULL OR btrim(w.address) = ''")


class InvalidAddress(Rule):
    """Addresses that are not syntactically valid (email: the WHATWG grammar)."""

    reason = "invalid address"

    def __init__(self, pattern: str = EMAIL_SYNTAX) -> None:
        self.pattern = pattern

    def condition(self, ctx: RuleContext) -> sql.Composable:
        return sql.SQL("w.address !~ {}").format(sql.Literal(self.pattern))


class Denylisted(Rule):
    """Profiles that opted out of the channel (the resource's ``<channel>_denylisted`` column)."""

    reason = "denylisted"

    def condition(self, ctx: RuleContext) -> sql.Composable:
        if not ctx.denylist_column:
            return sql.SQL("false")
        return sql.SQL("EXISTS (SELECT 1 FROM {} r WHERE {} AND r.{})").format(
            ctx.resource, ctx.resource_row(), sql.Identifier(ctx.denylist_column)
        )


class Quarantined(Rule):
    """Addresses in ``campaign.quarantine`` for the channel (bounces, complaints, STOP...)."""

    reason = "quarantined"

    def condition(self, ctx: RuleContext) -> sql.Composable:
        return sql.SQL(
            "EXISTS (SELECT 1 FROM campaign.quarantine q WHERE q.channel = {} AND q.address = lower(w.address))"
        ).format(sql.Literal(ctx.channel))


class NotSubscribed(Rule):
    """Profiles not subscribed to the delivery's service (only when the delivery names one)."""

    reason = "not subscribed"

    def condition(self, ctx: RuleContext) -> sql.Composable:
        if ctx.service_id is None:
            return sql.SQL("false")
        return sql.SQL(
            "NOT EXISTS (SELECT 1 FROM campaign.subscriptions s WHERE s.service_id = {}"
            " AND s.profile_id::text = w.recipient_key)"
        ).format(sql.Literal(ctx.service_id))


class DuplicateAddress(Rule):
    """Several recipients with one address: the one with the smallest key gets the message."""

    reason = "duplicate address"

    def statement(self, ctx: RuleContext) -> sql.Composed:
        return sql.SQL(
            "UPDATE {work} w SET reason = {reason} FROM (SELECT recipient_key, destination, row_number() OVER"
            " (PARTITION BY lower(address) ORDER BY length(recipient_key), recipient_key, destination) AS n"
            " FROM {work} WHERE reason IS NULL) d WHERE d.n > 1 AND d.recipient_key = w.recipient_key"
            " AND d.destination = w.destination"
        ).format(work=ctx.work, reason=sql.Literal(self.reason))


class Fatigue(Rule):
    """At most ``max_messages`` messages on the channel per address in a sliding ``days`` window.

    ``max_messages`` is a number, or the name of a resource column holding each profile's own cap.
    """

    reason = "fatigue"

    def __init__(self, max_messages: int | str, days: float = 7) -> None:
        if isinstance(max_messages, int) and max_messages < 0:
            raise CampaignError(f"Fatigue(max_messages={max_messages}): give a number >= 0 or a column name.")
        self.max_messages = max_messages
        self.days = days

    def condition(self, ctx: RuleContext) -> sql.Composable:
        if isinstance(self.max_messages, str):
            cap: sql.Composable = sql.SQL("(SELECT r.{} FROM {} r WHERE {})").format(
                sql.Identifier(self.max_messages), ctx.resource, ctx.resource_row()
            )
        else:
            cap = sql.Literal(self.max_messages)
        return sql.SQL(
            "(SELECT count(*) FROM campaign.delivery_logs l WHERE l.channel = {ch} AND l.address = w.address"
            " AND l.status = 'sent' AND l.sent_at > now() - make_interval(secs => {secs})"
            " AND l.occurrence_id <> {occ}) >= coalesce({cap}, 2147483647)"
        ).format(
            ch=sql.Literal(ctx.channel),
            secs=sql.Literal(self.days * 86400),
            occ=sql.Literal(ctx.occurrence_id),
            cap=cap,
        )

    def describe(self) -> str:
        return f"fatigue (at most {self.max_messages} in {self.days:g} days)"


class OncePerPeriod(Rule):
    """Recipients this delivery already sent to in another run of the same aggregation period."""

    reason = "already sent this period"

    def condition(self, ctx: RuleContext) -> sql.Composable:
        return sql.SQL(
            "EXISTS (SELECT 1 FROM campaign.delivery_logs l JOIN campaign.delivery_occurrences o"
            " ON o.id = l.occurrence_id WHERE l.delivery_id = {d} AND l.recipient_key = w.recipient_key"
            " AND l.status IN ('sent', 'sending', 'unknown') AND o.period_key = {p} AND o.id <> {occ})"
        ).format(
            d=sql.Literal(ctx.delivery_id), p=sql.Literal(ctx.period_key), occ=sql.Literal(ctx.occurrence_id)
        )


class ControlGroup(Rule):
    """Hold out a deterministic random share (``percent``) or number (``size``) of the recipients.

    The draw is a hash of the seed (the delivery name by default) and the recipient key, so a
    retry, a re-run or a later prepare draws the same people.
    """

    reason = "control group"

    def __init__(
        self, percent: float | None = None, size: int | None = None, seed: str | None = None
    ) -> None:
        if (percent is None) == (size is None):
            raise CampaignError("ControlGroup: give percent= or size=, one of them.")
        if percent is not None and not 0 <= percent <= 100:
            raise CampaignError(f"ControlGroup(percent={percent}): give a number between 0 and 100.")
        if size is not None and size < 0:
            raise CampaignError(f"ControlGroup(size={size}): give a whole number >= 0.")
        self.percent = percent
        self.size = size
        self.seed = seed

    def statement(self, ctx: RuleContext) -> sql.Composed:
        seed = sql.Literal(f"{self.seed or ctx.seed}/control/")
        ordered = sql.SQL(
            "SELECT recipient_key, row_number() OVER (ORDER BY hashtextextended({} || recipient_key, 0),"
            " recipient_key) AS n, count(*) OVER () AS total FROM {} WHERE reason IS NULL"
        ).format(seed, ctx.work)
        limit = (
            sql.SQL("ceil(d.total * {} / 100.0)").format(sql.Literal(self.percent))
            if self.percent is not None
            else sql.Literal(self.size)
        )
        return sql.SQL(
            "UPDATE {work} w SET reason = {reason} FROM ({ordered}) d WHERE d.n <= {limit}"
            " AND d.recipient_key = w.recipient_key"
        ).format(work=ctx.work, reason=sql.Literal(self.reason), ordered=ordered, limit=limit)

    def describe(self) -> str:
        return (
            f"control group ({self.percent}%)" if self.percent is not None else f"control group ({self.size})"
        )


class SizeLimit(Rule):
    """Keep at most ``size`` recipients (a deterministic random draw, or ``order_by`` a SQL list on ``w``).

    ``order_by`` is checked to be one ORDER BY list; ``parameters`` holds the values of its
    ``%(name)s`` placeholders.
    """

    reason = "target size limit"

    def __init__(
        self, size: int, order_by: str | None = None, parameters: dict[str, Any] | None = None
    ) -> None:
        if size < 0:
            raise CampaignError(f"SizeLimit(size={size}): give a whole number >= 0.")
        self.size = size
        self.order_by = order_by
        self.parameters = parameters
        sqlcheck.check_at_run([(sqlcheck.order_list, "SizeLimit(order_by)", order_by)], parameters)

    def statement(self, ctx: RuleContext) -> sql.Composed:
        order = (
            sqlcheck.order_list("SizeLimit(order_by)", self.order_by, self.parameters)
            if self.order_by
            else sql.SQL("hashtextextended({} || recipient_key, 0)").format(sql.Literal(f"{ctx.seed}/limit/"))
        )
        return sql.SQL(
            "UPDATE {work} w SET reason = {reason} FROM (SELECT recipient_key, row_number() OVER"
            " (ORDER BY {order}, recipient_key) AS n FROM {work} w WHERE reason IS NULL) d"
            " WHERE d.n > {size} AND d.recipient_key = w.recipient_key"
        ).format(work=ctx.work, reason=sql.Literal(self.reason), order=order, size=sql.Literal(self.size))

    def describe(self) -> str:
        return f"target size limit ({self.size})"


class LocalSendTime(Rule):
    """Send at a local time: keep only the recipients for whom, in their own time zone, the run's
    moment falls in ``[at, at + window)``, and who were not sent this delivery earlier the same
    local day. On an hourly DAG each run takes the recipients whose hour has come, once a day.

    :param at: the local time, ``"09:00"``.
    :param window: how long after ``at`` a recipient may still be taken (``"1h"``: the run of
        each hour takes the zones whose 09:00 fell in it); at most a day.
    :param column: the resource's column holding each profile's IANA time zone (``time_zone``);
        an empty or unknown zone counts as ``default``.
    :param default: the zone of profiles without a valid one.

    The run's moment is its data interval's end (now, for a run without one), so a backfilled
    hour takes the recipients it would have taken then; "the same local day" compares the
    moments of the runs (an earlier run's interval end, else its send time). Recipients left
    out get the reason ``outside local send time`` or ``already sent today (local)``.
    """

    reason = "outside local send time"

    def __init__(
        self, at: str, window: str | float = "1h", column: str = "time_zone", default: str = "UTC"
    ) -> None:
        import re
        import zoneinfo

        from airflow_campaign.durations import parse_duration

        match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", str(at).strip())
        if not match:
            raise CampaignError(f"local_send_time={at!r}: give a local time as 'HH:MM', e.g. '09:00'.")
        self.minutes = int(match.group(1)) * 60 + int(match.group(2))
        self.at = f"{int(match.group(1)):02d}:{match.group(2)}"
        self.window = int(parse_duration(window, "local_send_window"))
        if not 60 <= self.window <= 86400:
            raise CampaignError(
                f"local_send_window={window!r}: give a duration from 1 minute to 1 day (the hourly DAG's '1h')."
            )
        try:
            zoneinfo.ZoneInfo(default)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise CampaignError(
                f"default_time_zone={default!r}: not an IANA time zone; give one such as 'UTC' or 'Europe/Paris'."
            ) from exc
        self.column = column
        self.default = default

    def statement(self, ctx: RuleContext) -> sql.Composed:
        moment = ctx.extra.get("moment")
        start = sql.Literal(f"{self.minutes * 60} seconds")
        end_seconds = self.minutes * 60 + self.window
        end = sql.Literal(f"{end_seconds % 86400} seconds")
        local = sql.SQL("(s.local_now - date_trunc('day', s.local_now))")
        inside = (
            sql.SQL("({local} >= {start}::interval AND {local} < {end}::interval)")
            if end_seconds < 86400
            else sql.SQL("({local} >= {start}::interval OR {local} < {end}::interval)")
        ).format(local=local, start=start, end=end)
        return sql.SQL(
            "UPDATE {work} w SET reason = CASE WHEN NOT {inside} THEN {outside} ELSE {sent} END FROM ("
            " SELECT w2.recipient_key, w2.destination, coalesce(z.name, {default}) AS zone,"
            " ({moment}::timestamptz AT TIME ZONE coalesce(z.name, {default})) AS local_now"
            " FROM {work} w2 LEFT JOIN {res} r ON r.{key}::text = w2.recipient_key"
            " LEFT JOIN (SELECT name FROM pg_timezone_names) z ON z.name = r.{column}"
            " WHERE w2.reason IS NULL) s"
            " WHERE w.recipient_key = s.recipient_key AND w.destination = s.destination AND (NOT {inside}"
            " OR EXISTS (SELECT 1 FROM campaign.delivery_logs l JOIN campaign.delivery_occurrences o"
            " ON o.id = l.occurrence_id WHERE l.delivery_id = {d}"
            " AND l.recipient_key = w.recipient_key AND l.destination = w.destination"
            " AND l.status IN ('sent', 'sending', 'unknown') AND l.occurrence_id <> {occ}"
            " AND (coalesce(o.data_interval_end, l.sent_at) AT TIME ZONE s.zone)::date = s.local_now::date))"
        ).format(
            work=ctx.work,
            inside=inside,
            outside=sql.Literal(self.reason),
            sent=sql.Literal("already sent today (local)"),
            default=sql.Literal(self.default),
            moment=sql.Literal(moment),
            res=ctx.resource,
            key=sql.Identifier(ctx.key),
            column=sql.Identifier(self.column),
            d=sql.Literal(ctx.delivery_id),
            occ=sql.Literal(ctx.occurrence_id),
        )

    def describe(self) -> str:
        return f"local send time ({self.at}, {self.window // 60} min)"


class SqlRule(Rule):
    """A rule of your own: exclude, with ``reason``, the rows where ``where`` (SQL over ``w``) holds.

    ``where`` is checked to be one SQL expression when the rule is made; values go in
    ``parameters`` for its ``%(name)s`` placeholders (a literal ``%`` is then written ``%%``),
    e.g. ``SqlRule("vip only", "w.address LIKE %(domain)s", parameters={"domain": "%@vip.example"})``.
    """

    def __init__(self, reason: str, where: str, parameters: dict[str, Any] | None = None) -> None:
        if not reason or not where:
            raise CampaignError("SqlRule: give a reason and a where condition.")
        self.reason = reason
        self.where = where
        self.parameters = parameters
        sqlcheck.check_at_run([(sqlcheck.expression, f"SqlRule({reason!r}).where", where)], parameters)

    def condition(self, ctx: RuleContext) -> sql.Composable:
        return sqlcheck.expression(f"SqlRule({self.reason!r}).where", self.where, self.parameters)


@dataclass
class Typology:
    """An ordered list of rules. ``email_typology()`` builds the standard one."""

    rules: list[Rule]

    def describe(self) -> list[str]:
        return [r.describe() for r in self.rules]


def email_typology(
    *,
    fatigue: tuple[int | str, float] | None = None,
    control_group: ControlGroup | None = None,
    size_limit: int | None = None,
    once_per_period: bool = False,
    extra: Sequence[Rule] = (),
) -> Typology:
    """The standard order: address missing, invalid, denylisted, quarantined, not subscribed,
    duplicate address, (already sent this period), fatigue, your extra rules, control group, size limit."""
    return _standard(EMAIL_SYNTAX, fatigue, control_group, size_limit, once_per_period, extra)


#: An E.164 number: what an SMS delivery's addresses are once normalised.
E164_SYNTAX = r"^\+[1-9][0-9]{6,14}$"


def sms_typology(
    *,
    fatigue: tuple[int | str, float] | None = None,
    control_group: ControlGroup | None = None,
    size_limit: int | None = None,
    once_per_period: bool = False,
    extra: Sequence[Rule] = (),
) -> Typology:
    """The email order, for phone numbers: missing, invalid (not E.164 once normalised),
    denylisted (``sms_denylisted``), quarantined (STOP replies), not subscribed, duplicate
    number, (already sent this period), fatigue, your extra rules, control group, size limit.
    Numbers that are not numbers and messages over ``max_parts`` are excluded before the rules."""
    return _standard(E164_SYNTAX, fatigue, control_group, size_limit, once_per_period, extra)


def _standard(
    syntax: str,
    fatigue: tuple[int | str, float] | None,
    control_group: ControlGroup | None,
    size_limit: int | None,
    once_per_period: bool,
    extra: Sequence[Rule],
) -> Typology:
    rules: list[Rule] = [
        MissingAddress(),
        InvalidAddress(syntax),
        Denylisted(),
        Quarantined(),
        NotSubscribed(),
    ]
    rules.append(DuplicateAddress())
    if once_per_period:
        rules.append(OncePerPeriod())
    if fatigue is not None:
        rules.append(Fatigue(*fatigue))
    rules.extend(extra)
    if control_group is not None:
        rules.append(control_group)
    if size_limit is not None:
        rules.append(SizeLimit(size_limit))
    return Typology(rules)
