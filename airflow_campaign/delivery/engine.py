"""The delivery engine's ledger: deliveries, occurrences, and the set-based prepare step.

Channel-neutral: a *composer* turns recipient rows into envelopes (email, SMS, push) and a
*channel* sends them (see :mod:`airflow_campaign.delivery.sender`). All state lives in
``campaign.delivery_logs``: one row per recipient and destination per run key, unique, so a
retry, a re-run or a backfill never sends anybody twice.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import sql

from airflow_campaign.channels.base import Envelope
from airflow_campaign.delivery.recurrence import OnBackfill, RunInfo
from airflow_campaign.delivery.typology import RuleContext, Typology
from airflow_campaign.errors import CampaignError
from airflow_campaign.hooks.campaign import qualified

ADDRESS = "_campaign_address"
RECIPIENT = "_campaign_rk"
LOG_ID = "_campaign_log_id"
SEND_TO = "_campaign_send_to"
DESTINATION = "_campaign_destination"
# statuses a ledger row no longer leaves once reached (for this occurrence)
FINAL = ("sent", "failed", "unknown", "excluded")


class Composer(Protocol):
    """Turns recipient rows (population columns, ``_campaign_send_to``, ``_campaign_log_id``,
    ``_campaign_rk``) into envelopes. A recipient refused for its own fault (an address that
    cannot be used) is returned in the second list with the reason; a row that cannot be
    rendered is the delivery's fault and raises a CampaignError."""

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


def instance_key(identity: dict[str, Any]) -> str:
    """``dag_id/task_id/run_id/map_index``: a task instance, the same for all its tries."""
    return "{dag_id}/{task_id}/{run_id}/{map_index}".format(**identity)


def check_preparer(conn: psycopg.Connection, occurrence_id: int, name: str, identity: dict[str, Any]) -> None:
    """Refuse to prepare an occurrence that another task instance of the same DAG run prepared.

    Two mapped instances (or two tasks) of one run that share a delivery name would each take
    the other's recipients out of the ledger; a later run of the same run key (a re-run, a
    retry) may prepare it again.
    """
    row = conn.execute(
        "SELECT prepared_by FROM campaign.delivery_occurrences WHERE id = %s", (occurrence_id,)
    ).fetchone()
    previous = row[0] if row else None
    if not previous:
        return
    dag_id, task_id, run_id, map_index = (
        previous.rsplit("/", 3) if previous.count("/") >= 3 else ("", "", "", "")
    )
    mine = instance_key(identity)
    same_run = dag_id == identity["dag_id"] and run_id == identity["run_id"]
    if same_run and previous != mine:
        raise CampaignError(
            f"delivery={name!r}: task {identity['task_id']!r} (map index {identity['map_index']}) would "
            f"prepare the run this delivery already prepared from task {task_id!r} (map index {map_index}) of "
            "the same DAG run; each would take the other's recipients out of the ledger. Give each mapped "
            "instance its own delivery (leave delivery= out: the default name carries the map index, or "
            "use delivery='name-{{ ti.map_index }}'), or prepare once (mode='prepare') and send in shards "
            "(mode='send' with shard=...)."
        )


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
    prepared_by: str = "",
    destinations: sql.Composable | None = None,
    moment: Any = None,
) -> dict[str, Any]:
    """Fill the ledger for this occurrence from ``targets`` (a staging table with the address).

    ``destinations`` is a SELECT of ``(recipient_key, destination, address, reason)`` rows, one
    per place a recipient is sent to (default: one per recipient of ``targets``, destination
    ``''``, reason NULL); a ``reason`` excludes the row before any rule runs (an SMS's phone
    number that is not a number). In the caller's transaction. Rows already in the ledger (a
    retry, a re-run of the same interval) keep their status; recipients no longer targeted and
    still pending are excluded.
    """
    if destinations is None:
        destinations = sql.SQL("SELECT {rk}, ''::text, {addr}, NULL::text FROM {t}").format(
            rk=sql.Identifier(RECIPIENT), addr=sql.Identifier(ADDRESS), t=qualified(targets)
        )
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE delivery_work ON COMMIT DROP AS SELECT d.recipient_key::text AS recipient_key,"
            " d.destination::text AS destination, d.address::text AS address, d.reason::text AS reason"
            " FROM ({}) AS d(recipient_key, destination, address, reason)"
        ).format(destinations)
    )
    conn.execute("CREATE INDEX ON delivery_work (recipient_key, destination)")
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
        extra={"moment": moment or info.interval_end or dt.datetime.now(dt.timezone.utc)},
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
        "INSERT INTO campaign.delivery_logs (delivery_id, occurrence_id, run_key, recipient_key, destination,"
        " channel, address, status, exclusion_reason)"
        " SELECT %s, %s, %s, recipient_key, destination, %s, address,"
        " CASE WHEN reason IS NULL THEN 'pending' ELSE 'excluded' END, reason FROM delivery_work"
        " ORDER BY recipient_key, destination"
        " ON CONFLICT (delivery_id, run_key, recipient_key, destination) DO NOTHING",
        (delivery_id, occurrence_id, info.run_key, channel),
    )
    conn.execute(
        "UPDATE campaign.delivery_logs l SET status = 'excluded', exclusion_reason = 'no longer targeted',"
        " updated_at = now() WHERE l.occurrence_id = %s AND l.status IN ('pending', 'simulated')"
        " AND NOT EXISTS (SELECT 1 FROM delivery_work w WHERE w.recipient_key = l.recipient_key"
        " AND w.destination = l.destination)",
        (occurrence_id,),
    )
    # a row that would now be excluded by the rules (e.g. quarantined since) is not sent either
    conn.execute(
        "UPDATE campaign.delivery_logs l SET status = 'excluded', exclusion_reason = w.reason, updated_at = now()"
        " FROM delivery_work w WHERE l.occurrence_id = %s AND l.status IN ('pending', 'simulated')"
        " AND w.recipient_key = l.recipient_key AND w.destination = l.destination AND w.reason IS NOT NULL",
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
    result = report(conn, occurrence_id)
    by_status = result["by_status"]
    if simulate:  # a simulation over an interval already sent leaves it sent
        status = "sent" if by_status.get("sent") else "simulated"
    else:
        status = "prepared"
    conn.execute(
        "UPDATE campaign.delivery_occurrences SET targets_table = %s, simulated = %s, status = %s, counts = %s,"
        " prepared_by = %s, prepared_at = now(), error = NULL,"
        " finished_at = CASE WHEN %s THEN now() END, updated_at = now() WHERE id = %s",
        (targets, simulate, status, json.dumps(result), prepared_by or None, simulate, occurrence_id),
    )
    return result


def finish_occurrence(
    conn: psycopg.Connection, occurrence_id: int, *, error: str | None = None
) -> dict[str, Any]:
    """Record the occurrence's counts, status and finish time from its ledger; return the report.

    ``sent`` when no row is left to send, ``failed`` when the task ends with an ``error`` and
    rows are left, ``sending`` while other tasks (shards) still hold rows. The occurrence row is
    locked first, so tasks finishing together write one after the other, the last one with
    everything the others recorded.
    """
    with conn.transaction():
        conn.execute("SELECT 1 FROM campaign.delivery_occurrences WHERE id = %s FOR UPDATE", (occurrence_id,))
        result = report(conn, occurrence_id)
        by_status = result["by_status"]
        left = sum(by_status.get(s, 0) for s in ("pending", "claimed", "sending"))
        held = conn.execute(
            "SELECT count(*) FROM campaign.delivery_claims WHERE occurrence_id = %s AND state = 'running'",
            (occurrence_id,),
        ).fetchone()
        running = bool(held and held[0])
        if not left and not by_status.get("simulated"):
            status = "sent"
        elif error and not running:
            status = "failed"
        else:
            status = "sending"
        conn.execute(
            "UPDATE campaign.delivery_occurrences SET status = %s, counts = %s, error = %s,"
            " finished_at = CASE WHEN %s THEN now() END, updated_at = now() WHERE id = %s",
            (status, json.dumps(result), error[:2000] if error else None, status != "sending", occurrence_id),
        )
    return result


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
