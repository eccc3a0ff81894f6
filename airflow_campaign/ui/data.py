"""What the campaign pages show, read from the campaign database.

Every query reads by index and returns a bounded page: the occurrences' recorded counts (never a
scan of the ledger), the newest rows first with LIMIT/OFFSET over small tables (deliveries,
audiences, services) and keyset pages over the large ones (quarantine, events, errors).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
import psycopg.rows

PAGE = 50
STATUSES = ("sent", "failed", "simulated", "unknown", "pending", "claimed", "sending")


def _rows(
    conn: psycopg.Connection, query: str, params: Sequence[Any] | dict[str, Any]
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return list(cur.execute(query, params).fetchall())  # a bounded page (LIMIT)


def funnel(counts: dict[str, Any] | None) -> dict[str, Any]:
    """targeted -> excluded (by reason) -> sent / failed / simulated / unknown / left, from an
    occurrence's recorded report."""
    counts = counts or {}
    by_status = counts.get("by_status") or {}
    excluded = counts.get("excluded") or {}
    return {
        "targeted": int(counts.get("total") or 0),
        "excluded": int(by_status.get("excluded") or 0),
        "reasons": sorted(((str(r), int(n)) for r, n in excluded.items()), key=lambda x: (-x[1], x[0])),
        **{s: int(by_status.get(s) or 0) for s in STATUSES},
    }


def deliveries(conn: psycopg.Connection, dag_ids: Iterable[str], page: int = 0) -> list[dict[str, Any]]:
    """The deliveries of these DAGs, by name, each with its last occurrence and its funnel."""
    rows = _rows(
        conn,
        "SELECT d.id, d.name, d.channel, d.dag_id, d.task_id, s.name AS service, o.id AS occurrence_id,"
        " o.run_id, o.run_type, o.status, o.counts, o.started_at, o.finished_at,"
        " (SELECT count(*) FROM campaign.delivery_occurrences c WHERE c.delivery_id = d.id) AS occurrences"
        " FROM campaign.deliveries d LEFT JOIN campaign.services s ON s.id = d.service_id"
        " LEFT JOIN LATERAL (SELECT * FROM campaign.delivery_occurrences o WHERE o.delivery_id = d.id"
        "  ORDER BY o.id DESC LIMIT 1) o ON true"
        " WHERE d.dag_id = ANY(%s) ORDER BY d.name LIMIT %s OFFSET %s",
        (sorted(dag_ids), PAGE + 1, page * PAGE),
    )
    for row in rows:
        row["funnel"] = funnel(row.pop("counts"))
    return rows


def trends(conn: psycopg.Connection, delivery_ids: list[int], limit: int = 30) -> dict[int, list[int]]:
    """Each delivery's last occurrences' sent counts, oldest first, in one query (the list's
    sparklines): an index range of ``(delivery_id, id)`` per delivery."""
    found: dict[int, list[int]] = {i: [] for i in delivery_ids}
    rows = _rows(
        conn,
        "SELECT d.id AS delivery_id, o.counts FROM unnest(%s::int[]) AS d(id) CROSS JOIN LATERAL"
        " (SELECT id, counts FROM campaign.delivery_occurrences WHERE delivery_id = d.id ORDER BY id DESC"
        " LIMIT %s) o ORDER BY d.id, o.id",
        (list(delivery_ids), limit),
    )
    for r in rows:
        found[r["delivery_id"]].append(funnel(r["counts"])["sent"])
    return found


def delivery(conn: psycopg.Connection, delivery_id: int) -> dict[str, Any] | None:
    found = _rows(
        conn,
        "SELECT d.id, d.name, d.channel, d.dag_id, d.task_id, d.settings, s.name AS service"
        " FROM campaign.deliveries d LEFT JOIN campaign.services s ON s.id = d.service_id WHERE d.id = %s",
        (delivery_id,),
    )
    return found[0] if found else None


def delivery_by_task(conn: psycopg.Connection, dag_id: str, task_id: str) -> list[dict[str, Any]]:
    return _rows(
        conn,
        "SELECT id, name FROM campaign.deliveries WHERE dag_id = %s AND task_id = %s ORDER BY name LIMIT 100",
        (dag_id, task_id),
    )


def occurrences(conn: psycopg.Connection, delivery_id: int, page: int = 0) -> list[dict[str, Any]]:
    rows = _rows(
        conn,
        "SELECT id, run_key, run_id, run_type, period_key, data_interval_start, data_interval_end, status,"
        " counts, started_at, finished_at, error FROM campaign.delivery_occurrences WHERE delivery_id = %s"
        " ORDER BY id DESC LIMIT %s OFFSET %s",
        (delivery_id, PAGE + 1, page * PAGE),
    )
    for row in rows:
        row["funnel"] = funnel(row.pop("counts"))
    return rows


def by_period(conn: psycopg.Connection, delivery_id: int, limit: int = 366) -> list[dict[str, Any]]:
    """Sent / failed / excluded per aggregation period (each occurrence's own when the delivery
    has none), oldest first: the chart's series."""
    rows = _rows(
        conn,
        "SELECT coalesce(period_key, to_char(coalesce(data_interval_end, started_at, created_at),"
        " 'YYYY-MM-DD HH24:MI')) AS period, min(coalesce(data_interval_end, started_at, created_at)) AS at,"
        " sum(coalesce((counts->'by_status'->>'sent')::bigint, 0))::bigint AS sent,"
        " sum(coalesce((counts->'by_status'->>'failed')::bigint, 0))::bigint AS failed,"
        " sum(coalesce((counts->'by_status'->>'excluded')::bigint, 0))::bigint AS excluded,"
        " sum(coalesce((counts->'by_status'->>'simulated')::bigint, 0))::bigint AS simulated"
        " FROM (SELECT * FROM campaign.delivery_occurrences WHERE delivery_id = %s ORDER BY id DESC LIMIT %s) o"
        " GROUP BY 1 ORDER BY 2",
        (delivery_id, limit),
    )
    return rows


def recent_errors(
    conn: psycopg.Connection, occurrence_ids: Sequence[int], limit: int = 20
) -> list[dict[str, Any]]:
    """The last failed and unknown rows of these occurrences (index on occurrence, status, id)."""
    out: list[dict[str, Any]] = []
    for oid in occurrence_ids:
        out += _rows(
            conn,
            "(SELECT id, occurrence_id, recipient_key, address, status, error, updated_at"
            " FROM campaign.delivery_logs WHERE occurrence_id = %s AND status = 'failed' ORDER BY id DESC LIMIT %s)"
            " UNION ALL (SELECT id, occurrence_id, recipient_key, address, status, error, updated_at"
            " FROM campaign.delivery_logs WHERE occurrence_id = %s AND status = 'unknown' ORDER BY id DESC LIMIT %s)",
            (oid, limit, oid, limit),
        )
        if len(out) >= limit:
            break
    return sorted(out, key=lambda r: -r["id"])[:limit]


def occurrence_of_run(conn: psycopg.Connection, delivery_id: int, run_id: str) -> int | None:
    found = conn.execute(
        "SELECT id FROM campaign.delivery_occurrences WHERE delivery_id = %s AND run_id = %s ORDER BY id DESC LIMIT 1",
        (delivery_id, run_id),
    ).fetchone()
    return int(found[0]) if found else None


def run_deliveries(conn: psycopg.Connection, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    rows = _rows(
        conn,
        "SELECT d.id, d.name, d.channel, d.task_id, o.id AS occurrence_id, o.status, o.counts"
        " FROM campaign.deliveries d JOIN campaign.delivery_occurrences o ON o.delivery_id = d.id"
        " WHERE d.dag_id = %s AND o.run_id = %s ORDER BY d.name LIMIT 200",
        (dag_id, run_id),
    )
    for row in rows:
        row["funnel"] = funnel(row.pop("counts"))
    return rows


def audiences(conn: psycopg.Connection, dag_ids: Iterable[str], page: int = 0) -> list[dict[str, Any]]:
    """Audiences saved by these DAGs (their last save names the DAG), with their size history."""
    rows = _rows(
        conn,
        "SELECT a.id, a.name, a.type, a.resource, a.row_count, a.file_uri, a.updated_at, last.dag_id, last.run_id"
        " FROM campaign.audiences a JOIN LATERAL (SELECT dag_id, run_id FROM campaign.audience_sizes s"
        "  WHERE s.audience_id = a.id ORDER BY s.updated_at DESC LIMIT 1) last ON true"
        " WHERE last.dag_id = ANY(%s) ORDER BY a.name LIMIT %s OFFSET %s",
        (sorted(dag_ids), PAGE + 1, page * PAGE),
    )
    for row in rows:
        row["history"] = _rows(
            conn,
            "SELECT size, updated_at AS at FROM (SELECT size, updated_at FROM campaign.audience_sizes"
            " WHERE audience_id = %s ORDER BY updated_at DESC LIMIT 60) h ORDER BY at",
            (row["id"],),
        )
    return rows


def services(conn: psycopg.Connection, page: int = 0) -> list[dict[str, Any]]:
    rows = _rows(
        conn,
        "SELECT s.id, s.name, s.label, s.channel,"
        " (SELECT count(*) FROM campaign.subscriptions x WHERE x.service_id = s.id) AS subscribers"
        " FROM campaign.services s ORDER BY s.name LIMIT %s OFFSET %s",
        (PAGE + 1, page * PAGE),
    )
    for row in rows:
        row["days"] = _rows(
            conn,
            "SELECT date_trunc('day', event_at) AS day, count(*) FILTER (WHERE operation = 'subscribe') AS subscribed,"
            " count(*) FILTER (WHERE operation = 'unsubscribe') AS unsubscribed FROM campaign.subscription_events"
            " WHERE service_id = %s AND event_at > now() - interval '90 days' GROUP BY 1 ORDER BY 1",
            (row["id"],),
        )
        # subscribers at the end of each of those days: today's count less what came after
        total, after = int(row["subscribers"]), 0
        for day in reversed(row["days"]):
            day["subscribers"] = total - after
            after += int(day["subscribed"]) - int(day["unsubscribed"])
    return rows


def service_events(conn: psycopg.Connection, service_id: int, before: int | None) -> list[dict[str, Any]]:
    return _rows(
        conn,
        "SELECT id, profile_id, operation, event_at, origin, dag_id, run_id FROM campaign.subscription_events"
        " WHERE service_id = %s AND (%s::bigint IS NULL OR id < %s) ORDER BY id DESC LIMIT %s",
        (service_id, before, before, PAGE + 1),
    )


def quarantine(
    conn: psycopg.Connection, channel: str | None, after: tuple[str, str] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A keyset page of quarantined addresses (by channel, address) and the counts by channel and reason."""
    rows = _rows(
        conn,
        "SELECT channel, address, reason, since, event_count FROM campaign.quarantine"
        " WHERE (%(channel)s::text IS NULL OR channel = %(channel)s)"
        " AND (%(after_c)s::text IS NULL OR (channel, address) > (%(after_c)s, %(after_a)s))"
        " ORDER BY channel, address LIMIT %(n)s",
        {
            "channel": channel,
            "after_c": after[0] if after else None,
            "after_a": after[1] if after else None,
            "n": PAGE + 1,
        },
    )
    counts = _rows(
        conn, "SELECT channel, reason, count(*) AS n FROM campaign.quarantine GROUP BY 1, 2 ORDER BY 1, 2", ()
    )
    return rows, counts
