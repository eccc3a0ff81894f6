"""EmailDeliveryOperator: a personalised email to a population, once or on a schedule, never twice."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, cast

import psycopg
import psycopg.rows
from airflow.sdk.exceptions import AirflowSkipException
from psycopg import sql
from psycopg.types.json import Jsonb

from airflow_campaign import options as opt
from airflow_campaign.delivery import engine, sender
from airflow_campaign.delivery.recurrence import AggregationPeriod, OnBackfill, RunInfo, run_info
from airflow_campaign.delivery.typology import Rule, Typology, email_typology
from airflow_campaign.durations import parse_duration
from airflow_campaign.errors import CampaignError, shown
from airflow_campaign.hooks.campaign import CampaignHook, qualified
from airflow_campaign.operators.base import CampaignBaseOperator, check_choice, literal_choices, run_identity
from airflow_campaign.population import Population
from airflow_campaign.resources import Resource
from airflow_campaign.ui.links import DeliveryReportLink

Mode = Literal["prepare_and_send", "prepare", "send"]
Outbound = Literal["sent", "all", "none"]
EmailChannelName = Literal["outbox", "smtp", "ses"]


class DeliveryOperator(CampaignBaseOperator):
    """What every delivery shares (email now; SMS and push use the same engine).

    :param population: the recipients (a Population, its dict, an XComArg, a list of dicts or a
        DataFrame) of a resource with an address column.
    :param delivery: the delivery's name, unique in the campaign database (default
        ``<dag_id>.<task_id>``, and ``<dag_id>.<task_id>[<map index>]`` for a mapped task that is
        not a shard); its ledger is keyed by it.
    :param service: a subscription service: only its subscribers receive the message.
    :param typology: the exclusion rules, in order (default: the channel's standard typology).
    :param address_column: the column holding the address (a population column, else the
        resource's); default the channel's (``email``, ``phone``).
    :param mode: ``"prepare_and_send"`` (default), ``"prepare"`` (fill the ledger and stop, e.g.
        before an approval) or ``"send"`` (send what a ``prepare`` task of the same delivery
        prepared for this run).
    :param shard: this send task is shard number ``shard`` of several that send one prepared
        delivery together (``mode="send"``, mapped with ``.expand(shard=range(N))``); each claims
        the next pending pages, so no recipient is sent twice and none is left out.
    :param aggregation_period: group occurrences for reporting: ``"none"`` (each run),
        ``"day"``, ``"week"``, ``"month"`` or ``"year"``.
    :param once_per_period: also leave out recipients sent to in another run of the same period.
    :param on_backfill: in a backfill run: ``"simulate"`` (default: prepare and log as
        simulated, send nothing), ``"skip"`` or ``"send"``.
    :param stale_after: a scheduled run whose data interval ended longer ago than this (e.g.
        ``"2d"``) is treated as a backfill.
    :param on_uncertain: rows a killed try left ``sending``: ``"skip"`` (default: recorded as
        ``unknown``, never re-sent) or ``"resend"``.
    :param rate_limit: at most this many messages per second, across all connections and all
        the tasks (shards, concurrent runs) sending this delivery.
    :param max_in_doubt: at most this many recipients are in the channel's hands at once: what
        a killed task can leave ``unknown``. Default twice the channel's connections or threads.
    :param page_size: recipients claimed, rendered and sent per page.
    :param max_retries: retries of a transient failure (with exponential backoff) before the
        recipient is marked failed.
    :param max_error_rate: stop the task when more than this share of recipients failed (after
        100); ``None`` never stops.
    :param local_send_time: send at this local time (``"09:00"``) in each recipient's time zone:
        run the DAG hourly, and each run takes the recipients whose local time has come (within
        ``local_send_window``), once per local day (see docs/recurrence.md).
    :param local_send_window: how long after ``local_send_time`` a recipient may still be taken
        (default ``"1h"``, an hourly DAG's interval).
    :param time_zone_column: the resource's column of IANA time zones (default ``time_zone``).
    :param default_time_zone: the zone of recipients without a valid one (default ``UTC``).
    :param outbound: the return value: ``"sent"`` (default: the population actually sent to),
        ``"all"`` (the input population) or ``"none"``.
    """

    channel_name = ""
    operator_extra_links = (DeliveryReportLink(),)
    default_address_column = ""
    template_fields: Sequence[str] = ("population", "delivery", "service", "on_backfill")

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "delivery": opt.optional(opt.name),
        "service": opt.optional(opt.name),
        "address_column": opt.name,
        "once_per_period": opt.flag,
        "stale_after": opt.optional(opt.duration),
        "rate_limit": opt.optional(opt.number(above=0)),
        "shard": opt.optional(opt.integer(0)),
        "max_in_doubt": opt.optional(opt.integer(1)),
        "page_size": opt.integer(1, 100_000),
        "max_retries": opt.integer(0, 100),
        "max_error_rate": opt.optional(opt.number(0, 1)),
    }

    def __init__(
        self,
        *,
        population: Any,
        delivery: str | None = None,
        service: str | None = None,
        typology: Typology | Sequence[Rule] | None = None,
        address_column: str | None = None,
        mode: Mode = "prepare_and_send",
        aggregation_period: AggregationPeriod = "none",
        once_per_period: bool = False,
        on_backfill: OnBackfill = "simulate",
        stale_after: str | dt.timedelta | None = None,
        on_uncertain: sender.OnUncertain = "skip",
        rate_limit: float | None = None,
        shard: int | None = None,
        max_in_doubt: int | None = None,
        page_size: int = 1000,
        max_retries: int = 3,
        max_error_rate: float | None = 0.2,
        outbound: Outbound = "sent",
        local_send_time: str | None = None,
        local_send_window: str | float = "1h",
        time_zone_column: str = "time_zone",
        default_time_zone: str = "UTC",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("mode", mode, literal_choices(Mode))
        from airflow_campaign.delivery.typology import LocalSendTime

        self.local_send = (
            None
            if local_send_time is None
            else LocalSendTime(local_send_time, local_send_window, time_zone_column, default_time_zone)
        )
        self.local_send_time = local_send_time
        self.local_send_window = local_send_window
        self.time_zone_column = time_zone_column
        self.default_time_zone = default_time_zone
        check_choice("aggregation_period", aggregation_period, literal_choices(AggregationPeriod))
        if "{{" not in str(on_backfill):  # a template is checked once rendered, when the task runs
            check_choice("on_backfill", on_backfill, literal_choices(OnBackfill))
        check_choice("on_uncertain", on_uncertain, literal_choices(sender.OnUncertain))
        check_choice("outbound", outbound, literal_choices(Outbound))
        if rate_limit is not None and rate_limit <= 0:
            raise CampaignError(f"rate_limit={rate_limit!r}: give messages per second (> 0), or None.")
        if page_size < 1:
            raise CampaignError(f"page_size={page_size!r}: give a whole number >= 1.")
        if shard is not None:
            if isinstance(shard, bool) or not isinstance(shard, int) or shard < 0:
                raise CampaignError(f"shard={shard!r}: give the shard's number, a whole number >= 0.")
            if mode != "send":
                raise CampaignError(
                    f"shard={shard}: only a send task (mode='send') can be a shard; prepare the delivery once "
                    "in a task of its own (mode='prepare', the same delivery=) and map the send over the shards."
                )
        if max_in_doubt is not None and (
            isinstance(max_in_doubt, bool) or not isinstance(max_in_doubt, int) or max_in_doubt < 1
        ):
            raise CampaignError(f"max_in_doubt={max_in_doubt!r}: give a whole number >= 1, or None.")
        if max_error_rate is not None and not 0 <= max_error_rate <= 1:
            raise CampaignError(f"max_error_rate={max_error_rate!r}: give a share between 0 and 1, or None.")
        self.population = population
        self.delivery = delivery
        self.service = service
        self.typology = typology
        self.address_column = address_column or self.default_address_column
        self.mode = mode
        self.aggregation_period = aggregation_period
        self.once_per_period = once_per_period
        self.on_backfill = on_backfill
        self.stale_after = (
            None if stale_after is None else dt.timedelta(seconds=parse_duration(stale_after, "stale_after"))
        )
        self.on_uncertain = on_uncertain
        self.rate_limit = rate_limit
        self.shard = shard
        self.max_in_doubt = max_in_doubt
        self.page_size = page_size
        self.max_retries = max_retries
        self.max_error_rate = max_error_rate
        self.outbound = outbound
        self._name = self._run_key = ""
        self._run: sender.SendRun | None = None
        self.send_retry_delay = 2.0  # seconds before the first retry of a transient failure

    # ---- what a channel supplies ----------------------------------------------------------------

    def make_composer(self, columns: Sequence[str]) -> engine.Composer:
        raise NotImplementedError

    def channel_option_names(self, kind: str) -> list[str]:
        """The options the channel named ``kind`` takes."""
        raise NotImplementedError

    def build_channel(self, kind: str, **options: Any) -> Any:
        """A new, unopened channel named ``kind``."""
        raise NotImplementedError

    def check_channel_options(self, kind: str, channel_options: dict[str, Any] | None) -> None:
        """Refuse, when the DAG is parsed, channel options the chosen channel does not take."""
        allowed = self.channel_option_names(kind)
        unknown = sorted(set(channel_options or {}) - set(allowed))
        if unknown:
            raise CampaignError(
                f"channel_options: {unknown} are not options of the {kind} channel; it takes {allowed}."
            )
        # the values too: a channel is built (it opens nothing) unless a value is templated
        if channel_options and not any(opt.templated(v) for v in channel_options.values()):
            try:
                self.build_channel(kind, **channel_options)
            except CampaignError as exc:
                raise CampaignError(f"channel_options: {exc}") from exc

    def make_channel(self) -> Any:
        """The delivery's channel (``self.channel`` with ``self.channel_options``): a channel that may
        leave a message in doubt gets the delivery's ``on_uncertain``, an outbox without a folder
        writes to the delivery's default folder."""
        options = dict(self.channel_options)  # type: ignore[attr-defined]
        kind: str = self.channel  # type: ignore[attr-defined]
        if "on_uncertain" in self.channel_option_names(kind):
            options.setdefault("on_uncertain", self.on_uncertain)
        if kind == "outbox" and "folder" not in options and not options.get("null"):
            from airflow_campaign.channels.outbox import default_folder

            options["folder"] = default_folder(self._name)
        return self.build_channel(kind, **options)

    def check_content(self, columns: Sequence[str]) -> None:
        """Raise before anything is written when the content cannot be sent to these columns."""

    def settings(self) -> dict[str, Any]:
        return {}

    def occurrence_content(self) -> dict[str, Any] | None:
        """What each occurrence keeps of its content (``delivery_occurrences.content``): the
        email's templates when it has a mirror page, which renders them again. None: nothing."""
        return None

    def proofs(self, conn: psycopg.Connection, targets: str, context: Any) -> dict[str, Any] | None:
        return None

    def send_proofs(
        self,
        conn: psycopg.Connection,
        targets: str,
        to: Sequence[str],
        composer: engine.Composer,
        extra: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Send ``composer``'s messages for the first recipients to the addresses ``to`` only (one
        each, cycling through the recipients when there are fewer); the ledger is not touched.
        ``extra``: more fields for each proof's row (a push's device), one mapping per address."""
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            rows = cur.execute(
                sql.SQL("SELECT * FROM {} ORDER BY {} LIMIT {}").format(
                    qualified(targets), sql.Identifier(engine.RECIPIENT), sql.Literal(len(to))
                )
            ).fetchall()
        if not rows:
            raise CampaignError("proof_to: the population is empty, so there is no message to proof.")
        samples = [
            dict(
                rows[i % len(rows)],
                **(extra[i] if extra else {}),
                _campaign_log_id=-(i + 1),
                _campaign_send_to=address,
            )
            for i, address in enumerate(to)
        ]
        envelopes, broken = composer.compose(samples)
        channel = self.make_channel()
        channel.open()
        try:
            results = channel.send_batch(envelopes)
        finally:
            channel.close()
        failed = [r.error or r.outcome for r in results if r.outcome != "sent"] + [
            reason for _, reason in broken
        ]
        if failed:
            raise CampaignError(f"proof_to: {len(failed)} proof(s) failed: {failed}")
        outcome = {"to": list(to), "sent": sum(1 for r in results if r.outcome == "sent")}
        self.log.info("proofs of %s: %s", self._name, outcome)
        return outcome

    def target_columns(self) -> dict[str, tuple[str, str]]:
        """More columns the targets table carries: ``{name in targets: (column, option)}``, each
        column taken from the population, else the resource (a missing one names ``option``)."""
        return {}

    def destinations(
        self, conn: psycopg.Connection, targets: str, resource: Resource, context: Any
    ) -> sql.Composable | None:
        """The ``(recipient_key, destination, address, reason)`` rows to prepare (see
        :func:`engine.prepare`), made from ``targets`` in the preparing transaction; None: one
        per recipient, its address as it is."""
        return None

    def after_send(self, conn: psycopg.Connection, occurrence_id: int) -> None:
        """Called once a send task stops (done or failed), on its ledger connection: what the
        channel's results mean beyond the ledger (push: endpoints found disabled)."""

    # ---- execution ------------------------------------------------------------------------------

    def delivery_name(self, context: Any) -> str:
        if self.delivery:
            return self.delivery
        identity = run_identity(context)
        name = "{dag_id}.{task_id}".format(**identity)
        if identity["map_index"] >= 0 and self.shard is None:  # mapped instances: a ledger each
            name += f"[{identity['map_index']}]"
        return name

    def default_typology(self) -> Typology:
        raise NotImplementedError

    def resolved_typology(self) -> Typology:
        if self.typology is None:
            typology = self.default_typology()
        elif isinstance(self.typology, Typology):
            typology = self.typology
        else:
            typology = Typology(list(self.typology))
        if self.local_send is None:
            return typology
        from airflow_campaign.delivery.typology import ControlGroup, SizeLimit

        # before the draws (control group, size limit), which then draw among who is sent now
        rules = list(typology.rules)
        at = next((i for i, r in enumerate(rules) if isinstance(r, (ControlGroup, SizeLimit))), len(rules))
        return Typology([*rules[:at], self.local_send, *rules[at:]])

    def execute(self, context: Any) -> Any:
        check_choice("on_backfill", self.on_backfill, literal_choices(OnBackfill))
        info = run_info(context, self.aggregation_period, self.stale_after)
        self._name, self._run_key = self.delivery_name(context), info.run_key  # for the composer and channel
        if info.backfill and self.on_backfill == "skip":
            raise AirflowSkipException(f"{self.task_id}: a backfill run and on_backfill='skip'.")
        identity = run_identity(context)
        spec = engine.DeliverySpec(
            name=self._name,
            channel=self.channel_name,
            dag_id=identity["dag_id"],
            task_id=identity["task_id"],
            service=self.service,
            settings=self.settings(),
        )
        # every static check before anything is written: signing key, links, the channel's connection
        composer = self.make_composer([])
        channel = self.make_channel()
        channel.check()
        conn = self.autocommit_connection()
        try:
            with conn.transaction():
                self.require_schema(conn)
                delivery_id, service_id = engine.ensure_delivery(conn, spec)
                occurrence_id = engine.ensure_occurrence(conn, delivery_id, info)
                content = self.occurrence_content()
                if content is not None:
                    conn.execute(
                        "UPDATE campaign.delivery_occurrences SET content = %s WHERE id = %s",
                        (Jsonb(content), occurrence_id),
                    )
                if self.mode == "send":
                    targets, pop = self._prepared(conn, occurrence_id, spec.name, info)
                else:
                    engine.check_preparer(conn, occurrence_id, spec.name, identity)
                    targets, pop, prepared = self._prepare(
                        conn, context, delivery_id, occurrence_id, service_id, info
                    )
                    if prepared is None:  # proofs only
                        return None
            if self.mode == "prepare":
                result = engine.report(conn, occurrence_id)
                self.log.info("%s: prepared %s", spec.name, result)
                return self._finish(context, conn, result, pop, targets, occurrence_id)
            if info.backfill and self.on_backfill == "simulate":
                result = engine.report(conn, occurrence_id)
                self.log.info(
                    "%s: backfill run %s simulated: %s", spec.name, info.run_key, result["by_status"]
                )
                return self._finish(context, conn, result, pop, targets, occurrence_id)
            self._run = sender.SendRun(
                conn,
                occurrence_id=occurrence_id,
                delivery_id=delivery_id,
                targets=targets,
                composer=composer,
                channel=channel,
                settings=sender.SendSettings(
                    page_size=self.page_size,
                    rate_limit=self.rate_limit,
                    max_retries=self.max_retries,
                    retry_delay=self.send_retry_delay,
                    max_error_rate=self.max_error_rate,
                    on_uncertain=self.on_uncertain,
                    max_in_doubt=self.max_in_doubt,
                    shard=self.shard,
                ),
                claimer=sender.Claimer(engine.instance_key(identity), _try(context), self.shard),
                connect=self.get_hook().connect,
                logger=self.log,
            )
            try:
                result = self._run.execute()
            finally:
                claimer, self._run = self._run.claimer, None
                self.after_send(conn, occurrence_id)
            return self._finish(context, conn, result, pop, targets, occurrence_id, claimer)
        finally:
            conn.close()

    def on_kill(self) -> None:
        """Stop sending and hand the recipients this task claimed but did not send back (pending)."""
        run = self._run
        if run is not None:
            run.kill()

    def _prepare(
        self,
        conn: psycopg.Connection,
        context: Any,
        delivery_id: int,
        occurrence_id: int,
        service_id: int | None,
        info: RunInfo,
    ) -> tuple[str, Population, dict[str, Any] | None]:
        ((pop, rel),) = self.inputs(conn, [self.population], "population")
        if not pop.resource:
            raise CampaignError(
                "population: a delivery needs a population of a resource (e.g. profiles) to find "
                "addresses, denylists and subscriptions; this one has no resource."
            )
        resource = Resource.resolve(conn, pop.resource, pop.key)

        def column(name: str, option: str, what: str) -> sql.Composable:
            if name in pop.columns:
                return sql.SQL("p.{}").format(sql.Identifier(name))
            if name in resource.columns:
                return sql.SQL("r.{}").format(sql.Identifier(name))
            raise CampaignError(
                f"{option}={name!r}: neither the population {pop.columns} nor the resource "
                f"{resource.name!r} has it; give the column that holds {what}."
            )

        address = column(self.address_column, "address_column", "the address")
        if self.local_send is not None and self.time_zone_column not in resource.columns:
            raise CampaignError(
                f"time_zone_column={self.time_zone_column!r}: the resource {resource.name!r} has no such column, "
                "so each recipient's local time cannot be known; name the column of IANA time zones "
                "('Europe/Paris'), or leave local_send_time out."
            )
        extra = [
            sql.SQL(", {}::text AS {}").format(column(source, option, "it"), sql.Identifier(name))
            for name, (source, option) in self.target_columns().items()
        ]
        self.check_content(pop.columns)
        self.check_empty(pop, "population")
        select = sql.SQL(
            "SELECT p.*, p.{key}::text AS {rk}, {address}::text AS {addr}{extra} FROM {rel} p"
            " LEFT JOIN {res} r ON r.{rkey} = p.{key}"
        ).format(
            key=sql.Identifier(pop.key),
            rk=sql.Identifier(engine.RECIPIENT),
            address=address,
            addr=sql.Identifier(engine.ADDRESS),
            extra=sql.SQL("").join(extra),
            rel=rel,
            res=resource.ident,
            rkey=sql.Identifier(resource.key),
        )
        targets = self.save(conn, context, select, key=pop.key, resource=pop.resource, suffix="targets")
        assert targets.table is not None
        duplicates = _unique_recipients(conn, targets.table)
        if duplicates:
            self.log.warning(
                "population: %d row(s) repeat a recipient listed earlier; each recipient gets one message, "
                "personalised from its first row",
                duplicates,
            )
        conn.execute(sql.SQL("ANALYZE {}").format(qualified(targets.table)))
        proofs = self.proofs(conn, targets.table, context)
        if proofs is not None:
            context["ti"].xcom_push(key="proofs", value=proofs)
            return targets.table, pop, None
        denylist = f"{self.channel_name}_denylisted"
        destinations = self.destinations(conn, targets.table, resource, context)
        prepared = engine.prepare(
            conn,
            delivery_id=delivery_id,
            occurrence_id=occurrence_id,
            service_id=service_id,
            channel=self.channel_name,
            targets=targets.table,
            key=resource.key,
            resource=resource.table,
            typology=self.resolved_typology(),
            info=info,
            on_backfill=self.on_backfill,
            denylist_column=denylist if denylist in resource.columns else None,
            seed=self.delivery_name(context),
            prepared_by=engine.instance_key(run_identity(context)),
            destinations=destinations,
        )
        self.log.info(
            "prepared %s for %s: %s; excluded %s",
            self.delivery_name(context),
            info.run_key,
            prepared["by_status"],
            prepared["excluded"],
        )
        return targets.table, pop, prepared

    def _prepared(
        self, conn: psycopg.Connection, occurrence_id: int, name: str, info: RunInfo
    ) -> tuple[str, Population]:
        row = conn.execute(
            "SELECT targets_table FROM campaign.delivery_occurrences WHERE id = %s", (occurrence_id,)
        ).fetchone()
        targets = row[0] if row else None
        columns = [c for c, _ in CampaignHook.columns_of(conn, targets)] if targets else []
        if not targets or not columns:
            raise CampaignError(
                f"mode='send': delivery {name!r} has nothing prepared for run key {info.run_key!r}; run its "
                "prepare task (mode='prepare', the same delivery=) for this run first."
            )
        self.check_content(columns)
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(qualified(targets))).fetchone()
        pop = Population(
            kind="table",
            table=targets,
            key=engine.RECIPIENT,
            resource=None,
            columns=columns,
            count=int(count[0]) if count else 0,
        )
        return targets, pop

    def _finish(
        self,
        context: Any,
        conn: psycopg.Connection,
        result: dict[str, Any],
        pop: Population,
        targets: str,
        occurrence_id: int,
        claimer: sender.Claimer | None = None,
    ) -> Any:
        context["ti"].xcom_push(key="report", value=result)
        if self.outbound == "none":
            return result
        if self.outbound == "all":
            return pop.to_dict()
        columns = [
            c
            for c, _ in CampaignHook.columns_of(conn, targets)
            if not c.startswith("_campaign_")  # the engine's own columns (address, key, region...)
        ]
        with conn.transaction():
            sent = self.save(
                conn,
                context,
                sql.SQL(
                    "SELECT {cols} FROM {t} t WHERE EXISTS (SELECT 1 FROM campaign.delivery_logs l"
                    " WHERE l.occurrence_id = {occ} AND l.status = 'sent' AND l.recipient_key = t.{rk}{mine})"
                ).format(
                    cols=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns),
                    t=qualified(targets),
                    occ=sql.Literal(occurrence_id),
                    rk=sql.Identifier(engine.RECIPIENT),
                    # a shard returns what its own tries sent: the shards' outputs add up to the whole
                    mine=sql.SQL("")
                    if claimer is None or self.shard is None
                    else sql.SQL(" AND split_part(l.claimed_by, '#', 1) = {}").format(
                        sql.Literal(claimer.instance)
                    ),
                ),
                key=pop.key if pop.key in columns else columns[0],
                resource=pop.resource,
                suffix="sent",
            )
        return sent.to_dict()


def _unique_recipients(conn: psycopg.Connection, targets: str) -> int:
    """Make the targets table hold one row per recipient (the first one listed); return how many
    repeated rows were dropped. A unique index does both the check and the look-ups the send needs."""
    index = sql.SQL("CREATE UNIQUE INDEX ON {} ({})").format(
        qualified(targets), sql.Identifier(engine.RECIPIENT)
    )
    try:
        with conn.transaction():
            conn.execute(index)
        return 0
    except psycopg.errors.UniqueViolation:
        pass
    cur = conn.execute(
        sql.SQL("DELETE FROM {t} a USING {t} b WHERE a.{rk} = b.{rk} AND a.ctid > b.ctid").format(
            t=qualified(targets), rk=sql.Identifier(engine.RECIPIENT)
        )
    )
    conn.execute(index)
    return cur.rowcount


DEFAULT_CHANNEL_OPTION = "[campaign] default_channel"


def resolve_channel(channel: str | None, choices: Sequence[str]) -> str:
    """``channel``, else the provider option ``[campaign] default_channel``; a delivery never
    falls back to a channel nobody chose (the outbox would keep every message in files)."""
    if channel is None:
        from airflow.sdk import conf

        configured = (conf.get("campaign", "default_channel", fallback=None) or "").strip()
        if not configured:
            raise CampaignError(
                f"channel: not given, and the Airflow configuration option {DEFAULT_CHANNEL_OPTION} is not "
                f"set; pass channel= one of {list(choices)} (channel='outbox' writes each message to a "
                f"file, for demos and dry runs), or set {DEFAULT_CHANNEL_OPTION} "
                "(AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL=smtp) where the DAGs are parsed and run."
            )
        if configured not in choices:
            raise CampaignError(
                f"{DEFAULT_CHANNEL_OPTION}={shown(configured)} (the channel of a delivery that does not pass "
                f"channel=) is not one of {list(choices)}; fix the option (AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL) "
                "or pass channel=."
            )
        return configured
    check_choice("channel", channel, choices)
    return channel


def _try(context: Any) -> int:
    return int(getattr(context["ti"], "try_number", 1) or 1)


class EmailDeliveryOperator(DeliveryOperator):
    """Send a personalised email to a population, once or on a schedule, never twice to anyone.

    :param subject: the subject (a Jinja template over the population's columns).
    :param from_addr: the sender's address.
    :param html: the html body (a Jinja template, autoescaped).
    :param text: the text body (a Jinja template); derived from ``html`` when left out.
    :param from_name: the sender's display name.
    :param reply_to: a Reply-To address.
    :param headers: extra headers carried by every message.
    :param marketing: a marketing email (default) must carry ``{{ unsubscribe_url }}``; its
        messages get ``List-Unsubscribe`` and one-click headers. ``False`` for transactional mail.
    :param channel: ``"smtp"``, ``"ses"`` or ``"outbox"`` (one .eml file per message in a folder,
        for demos and dry runs). Required, unless the Airflow configuration option
        ``[campaign] default_channel`` names one (``AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL``).
    :param channel_options: the channel's options, e.g. ``{"smtp_conn_id": "smtp_relay",
        "connections": 4}`` or ``{"folder": "/data/outbox"}`` (see docs/channels.md).
    :param unsubscribe_url: the unsubscribe page; each message links to it with a signed,
        per-recipient token.
    :param unsubscribe_key: where the signing key is: ``"variable:<name>"`` or
        ``"connection:<conn_id>"``. Default: the Variable named by the Airflow configuration
        option ``[campaign] unsubscribe_key_variable`` (``campaign_unsubscribe_key`` when unset).
    :param mirror_url: a page showing the email on the web, linked as ``{{ mirror_url }}``.
    :param mirror_link_ttl: mirror links stop working this long after the send (e.g. ``"30d"``,
        seconds or a timedelta); None (default): they do not expire. Unsubscribe links never expire.
    :param proof_to: send a proof (subject prefixed ``[PROOF]``) of the first recipients' messages
        to these addresses only; nothing goes to the population and the ledger is not touched.

    Every parameter of the delivery engine (``delivery``, ``service``, ``typology``, ``mode``,
    ``aggregation_period``, ``on_backfill``, ``rate_limit``, ...) is described on
    :class:`DeliveryOperator`.
    """

    channel_name = "email"
    default_address_column = "email"
    ui_color = "#e0f3e3"

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "subject": opt.text,
        "from_addr": opt.text,
        "html": opt.optional(opt.text),
        "text": opt.optional(opt.text),
        "from_name": opt.optional(opt.text),
        "reply_to": opt.optional(opt.text),
        "headers": opt.optional(opt.string_mapping),
        "marketing": opt.flag,
        "channel_options": opt.optional(opt.mapping),
        "unsubscribe_url": opt.optional(opt.text),
        "mirror_url": opt.optional(opt.text),
        "proof_to": opt.optional(opt.names),
    }

    def __init__(
        self,
        *,
        subject: str,
        from_addr: str,
        html: str | None = None,
        text: str | None = None,
        from_name: str | None = None,
        reply_to: str | None = None,
        headers: dict[str, str] | None = None,
        marketing: bool = True,
        channel: EmailChannelName | None = None,
        channel_options: dict[str, Any] | None = None,
        unsubscribe_url: str | None = None,
        unsubscribe_key: str | None = None,
        mirror_url: str | None = None,
        mirror_link_ttl: str | float | dt.timedelta | None = None,
        proof_to: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from airflow_campaign.delivery.mime import MimeSkeleton, check_address
        from airflow_campaign.delivery.render import EmailContent, compile_email
        from airflow_campaign.delivery.unsubscribe import check_base_url, default_key_spec, link_ttl_seconds

        chosen = cast(EmailChannelName, resolve_channel(channel, literal_choices(EmailChannelName)))
        self.check_channel_options(chosen, channel_options)
        if marketing and not unsubscribe_url:
            raise CampaignError(
                "unsubscribe_url: a marketing email needs the unsubscribe page's URL, e.g. "
                "'https://example.com/unsubscribe' (or marketing=False for transactional mail)."
            )
        if unsubscribe_url:
            check_base_url("unsubscribe_url", unsubscribe_url)
        if mirror_url:
            check_base_url("mirror_url", mirror_url)
        link_ttl_seconds(mirror_link_ttl)
        if mirror_link_ttl is not None and not mirror_url:
            raise CampaignError(
                f"mirror_link_ttl={mirror_link_ttl!r}: there is no mirror link to expire; give mirror_url= "
                "as well, or leave mirror_link_ttl out."
            )
        self.content = EmailContent(
            subject=subject,
            from_addr=from_addr,
            html=html,
            text=text,
            from_name=from_name,
            reply_to=reply_to,
            headers=dict(headers or {}),
        )
        self.compiled = compile_email(self.content, marketing=marketing)  # syntax and checks now
        if "mirror_url" in self.compiled.variables and not mirror_url:
            raise CampaignError(
                "mirror_url: the templates link to {{ mirror_url }}, but no mirror page is set; give "
                "mirror_url='https://...' or remove the link."
            )
        MimeSkeleton.for_email(self.content, "check")  # addresses and headers now
        for address in proof_to or []:
            check_address("proof_to", address)
        self.subject = subject
        self.from_addr = from_addr
        self.html = html
        self.text = text
        self.from_name = from_name
        self.reply_to = reply_to
        self.headers = headers
        self.marketing = marketing
        self.channel: EmailChannelName = chosen
        self.channel_options = dict(channel_options or {})
        self.unsubscribe_url = unsubscribe_url
        self.unsubscribe_key = default_key_spec() if unsubscribe_key is None else unsubscribe_key
        self.mirror_url = mirror_url
        self.mirror_link_ttl = mirror_link_ttl
        self.proof_to = list(proof_to or [])

    def settings(self) -> dict[str, Any]:
        return {"subject": self.subject, "from": self.from_addr, "channel": self.channel}

    def occurrence_content(self) -> dict[str, Any] | None:
        if not self.mirror_url:
            return None
        return {
            "subject": self.subject,
            "from_addr": self.from_addr,
            "html": self.html,
            "text": self.text,
            "from_name": self.from_name,
            "reply_to": self.reply_to,
            "marketing": self.marketing,
            "unsubscribe_url": self.unsubscribe_url,
            "service": self.service,
            "mirror_url": self.mirror_url,
        }

    def default_typology(self) -> Typology:
        return email_typology(once_per_period=self.once_per_period)

    def check_content(self, columns: Sequence[str]) -> None:
        self.compiled.check(columns)

    def channel_option_names(self, kind: str) -> list[str]:
        from airflow_campaign.channels.email import email_channel_options

        return email_channel_options(kind)

    def build_channel(self, kind: str, **options: Any) -> Any:
        from airflow_campaign.channels.email import email_channel

        return email_channel(cast(EmailChannelName, kind), **options)

    def make_composer(self, columns: Sequence[str], subject_prefix: str = "") -> engine.Composer:
        from airflow_campaign.delivery.email import EmailComposer
        from airflow_campaign.delivery.mime import MimeSkeleton
        from airflow_campaign.delivery.unsubscribe import LinkSigner, load_keys

        signer = None
        if self.unsubscribe_url:
            signer = LinkSigner(
                load_keys(self.unsubscribe_key),
                self._name,
                self.unsubscribe_url,
                service=self.service,
                mirror_base_url=self.mirror_url,
                mirror_ttl=self.mirror_link_ttl,
            )
        skeleton = MimeSkeleton.for_email(self.content, f"{self._name}/{self._run_key}")
        return EmailComposer(self.compiled, skeleton, self._name, self._run_key, signer, subject_prefix)

    def proofs(self, conn: psycopg.Connection, targets: str, context: Any) -> dict[str, Any] | None:
        if not self.proof_to:
            return None
        return self.send_proofs(
            conn, targets, self.proof_to, self.make_composer([], subject_prefix="[PROOF] ")
        )
