"""The delivery engine: prepare the ledger (set-based), then send it in claimed keyset pages.

Channel-neutral: a *composer* turns recipient rows into envelopes (email, SMS, push) and a
*channel* sends them. All state lives in ``campaign.delivery_logs``: one row per recipient
per run key, unique, so a retry, a re-run or a backfill never sends a recipient twice.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import psycopg
import psycopg.rows
from psycopg import sql

from airflow_campaign.channels.base import Channel, Envelope, Result
from airflow_campaign.delivery.recurrence import OnBackfill, RunInfo
from airflow_campaign.delivery.typology import RuleContext, Typology
from airflow_campaign.errors import CampaignError
from airflow_campaign.hooks.campaign import qualified

ADDRESS = "_campaign_address"
RECIPIENT = "_campaign_rk"
OnUncertain = Literal["skip", "resend"]

log = logging.getLogger(__name__)


class Composer(Protocol):
    """Turns recipient rows (population columns, ``_campaign_address``, ``_campaign_log_id``)
    into envelopes. A row it cannot render is returned in the second list with the reason."""

    def compose(self, rows: Sequence[dict[str, Any]]) -> tuple[list[Envelope], list[tuple[int, str]]]: ...


@dataclass(frozen=True)
class DeliverySpec:
    """The delivery as recorded in ``campaign.deliveries``."""

    name: str
    channel: str
    dag_id: str
    task_id: str
    service: str | None
    settings: dict[str, Any]


# ---- prepare ------------------------------------------------------------------------------------


def ensure_delivery(conn: psycopg.Connection, spec: DeliverySpec) -> tuple[int, int | None]:
    """The delivery's id (created on first use) and its service's id."""
    service_id = None
    if spec.service:
        row = conn.execute(
            "SELECT id, channel FROM campaign.services WHERE name = %s", (spec.service,)
        ).fetchone()
        if row is None:
            known = [r[0] for r in conn.execute("SELECT name FROM campaign.services ORDER BY name")]
            raise CampaignError(
                f"service={spec.service!r}: no such subscription service; known services: {known}. Create it "
                "in campaign.services, or leave service out for a delivery bound to none."
            )
        service_id = int(row[0])
    row = conn.execute(
        "INSERT INTO campaign.deliveries AS d (name, channel, dag_id, task_id, service_id, settings)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET service_id = EXCLUDED.service_id,"
        " settings = EXCLUDED.settings, updated_at = now() RETURNING id, channel, dag_id, task_id",
        (
            spec.name,
            spec.channel,
            spec.dag_id,
            spec.task_id,
            service_id,
            json.dumps(spec.settings, default=str),
        ),
    ).fetchone()
    assert row is not None
    if row[1] != spec.channel:
        raise CampaignError(
            f"delivery={spec.name!r} is a {row[1]} delivery (made by {row[2]}.{row[3]}); a {spec.channel} "
            "delivery needs a name of its own."
        )
    return int(row[0]), service_id


def ensure_occurrence(conn: psycopg.Connection, delivery_id: int, info: RunInfo) -> int:
    row = conn.execute(
        "INSERT INTO campaign.delivery_occurrences AS o (delivery_id, run_key, run_id, run_type, period_key,"
        " data_interval_start, data_interval_end, status, started_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, 'preparing', now())"
        " ON CONFLICT (delivery_id, run_key) DO UPDATE SET run_id = EXCLUDED.run_id,"
        " run_type = EXCLUDED.run_type, updated_at = now() RETURNING id",
        (
            delivery_id,
            info.run_key,
            info.run_id,
            info.label,
            info.period_key,
            info.interval_start,
            info.interval_end,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def prepare(
    conn: psycopg.Connection,
    *,
    delivery_id: int,
    occurrence_id: int,
    service_id: int | None,
    channel: str,
    targets: str,
    key: str,
    resource: str,
    typology: Typology,
    info: RunInfo,
    on_backfill: OnBackfill,
    denylist_column: str | None,
    seed: str,
) -> dict[str, Any]:
    """Fill the ledger for this occurrence from ``targets`` (a staging table with the address).

    In the caller's transaction. Rows already in the ledger (a retry, a re-run of the same
    interval) keep their status; recipients no longer targeted and still pending are excluded.
    """
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE delivery_work ON COMMIT DROP AS SELECT {rk} AS recipient_key, {addr} AS address,"
            " NULL::text AS reason FROM {t}"
        ).format(rk=sql.Identifier(RECIPIENT), addr=sql.Identifier(ADDRESS), t=qualified(targets))
    )
    conn.execute("CREATE INDEX ON delivery_work (recipient_key)")
    conn.execute("ANALYZE delivery_work")
    ctx = RuleContext(
        work=sql.Identifier("delivery_work"),
        resource=qualified(resource),
        key=key,
        delivery_id=delivery_id,
        occurrence_id=occurrence_id,
        channel=channel,
        service_id=service_id,
        period_key=info.period_key,
        seed=seed,
        denylist_column=denylist_column,
    )
    for rule in typology.rules:
        try:
            with conn.transaction():
                conn.execute(rule.statement(ctx))
        except psycopg.Error as exc:
            raise CampaignError(
                f"typology rule {rule.describe()!r}: the database rejected its SQL ({exc.diag.message_primary or exc})."
                " Nothing was prepared; fix the rule."
            ) from exc
    conn.execute(
        "INSERT INTO campaign.delivery_logs (delivery_id, occurrence_id, run_key, recipient_key, channel, address,"
        " status, exclusion_reason)"
        " SELECT %s, %s, %s, recipient_key, %s, address, CASE WHEN reason IS NULL THEN 'pending' ELSE 'excluded' END,"
        " reason FROM delivery_work ORDER BY recipient_key"
        " ON CONFLICT (delivery_id, run_key, recipient_key) DO NOTHING",
        (delivery_id, occurrence_id, info.run_key, channel),
    )
    conn.execute(
        "UPDATE campaign.delivery_logs l SET status = 'excluded', exclusion_reason = 'no longer targeted',"
        " updated_at = now() WHERE l.occurrence_id = %s AND l.status IN ('pending', 'simulated')"
        " AND NOT EXISTS (SELECT 1 FROM delivery_work w WHERE w.recipient_key = l.recipient_key)",
        (occurrence_id,),
    )
    # a row that would now be excluded by the rules (e.g. quarantined since) is not sent either
    conn.execute(
        "UPDATE campaign.delivery_logs l SET status = 'excluded', exclusion_reason = w.reason, updated_at = now()"
        " FROM delivery_work w WHERE l.occurrence_id = %s AND l.status IN ('pending', 'simulated')"
        " AND w.recipient_key = l.recipient_key AND w.reason IS NOT NULL",
        (occurrence_id,),
    )
    simulate = info.backfill and on_backfill == "simulate"
    if simulate:
        conn.execute(
            "UPDATE campaign.delivery_logs SET status = 'simulated', updated_at = now()"
            " WHERE occurrence_id = %s AND status = 'pending'",
            (occurrence_id,),
        )
    else:  # simulated earlier, sent now: those rows were never sent
        conn.execute(
            "UPDATE campaign.delivery_logs SET status = 'pending', updated_at = now()"
            " WHERE occurrence_id = %s AND status = 'simulated'",
            (occurrence_id,),
        )
    conn.execute(
        "UPDATE campaign.delivery_occurrences SET targets_table = %s, simulated = %s,"
        " status = CASE WHEN %s THEN 'simulated' ELSE 'prepared' END, updated_at = now() WHERE id = %s",
        (targets, simulate, simulate, occurrence_id),
    )
    return report(conn, occurrence_id)


# ---- send ---------------------------------------------------------------------------------------


class RateLimiter:
    """A global token bucket: ``rate`` messages per second, shared by the channel's threads."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            wait = self.next_at - now
            self.next_at = max(self.next_at, now) + self.interval
        if wait > 0:
            time.sleep(wait)


@dataclass
class SendSettings:
    page_size: int = 1000
    rate_limit: float | None = None
    max_retries: int = 3
    retry_delay: float = 2.0
    max_error_rate: float | None = 0.2
    min_for_error_rate: int = 100
    on_uncertain: OnUncertain = "skip"
    progress_every: float = 10.0


def release_uncertain(
    conn: psycopg.Connection, occurrence_id: int, claimer: str, on_uncertain: OnUncertain
) -> int:
    """Rows an earlier try of this task left ``sending`` (killed mid-page): ``unknown``, or ``pending`` again."""
    instance = claimer.rsplit("#", 1)[0]
    status = "pending" if on_uncertain == "resend" else "unknown"
    cur = conn.execute(
        "UPDATE campaign.delivery_logs SET status = %s, error = CASE WHEN %s = 'unknown' THEN"
        " 'left sending by ' || claimed_by || ': may or may not have been sent' ELSE error END, updated_at = now()"
        " WHERE occurrence_id = %s AND status = 'sending' AND split_part(claimed_by, '#', 1) = %s"
        " AND claimed_by <> %s",
        (status, status, occurrence_id, instance, claimer),
    )
    return cur.rowcount


def send(
    conn: psycopg.Connection,
    *,
    occurrence_id: int,
    targets: str,
    composer: Composer,
    channel: Channel,
    settings: SendSettings,
    claimer: str,
    connect: Callable[[], psycopg.Connection],
    logger: logging.Logger | Any = log,
    after_claim: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Send every pending row of the occurrence; return the report.

    ``conn`` must be in autocommit mode. Claims and results go through connections of their own
    (``connect()``), in two threads, so the database claims the next page and records the last
    one while this thread renders and sends: each claim, and each page's results, commit on
    their own.
    """
    if not conn.autocommit:
        raise ValueError("engine.send needs an autocommit connection")
    with conn.transaction():
        released = release_uncertain(conn, occurrence_id, claimer, settings.on_uncertain)
        if released:
            logger.warning(
                "%d recipient(s) were left 'sending' by an earlier try: marked %s (on_uncertain=%r)",
                released,
                "pending" if settings.on_uncertain == "resend" else "unknown",
                settings.on_uncertain,
            )
        total_row = conn.execute(
            "SELECT count(*) FROM campaign.delivery_logs WHERE occurrence_id = %s AND status = 'pending'",
            (occurrence_id,),
        ).fetchone()
        conn.execute(
            "UPDATE campaign.delivery_occurrences SET status = 'sending', updated_at = now() WHERE id = %s",
            (occurrence_id,),
        )
    total = int(total_row[0]) if total_row else 0
    throttle = RateLimiter(settings.rate_limit)
    claim = sql.SQL(
        "WITH page AS (SELECT id FROM campaign.delivery_logs WHERE occurrence_id = %(occ)s AND status = 'pending'"
        " AND id > %(after)s ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED),"
        " claimed AS (UPDATE campaign.delivery_logs l SET status = 'sending', claimed_by = %(who)s,"
        " claimed_at = now(), attempts = l.attempts + 1, updated_at = now() FROM page WHERE l.id = page.id"
        " RETURNING l.id, l.recipient_key, l.address)"
        " SELECT c.id AS _campaign_log_id, c.address AS _campaign_send_to, t.* FROM claimed c"
        " LEFT JOIN {t} t ON t.{rk} = c.recipient_key ORDER BY c.id"
    ).format(t=qualified(targets), rk=sql.Identifier(RECIPIENT))
    done = sent = failed = 0
    started = last_report = time.monotonic()
    pipeline = _Pipeline(connect, claim, occurrence_id, claimer, settings.page_size)
    channel.open()
    try:
        pipeline.start()
        while True:
            rows = pipeline.next_page()
            if rows is None:
                break
            if after_claim is not None:
                after_claim(len(rows))
            outcomes = _send_page(rows, composer, channel, throttle, settings, logger)
            pipeline.record(outcomes)
            done += len(rows)
            sent += sum(1 for o in outcomes if o.outcome == "sent")
            failed += sum(1 for o in outcomes if o.outcome != "sent")
            now = time.monotonic()
            if now - last_report >= settings.progress_every or done == total:
                last_report = now
                rate = done / max(now - started, 1e-9)
                eta = max(total - done, 0) / rate if rate else 0
                logger.info(
                    "sent %d/%d (%d failed) at %.0f recipients/s, ETA %.0fs", done, total, failed, rate, eta
                )
            if (
                settings.max_error_rate is not None
                and done >= settings.min_for_error_rate
                and failed / done > settings.max_error_rate
            ):
                raise CampaignError(
                    f"max_error_rate={settings.max_error_rate}: {failed} of {done} recipients failed "
                    f"({failed / done:.0%}); stopped. The rest stay pending: fix the cause (see the errors "
                    "in campaign.delivery_logs) and clear the task to resume."
                )
    finally:
        try:
            pipeline.stop()
        finally:
            channel.close()
    with conn.transaction():
        result = report(conn, occurrence_id)
        still = result["by_status"].get("pending", 0) + result["by_status"].get("sending", 0)
        conn.execute(
            "UPDATE campaign.delivery_occurrences SET status = %s, counts = %s, finished_at = now(),"
            " updated_at = now() WHERE id = %s",
            ("sending" if still else "sent", json.dumps(result), occurrence_id),
        )
    logger.info("done: %s", ", ".join(f"{k} {v}" for k, v in sorted(result["by_status"].items())))
    return result


class _Pipeline:
    """Claims pages ahead (one thread) and records results behind (another), each on its own connection."""

    AHEAD = 2

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection],
        claim: sql.Composed,
        occurrence_id: int,
        claimer: str,
        page_size: int,
    ) -> None:
        self.connect = connect
        self.claim = claim
        self.params = {"occ": occurrence_id, "after": 0, "n": page_size, "who": claimer}
        self.pages: queue.Queue[Any] = queue.Queue(maxsize=self.AHEAD)
        self.results: queue.Queue[Any] = queue.Queue()
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._claim_pages, name="campaign-claim", daemon=True),
            threading.Thread(target=self._record_results, name="campaign-record", daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _claim_pages(self) -> None:
        try:
            conn = self.connect()
            conn.autocommit = True
            with conn:
                while not self.stopping.is_set():
                    with conn.transaction(), conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
                        rows = cur.execute(self.claim, self.params).fetchall()
                    if not rows:
                        break
                    self.params["after"] = rows[-1]["_campaign_log_id"]
                    self.pages.put(rows)
        except BaseException as exc:  # handed to the sending thread
            self.errors.append(exc)
        finally:
            self.pages.put(None)

    def _record_results(self) -> None:
        conn = None
        try:
            conn = self.connect()
            conn.autocommit = True
            while True:
                outcomes = self.results.get()
                if outcomes is None:
                    break
                _record(conn, outcomes)
        except BaseException as exc:
            self.errors.append(exc)
            while self.results.get() is not None:  # drain so that stop() never blocks
                pass
        finally:
            if conn is not None:
                conn.close()

    def next_page(self) -> list[dict[str, Any]] | None:
        rows = self.pages.get()
        if self.errors:
            raise self.errors[0]
        return rows

    def record(self, outcomes: list[Result]) -> None:
        if self.errors:
            raise self.errors[0]
        self.results.put(outcomes)

    def stop(self) -> None:
        """Stop claiming, hand back pages claimed ahead but not sent, and wait for the records."""
        if not self.threads[0].ident:  # never started
            return
        self.stopping.set()
        unsent: list[int] = []
        while self.threads[0].is_alive() or not self.pages.empty():
            try:
                rows = self.pages.get(timeout=0.1)
            except queue.Empty:
                continue
            if rows:
                unsent += [r["_campaign_log_id"] for r in rows]
        self.threads[0].join()
        self.results.put(None)
        self.threads[1].join()
        if unsent:
            with self.connect() as conn, conn.transaction():
                conn.execute(
                    "UPDATE campaign.delivery_logs SET status = 'pending', claimed_by = NULL, updated_at = now()"
                    " WHERE id = ANY(%s) AND status = 'sending'",
                    (unsent,),
                )
        if self.errors:
            raise self.errors[0]


def _send_page(
    rows: list[dict[str, Any]],
    composer: Composer,
    channel: Channel,
    throttle: RateLimiter,
    settings: SendSettings,
    logger: Any,
) -> list[Result]:
    """Compose and send one page, retrying transient failures with exponential backoff."""
    envelopes, broken = composer.compose(rows)
    outcomes = [Result(log_id, "permanent", error=f"render: {reason}") for log_id, reason in broken]
    pending = envelopes
    for attempt in range(settings.max_retries + 1):
        if not pending:
            break
        results = channel.send_batch(pending, throttle)
        by_id = {r.log_id: r for r in results}
        missing = [e for e in pending if e.log_id not in by_id]
        if missing:  # a channel must answer for every envelope; never leave one unaccounted
            results += [Result(e.log_id, "transient", error="no result from the channel") for e in missing]
        retry = {r.log_id for r in results if r.outcome == "transient"}
        outcomes += [r for r in results if r.outcome != "transient"]
        if not retry:
            pending = []
            break
        if attempt == settings.max_retries:
            outcomes += [
                Result(r.log_id, "permanent", error=f"gave up after {attempt + 1} tries: {r.error}")
                for r in results
                if r.outcome == "transient"
            ]
            pending = []
            break
        delay = min(settings.retry_delay * (2**attempt), 60.0)
        logger.info("%d transient failure(s); retrying in %.1fs", len(retry), delay)
        time.sleep(delay)
        pending = [e for e in pending if e.log_id in retry]
    return outcomes


def _record(conn: psycopg.Connection, outcomes: Sequence[Result]) -> None:
    """Mark a page's rows sent or failed, in one statement."""
    with conn.transaction():
        conn.execute(
            "UPDATE campaign.delivery_logs l SET status = v.status, provider_message_id = v.pid, error = v.err,"
            " sent_at = CASE WHEN v.status = 'sent' THEN now() END, updated_at = now()"
            " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) AS v(id, status, pid, err)"
            " WHERE l.id = v.id AND l.status = 'sending'",
            (
                [o.log_id for o in outcomes],
                ["sent" if o.outcome == "sent" else "failed" for o in outcomes],
                [o.provider_id for o in outcomes],
                [None if o.outcome == "sent" else (o.error or o.outcome)[:1000] for o in outcomes],
            ),
        )


def report(conn: psycopg.Connection, occurrence_id: int) -> dict[str, Any]:
    """Counts by status and by exclusion reason."""
    rows = conn.execute(
        "SELECT status, exclusion_reason, count(*) FROM campaign.delivery_logs WHERE occurrence_id = %s"
        " GROUP BY 1, 2",
        (occurrence_id,),
    ).fetchall()
    by_status: dict[str, int] = {}
    excluded: dict[str, int] = {}
    for status, reason, n in rows:
        by_status[status] = by_status.get(status, 0) + int(n)
        if status == "excluded":
            excluded[reason or "unknown"] = excluded.get(reason or "unknown", 0) + int(n)
    return {"total": sum(by_status.values()), "by_status": by_status, "excluded": excluded}
