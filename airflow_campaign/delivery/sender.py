"""The send step: claimed pages, a ledger gate around every message, shards, and an exact crash window.

A ledger row goes ``pending`` → ``claimed`` (a send task took it, committed, in a page) →
``sending`` (committed just before its message is handed to the channel) → ``sent`` or
``failed``. A row is ``sending`` only while its message is in the channel's hands, and at most
``max_in_doubt`` rows of a task are ``sending`` at any time (by default twice the channel's
connections or threads). A task killed at any line therefore leaves in doubt at most that
many messages; every row it had only claimed goes back to ``pending`` for the next claimer.

Several tasks (shards, or a retry next to a zombie) can send one occurrence at once: each
claims pages with ``FOR UPDATE SKIP LOCKED``, so no row is claimed twice, and every result
is recorded *fenced* on its claimer (``claimed_by``), so a try whose rows were taken over can
neither send them nor overwrite what the newer one recorded. A task registers itself in
``campaign.delivery_claims`` and holds a session advisory lock for as long as it lives: when
its process dies, Postgres drops the lock, and the next task to look (a retry, a shard, a
later run of the same run key) settles what it left: ``claimed`` rows back to ``pending``,
``sending`` rows to ``unknown`` (or ``pending`` with ``on_uncertain="resend"``, or for a
channel where sending again replaces the message, like the outbox). A claimer that stops
heartbeating for ``lease`` seconds counts as dead too (a worker cut off from the database).
The rate limit is shared through Postgres by every task sending the delivery.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
import psycopg.rows
from psycopg import sql

from airflow_campaign.channels.base import Channel, Envelope, Result
from airflow_campaign.channels.pool import OnUncertain
from airflow_campaign.delivery.engine import LOG_ID, RECIPIENT, SEND_TO, Composer, finish_occurrence
from airflow_campaign.errors import CampaignError
from airflow_campaign.hooks.campaign import qualified

CLAIM_LOCK = 7268  # classid of the session advisory lock a live claimer holds (objid: its claim id)
SETTLE_LOCK = 7269  # classid of the transaction lock that serialises settling an occurrence

log = logging.getLogger(__name__)


@dataclass
class SendSettings:
    """How a send task works.

    :param max_in_doubt: at most this many of the task's rows are ``sending`` at once: what a
        kill can leave in doubt. Default: twice the channel's connections (threads), so every
        connection has its next message ready; the page size for a channel where a message sent
        again replaces the first (the outbox).
    :param lease: seconds without a heartbeat after which a claimer counts as dead even if its
        database session is still open.
    :param pages_ahead: pages claimed ahead of the one being sent.
    """

    page_size: int = 1000
    rate_limit: float | None = None
    max_retries: int = 3
    retry_delay: float = 2.0
    max_error_rate: float | None = 0.2
    min_for_error_rate: int = 100
    on_uncertain: OnUncertain = "skip"
    progress_every: float = 10.0
    max_in_doubt: int | None = None
    lease: float = 300.0
    heartbeat_every: float = 10.0
    pages_ahead: int = 1
    shard: int | None = None


@dataclass(frozen=True)
class Claimer:
    """Who sends: a task instance (``dag/task/run/map``), its try, and a token unique to this process."""

    instance: str
    try_number: int
    shard: int | None = None
    token: str = field(default="")

    def __post_init__(self) -> None:
        if not self.token:
            object.__setattr__(self, "token", f"{self.instance}#{self.try_number}#{uuid.uuid4().hex[:8]}")


# ---- the shared rate limit ----------------------------------------------------------------------


class SharedRate:
    """``rate`` messages per second for the delivery, across every task and connection sending it.

    Slots are reserved from ``campaign.deliveries.rate_next_at`` (one UPDATE on the database's
    clock reserves a run of consecutive slots) and each message waits for its own. A task that
    asks for messages more slowly than the rate reserves one slot at a time, leaving the slots
    in between to the others; one that asks faster reserves runs that double up to 50 ms of
    slots (halving when it misses some). A slot more than half a slot late is dropped, never
    made up for later: the tasks together never hand the channel more than the rate (at most one
    message more in any second; what the server sees also varies with each message's latency).
    """

    MAX_RUN_SECONDS = 0.05

    def __init__(self, rate: float, connect: Callable[[], psycopg.Connection], delivery_id: int) -> None:
        self.interval = 1.0 / rate
        self.max_run = max(1, int(rate * self.MAX_RUN_SECONDS))
        self.run = 1
        self.connect = connect
        self.delivery_id = delivery_id
        self.lock = threading.Lock()
        self.slots: deque[float] = deque()
        self.missed = 0
        self.asked_at = 0.0
        self.between = self.interval  # how often this task asks for a slot (moving average)
        self.conn: psycopg.Connection | None = None

    def wait(self, stop: threading.Event) -> None:
        """Block until this thread's slot."""
        with self.lock:
            now = time.monotonic()
            if self.asked_at:
                self.between = 0.8 * self.between + 0.2 * (now - self.asked_at)
            self.asked_at = now
            while True:
                if not self.slots:
                    self._reserve()
                at = self.slots.popleft()
                if at >= time.monotonic() - self.interval / 2:
                    break
                self.missed += 1
        delay = at - time.monotonic()
        if delay > 0:
            stop.wait(delay)

    def _reserve(self) -> None:
        """Reserve the next run of slots, its length adapted to how the last one was used."""
        if self.between > 0.8 * self.interval:  # slower than the rate: one slot at a time
            self.run = 1
        elif self.missed:
            self.run = max(1, self.run // 2)
        else:
            self.run = min(self.max_run, self.run * 2)
        self.missed = 0
        if self.conn is None:
            self.conn = self.connect()
            self.conn.autocommit = True
            self.conn.execute("SET synchronous_commit = off")  # a slot needs no durability
        span = self.run * self.interval
        row = self.conn.execute(
            "UPDATE campaign.deliveries SET rate_next_at = greatest(rate_next_at, clock_timestamp())"
            " + make_interval(secs => %(span)s) WHERE id = %(id)s"
            " RETURNING extract(epoch FROM rate_next_at - clock_timestamp())::float8 - %(span)s",
            {"span": span, "id": self.delivery_id},
        ).fetchone()
        first = time.monotonic() + max(float(row[0]) if row else 0.0, 0.0)
        self.slots.extend(first + i * self.interval for i in range(self.run))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ---- claims: who is sending, and who died ----------------------------------------------------


def register(conn: psycopg.Connection, occurrence_id: int, claimer: Claimer) -> int:
    """Record the claimer and take its liveness lock on ``conn`` (held until ``conn`` closes)."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO campaign.delivery_claims (occurrence_id, claimer, instance, try_number, shard, host, pid)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                occurrence_id,
                claimer.token,
                claimer.instance,
                claimer.try_number,
                claimer.shard,
                socket.gethostname(),
                os.getpid(),
            ),
        ).fetchone()
        assert row is not None
        claim_id = int(row[0])
        conn.execute("SELECT pg_advisory_lock(%s::int, %s::int)", (CLAIM_LOCK, claim_id % 2**31))
    return claim_id


def settle(
    conn: psycopg.Connection,
    occurrence_id: int,
    claimer: Claimer,
    uncertain: Literal["unknown", "pending"],
    lease: float,
) -> dict[str, int]:
    """Settle the rows that dead claimers of the occurrence left ``claimed`` or ``sending``.

    Dead: an earlier try of this task instance; a claimer whose liveness lock is gone (its
    process ended); one that has not heartbeaten for ``lease`` seconds; one that finished or
    failed without handing everything back; a claimer unknown to ``delivery_claims``.
    ``claimed`` rows go back to ``pending``; ``sending`` rows to ``uncertain``. ``newer`` in the
    counts is 1 when a later try of the caller's own task instance is running: the caller is the
    zombie, and must stop.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s::int, %s::int)", (SETTLE_LOCK, occurrence_id % 2**31))
        dead = conn.execute(
            "UPDATE campaign.delivery_claims c SET state = 'dead', finished_at = coalesce(c.finished_at, now()),"
            " updated_at = now() WHERE c.occurrence_id = %(occ)s AND c.state = 'running' AND c.claimer <> %(me)s"
            " AND ((c.instance = %(instance)s AND c.try_number < %(try)s)"
            " OR c.heartbeat_at < now() - make_interval(secs => %(lease)s)"
            " OR NOT EXISTS (SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.classid = %(lock)s"
            " AND k.objid::bigint = c.id %% 2147483648 AND k.objsubid = 2 AND k.granted"
            " AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())))"
            " RETURNING c.claimer",
            {
                "occ": occurrence_id,
                "me": claimer.token,
                "instance": claimer.instance,
                "try": claimer.try_number,
                "lease": lease,
                "lock": CLAIM_LOCK,
            },
        ).fetchall()
        newer = conn.execute(
            "SELECT count(*) FROM campaign.delivery_claims WHERE occurrence_id = %s AND instance = %s"
            " AND try_number > %s AND state = 'running'",
            (occurrence_id, claimer.instance, claimer.try_number),
        ).fetchone()
        rows = conn.execute(
            "WITH settled AS (UPDATE campaign.delivery_logs l SET"
            " status = CASE WHEN l.status = 'claimed' THEN 'pending' ELSE %(uncertain)s END,"
            " claimed_by = CASE WHEN l.status = 'claimed' OR %(uncertain)s = 'pending' THEN NULL"
            " ELSE l.claimed_by END,"
            " error = CASE WHEN l.status = 'sending' AND %(uncertain)s = 'unknown' THEN 'in doubt: '"
            " || coalesce(l.claimed_by, '?') || ' ended while the message was in the channel''s hands; it may or"
            " may not have been sent, so it is not sent again' ELSE l.error END, updated_at = now()"
            " WHERE l.occurrence_id = %(occ)s AND l.status IN ('claimed', 'sending')"
            " AND l.claimed_by IS DISTINCT FROM %(me)s AND NOT EXISTS (SELECT 1 FROM campaign.delivery_claims c"
            " WHERE c.claimer = l.claimed_by AND c.state = 'running')"
            " RETURNING l.status) SELECT status, count(*) FROM settled GROUP BY 1",
            {"occ": occurrence_id, "me": claimer.token, "uncertain": uncertain},
        ).fetchall()
    counts = {str(status): int(n) for status, n in rows}
    counts["dead_claimers"] = len(dead)
    counts["newer"] = 1 if newer and newer[0] else 0
    return counts


# ---- the gate: the ledger around each message -------------------------------------------------


class LedgerGate:
    """Marks each row ``sending`` just before its message goes and records its result as soon as
    it is known, in one statement per round on a connection of its own (a thread).

    At most ``window`` rows of this claimer are ``sending`` in the database at any time:
    messages in the channel's hands, and the next ones marked ahead so that no connection waits.
    Every write is fenced on the claimer: a row another try has taken over is neither marked nor
    recorded, and its message is held back.

    With ``mark=False`` (a channel where a message sent again replaces the first, such as the
    outbox) rows go from ``claimed`` straight to their result: a row left ``claimed`` by a dead
    task is simply sent again. Results are then written in batches (up to ``BATCH`` rows or
    ``LINGER`` seconds), since no message waits for them.
    """

    BATCH = 500
    LINGER = 0.05

    def __init__(
        self,
        conn: psycopg.Connection,
        claimer: Claimer,
        claim_id: int,
        window: int,
        rate: SharedRate | None,
        heartbeat_every: float,
        mark: bool = True,
    ) -> None:
        self.conn = conn
        self.mark = mark
        self.claimer = claimer
        self.claim_id = claim_id
        self.window = max(1, window)
        self.rate = rate
        self.heartbeat_every = heartbeat_every
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.lost = 0  # rows another try took over
        self.unrecorded = 0  # results another try's takeover kept out of the ledger
        self.tally: Counter[str] = Counter()
        self._cv = threading.Condition()
        self._order: deque[int] = deque()  # armed rows waiting to be marked, in send order
        self._armed: set[int] = set()  # the rows in _order
        self._marking: set[int] = set()  # rows the statement in flight marks
        self._done: set[int] = set()  # rows of _marking that got a final result meanwhile
        self._ready: set[int] = set()  # marked, not handed over yet
        self._doubt: set[int] = set()  # marked in the database and not recorded since
        self._lost: set[int] = set()
        self._results: list[tuple[int, str, str | None, str | None]] = []
        self._reported: set[int] = set()
        self._closing = False
        self._writing = False
        self._hurry = False  # flush(): write now, without waiting for a batch
        self._first_at = 0.0  # when the oldest result not written yet came
        self._beat_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="campaign-ledger", daemon=True)

    def _refused(self, log_id: int) -> bool:
        """Under the lock: whether a message must not go now."""
        return (
            self.stopping.is_set()
            or self._closing
            or self.error is not None
            or log_id in self._lost
            or (self._thread.ident is not None and not self._thread.is_alive())
        )

    # ---- what the channel calls ---------------------------------------------------------------

    def before(self, envelope: Envelope) -> bool:
        log_id = envelope.log_id
        if not self.mark:
            if self.rate is not None:
                self.rate.wait(self.stopping)
            with self._cv:
                return not self._refused(log_id)
        with self._cv:
            while True:
                if self._refused(log_id):
                    return False
                if log_id in self._ready:
                    break
                if log_id not in self._armed and log_id not in self._marking:  # not armed: mark it next
                    self._armed.add(log_id)
                    self._order.appendleft(log_id)
                    self._cv.notify_all()
                self._cv.wait(1.0)
        if self.rate is not None:  # marked: now its slot, so that it leaves on time
            self.rate.wait(self.stopping)
        with self._cv:
            if self._refused(log_id) or log_id not in self._ready:
                return False
            self._ready.discard(log_id)
            return True

    def after(self, result: Result) -> None:
        with self._cv:
            if result.log_id in self._reported:
                return
            self._reported.add(result.log_id)
            self._queue(result)

    # ---- what the engine calls ----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def arm(self, log_ids: Sequence[int]) -> None:
        """The rows about to go to the channel, in the order its connections take them: the
        first ones are marked while the page is still being rendered."""
        with self._cv:
            self._reported.clear()
            if not self.mark:
                return
            busy = self._armed | self._marking | self._ready | self._doubt
            for log_id in log_ids:
                if log_id not in busy:  # rows already marked (or on their way back) are not armed again
                    self._armed.add(log_id)
                    self._order.append(log_id)
            self._cv.notify_all()

    def reconcile(self, envelopes: Sequence[Envelope], results: Sequence[Result]) -> list[Result]:
        """One result per envelope of the batch (``transient`` where the channel gave none), each
        recorded; rows marked but never handed over go back to ``claimed``."""
        by_id = {r.log_id: r for r in results}
        for envelope in envelopes:
            if envelope.log_id not in by_id:  # a channel must answer for every envelope
                by_id[envelope.log_id] = Result(
                    envelope.log_id, "transient", error="no result from the channel"
                )
        with self._cv:
            for result in by_id.values():
                if result.log_id not in self._reported:
                    self._reported.add(result.log_id)
                    self._queue(result)
            for log_id in list(self._ready):  # marked ahead, never taken by the channel
                self._queue(Result(log_id, "held"))
            self._order.clear()
            self._armed.clear()
            self._cv.notify_all()
        return list(by_id.values())

    def record(self, results: Sequence[Result]) -> None:
        """Final results the engine decided itself (a refused address, a retry given up)."""
        with self._cv:
            for result in results:
                self._queue(result)
            self._cv.notify_all()

    def stop(self) -> None:
        """Let no more messages through (the channel's threads blocked in ``before`` return False)."""
        self.stopping.set()
        with self._cv:
            self._cv.notify_all()

    def flush(self) -> None:
        """Wait until every result given so far is written (or the ledger thread has failed)."""
        with self._cv:
            self._hurry = True
            self._cv.notify_all()
            while (self._results or self._writing) and self.error is None and self._thread.is_alive():
                self._cv.wait(1.0)
            self._hurry = False

    def close(self) -> list[tuple[int, str, str | None, str | None]]:
        """Record everything pending, put rows marked but not handed over back to ``claimed``, stop.

        Returns what the ledger thread could not write (it failed): the engine writes it on a
        connection of its own."""
        with self._cv:
            for log_id in list(self._ready):
                self._queue(Result(log_id, "held"))
            self._order.clear()
            self._armed.clear()
            self._closing = True
            self._cv.notify_all()
        if self._thread.ident:
            self._thread.join()
        with self._cv:
            left = _one_per_row(self._results)
            self._results = []
            self._doubt.clear()
        return left

    # ---- the ledger thread --------------------------------------------------------------------

    def _queue(self, result: Result) -> None:
        """Under the lock: the ledger write a result needs (none for a row never marked)."""
        log_id = result.log_id
        if log_id in self._armed:  # never marked (a refused address): no longer to be
            self._armed.discard(log_id)
            self._order.remove(log_id)
        self._ready.discard(log_id)
        if result.outcome == "sent":
            status, error = "sent", None
        elif result.outcome == "permanent":
            status, error = "failed", (result.error or "failed")[:1000]
        else:  # transient or held: the provider does not have it; the row is only claimed again
            if log_id not in self._doubt and log_id not in self._marking:
                return
            status, error = "claimed", (result.error or result.outcome)[:1000]
        if log_id in self._marking:  # its mark is in flight: once marked, it is not to be handed over
            self._done.add(log_id)
        if not self._results:
            self._first_at = time.monotonic()
        self._results.append((log_id, status, result.provider_id, error))
        if self.mark or len(self._results) >= self.BATCH:
            self._cv.notify_all()

    def _results_due(self) -> bool:
        """Under the lock: whether the results waiting should be written now."""
        if not self._results:
            return False
        if self.mark or self._closing or self._hurry or len(self._results) >= self.BATCH:
            return True
        return time.monotonic() - self._first_at >= self.LINGER

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while True:
                        room = self.window - len(self._doubt)
                        due = time.monotonic() - self._beat_at >= self.heartbeat_every
                        marking = self._order and room > 0 and not self.stopping.is_set()
                        if self._results_due() or marking or due:
                            break
                        if self._closing:
                            if not self._ready and not self._marking:
                                return
                            for log_id in list(self._ready):  # marked while closing: back to claimed
                                self._queue(Result(log_id, "held"))
                            continue
                        self._cv.wait(self.LINGER if self._results else min(self.heartbeat_every, 1.0))
                    results = _one_per_row(self._results)
                    self._results = []
                    recorded = {r[0] for r in results}
                    room = self.window - len(self._doubt - recorded)
                    marks: list[int] = []
                    while self._order and len(marks) < room and not self.stopping.is_set():
                        if self._order[0] in recorded:  # its result first; marked next round
                            break
                        marks.append(self._order.popleft())
                    self._armed.difference_update(marks)
                    self._marking = set(marks)
                    self._writing = True
                try:
                    written, marked = self._write(results, marks, due)
                except BaseException:
                    with self._cv:  # kept for the engine to write on its own connection
                        self._results[:0] = results
                        self._marking = set()
                        self._writing = False
                    raise
                with self._cv:
                    self._writing = False
                    self.tally.update({k: v for k, v in written.items() if k != "claimed"})
                    self._doubt -= recorded
                    self._doubt |= marked
                    self._ready |= marked - self._done
                    self._marking = set()
                    self._done.clear()
                    lost = set(marks) - marked
                    if lost:
                        self._lost |= lost
                        self.lost += len(lost)
                    self.unrecorded += len(results) - sum(written.values())
                    self._cv.notify_all()
        except BaseException as exc:  # handed to the engine; the channel's threads see it in before()
            with self._cv:
                self.error = exc
                self._cv.notify_all()

    def _write(
        self, results: list[tuple[int, str, str | None, str | None]], marks: list[int], beat: bool
    ) -> tuple[Counter[str], set[int]]:
        """One statement: record ``results`` and mark ``marks`` sending; (rows recorded by status, ids marked)."""
        if beat:
            alive = self.conn.execute(
                "UPDATE campaign.delivery_claims SET heartbeat_at = now() WHERE id = %s AND state = 'running'",
                (self.claim_id,),
            ).rowcount
            self._beat_at = time.monotonic()
            if not alive:
                raise CampaignError(
                    f"{self.claimer.token}: another task recorded this one as dead (no heartbeat within the "
                    "lease) and settled its rows; it stops so that nobody gets two messages."
                )
        return write_results(self.conn, self.claimer.token, results, marks)


# Each row is found by its primary key. The fences on status are CASE expressions on purpose:
# a plain ``status IN (...)`` lets the planner read every claimed row of the occurrence through
# the (occurrence_id, status, id) index (a skip scan) and hash them, for each statement: with 4
# shards and 2 pages ahead that is thousands of rows read to record 500.
WRITE_RESULTS = (
    "WITH rec AS (UPDATE campaign.delivery_logs l SET status = v.status,"
    " provider_message_id = coalesce(v.pid, l.provider_message_id), error = v.err,"
    " sent_at = CASE WHEN v.status = 'sent' THEN now() ELSE l.sent_at END, updated_at = now()"
    " FROM unnest(%(rid)s::bigint[], %(rst)s::text[], %(rpid)s::text[], %(rerr)s::text[])"
    " AS v(id, status, pid, err) WHERE l.id = v.id AND l.claimed_by = %(who)s"
    " AND CASE l.status WHEN 'claimed' THEN true WHEN 'sending' THEN true ELSE false END RETURNING l.status),"
    " mark AS (UPDATE campaign.delivery_logs l SET status = 'sending', updated_at = now()"
    " WHERE l.id = ANY(%(mid)s::bigint[]) AND l.claimed_by = %(who)s"
    " AND CASE l.status WHEN 'claimed' THEN true ELSE false END"
    " AND EXISTS (SELECT 1 FROM campaign.delivery_claims c WHERE c.claimer = %(who)s AND c.state = 'running')"
    " RETURNING l.id)"
    " SELECT (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM (SELECT status, count(*) AS n FROM rec"
    " GROUP BY 1) r), (SELECT coalesce(array_agg(id), '{}') FROM mark)"
)


def write_results(
    conn: psycopg.Connection,
    token: str,
    results: Sequence[tuple[int, str, str | None, str | None]],
    marks: Sequence[int] = (),
) -> tuple[Counter[str], set[int]]:
    """Record ``results`` (id, status, provider id, error) and mark ``marks`` sending, in one
    statement fenced on the claimer ``token``; (rows recorded by status, ids marked). A row is
    marked only while its claimer's claim is still running."""
    if not results and not marks:
        return Counter(), set()
    row = conn.execute(
        WRITE_RESULTS,
        {
            "rid": [r[0] for r in results],
            "rst": [r[1] for r in results],
            "rpid": [r[2] for r in results],
            "rerr": [r[3] for r in results],
            "mid": list(marks),
            "who": token,
        },
    ).fetchone()
    assert row is not None
    return Counter({str(k): int(v) for k, v in row[0].items()}), set(row[1])


def _one_per_row(
    results: list[tuple[int, str, str | None, str | None]],
) -> list[tuple[int, str, str | None, str | None]]:
    """One write per row: the last result, a final one winning over ``claimed`` (a statement that
    updated a row twice would keep only one of the two, whichever Postgres applies)."""
    by_id: dict[int, tuple[int, str, str | None, str | None]] = {}
    for result in results:
        kept = by_id.get(result[0])
        if kept is not None and kept[1] != "claimed" and result[1] == "claimed":
            continue
        by_id[result[0]] = result
    return list(by_id.values())


# ---- pages claimed ahead ----------------------------------------------------------------------


class PageClaims:
    """Claims pages of pending rows ahead of the sender, on a connection of its own (a thread).

    Keyset pages (``id > last``), ``FOR UPDATE SKIP LOCKED`` so that shards never claim a row
    twice; when no row is left after the last one, one more sweep from the start picks up rows
    handed back meanwhile.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection],
        occurrence_id: int,
        targets: str,
        claimer: Claimer,
        page_size: int,
        ahead: int,
    ) -> None:
        self.connect = connect
        self.claim = sql.SQL(
            "WITH page AS (SELECT id FROM campaign.delivery_logs WHERE occurrence_id = %(occ)s"
            " AND status = 'pending' AND id > %(after)s AND EXISTS (SELECT 1 FROM campaign.delivery_claims c"
            " WHERE c.claimer = %(who)s AND c.state = 'running')"
            " ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED),"
            " claimed AS (UPDATE campaign.delivery_logs l SET status = 'claimed', claimed_by = %(who)s,"
            " claimed_at = now(), attempts = l.attempts + 1, updated_at = now() FROM page WHERE l.id = page.id"
            " RETURNING l.id, l.recipient_key, l.address, l.destination)"
            " SELECT c.id AS {log_id}, c.address AS {send_to}, c.destination AS _campaign_destination,"
            " c.recipient_key AS _campaign_ledger_rk, t.* FROM claimed c LEFT JOIN {t} t ON t.{rk} = c.recipient_key"
            " ORDER BY c.id"
        ).format(
            log_id=sql.Identifier(LOG_ID),
            send_to=sql.Identifier(SEND_TO),
            t=qualified(targets),
            rk=sql.Identifier(RECIPIENT),
        )
        self.params: dict[str, Any] = {"occ": occurrence_id, "after": 0, "n": page_size, "who": claimer.token}
        self.pages: queue.Queue[Any] = queue.Queue(maxsize=max(1, ahead))
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="campaign-claim", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.connect() as conn:
                conn.autocommit = True
                while not self.stopping.is_set():
                    with conn.cursor(row_factory=psycopg.rows.dict_row, binary=True) as cur:
                        rows = cur.execute(self.claim, self.params).fetchall()
                    if not rows:
                        if self.params["after"] == 0:
                            break
                        self.params["after"] = 0  # one more sweep for rows handed back meanwhile
                        continue
                    self.params["after"] = rows[-1][LOG_ID]
                    while not self.stopping.is_set():
                        try:
                            self.pages.put(rows, timeout=0.2)
                            break
                        except queue.Full:
                            continue
        except BaseException as exc:  # handed to the sender
            self.error = exc
        finally:
            self.stopping.set()
            try:
                self.pages.put_nowait(None)
            except queue.Full:
                pass

    def next_page(self) -> list[dict[str, Any]] | None:
        while True:
            try:
                rows = self.pages.get(timeout=0.2)
            except queue.Empty:
                if not self.thread.is_alive() and self.pages.empty():
                    rows = None
                else:
                    continue
            if self.error is not None:
                raise self.error
            return rows

    def stop(self) -> None:
        """Stop claiming (the pages claimed but not taken stay ``claimed``: handed back by the sender)."""
        self.stopping.set()
        while True:
            try:
                self.pages.get_nowait()
            except queue.Empty:
                break
        if self.thread.ident:
            self.thread.join()


# ---- one send task ------------------------------------------------------------------------------


class SendRun:
    """Send an occurrence's pending rows as one claimer (a task try, possibly one of several shards).

    ``conn`` must be in autocommit mode; ``connect()`` opens the other connections (claims, the
    ledger gate, the rate limit). ``kill()`` (from ``on_kill``) stops it from another thread or a
    signal handler and hands its claimed rows back at once.
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        *,
        occurrence_id: int,
        delivery_id: int,
        targets: str,
        composer: Composer,
        channel: Channel,
        settings: SendSettings,
        claimer: Claimer,
        connect: Callable[[], psycopg.Connection],
        logger: logging.Logger | Any = log,
    ) -> None:
        if not conn.autocommit:
            raise ValueError("SendRun needs an autocommit connection")
        self.conn = conn
        self.occurrence_id = occurrence_id
        self.delivery_id = delivery_id
        self.targets = targets
        self.composer = composer
        self.channel = channel
        self.settings = settings
        self.claimer = claimer
        self.connect = connect
        self.log = logger
        self.resend_safe = bool(getattr(channel, "resend_safe", False))
        self.uncertain: Literal["unknown", "pending"] = (
            "pending" if self.resend_safe or settings.on_uncertain == "resend" else "unknown"
        )
        concurrency = max(1, int(getattr(channel, "concurrency", 1)))
        self.window = settings.max_in_doubt or (
            max(settings.page_size, 2 * concurrency) if self.resend_safe else 2 * concurrency
        )
        self.killed = threading.Event()
        self.kill_requested = False
        self.gate: LedgerGate | None = None
        self.pages: PageClaims | None = None

    # ---- from on_kill -----------------------------------------------------------------------------

    def kill(self) -> None:
        """Stop sending and hand the claimed rows back now.

        Safe in a signal handler (Airflow calls ``on_kill`` from its SIGTERM handler): it sets a
        flag and leaves the rest to a thread of its own, so it never waits on a lock the
        interrupted code may hold."""
        self.kill_requested = True
        threading.Thread(target=self._kill, name="campaign-kill", daemon=True).start()

    def _kill(self) -> None:
        self.killed.set()
        if self.pages is not None:
            self.pages.stopping.set()
        if self.gate is not None:
            self.gate.stop()
        try:
            with self.connect() as conn:
                conn.autocommit = True
                self._hand_back(conn)
        except Exception as exc:  # the sender's own clean-up tries again
            self.log.warning("could not hand claimed rows back on kill: %s", exc)

    def _hand_back(self, conn: psycopg.Connection) -> int:
        cur = conn.execute(
            "UPDATE campaign.delivery_logs SET status = 'pending', claimed_by = NULL, updated_at = now()"
            " WHERE occurrence_id = %s AND claimed_by = %s AND status = 'claimed'",
            (self.occurrence_id, self.claimer.token),
        )
        return cur.rowcount

    # ---- the send -----------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        settings, log_ = self.settings, self.log
        ledger = self.connect()
        ledger.autocommit = True
        rate = (
            SharedRate(settings.rate_limit, self.connect, self.delivery_id) if settings.rate_limit else None
        )
        error: BaseException | None = None
        pages: PageClaims | None = None
        try:
            claim_id = register(ledger, self.occurrence_id, self.claimer)
            self.gate = gate = LedgerGate(
                ledger,
                self.claimer,
                claim_id,
                self.window,
                rate,
                settings.heartbeat_every,
                mark=not self.resend_safe,  # a message sent again replaces the first: no need to mark
            )
            if self.killed.is_set():
                gate.stopping.set()
            self._settle("an earlier try or another task")
            total = self._pending()
            self.conn.execute(
                "UPDATE campaign.delivery_occurrences SET status = 'sending', error = NULL, updated_at = now()"
                " WHERE id = %s",
                (self.occurrence_id,),
            )
            gate.start()
            self.channel.open()
            self.started = time.monotonic()
            self.last_report = self.started
            log_.info(
                "%s: %d recipient(s) pending; %s",
                self.claimer.token,
                total,
                "a message left in doubt by a crash is sent again (the channel replaces it)"
                if self.resend_safe
                else f"at most {self.window} in the channel's hands (in doubt after a crash) at a time",
            )
            while True:
                pages = PageClaims(
                    self.connect,
                    self.occurrence_id,
                    self.targets,
                    self.claimer,
                    settings.page_size,
                    settings.pages_ahead,
                )
                self.pages = pages
                if self.killed.is_set():
                    pages.stopping.set()
                pages.start()
                while (rows := pages.next_page()) is not None:
                    self._check_running()
                    self._page(rows)
                pages.stop()
                pages = None
                self._check_running()
                if not self._settle("a task that ended"):  # nothing handed back: done
                    break
            self._check_running()
            gate.flush()
            tally = gate.tally
            attempted = tally["sent"] + tally["failed"]
            if attempted and not tally["sent"]:
                raise CampaignError(
                    f"every recipient this task tried failed ({attempted} of {attempted}); see the errors in "
                    "campaign.delivery_logs (status 'failed'). The task fails so that a delivery that reached "
                    "nobody does not look done."
                )
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                result = self._finish(pages, ledger, rate, error)
            except Exception as cleanup:
                if error is None:
                    raise
                self.log.error("cleaning up after the error above failed too: %s", cleanup)
        return result

    def _check_running(self) -> None:
        gate = self.gate
        assert gate is not None
        if self.kill_requested or self.killed.is_set():
            raise CampaignError(
                f"{self.claimer.token}: stopped (the task was killed); claimed rows handed back."
            )
        if gate.error is not None:
            raise gate.error
        if gate.lost:
            raise CampaignError(
                f"{self.claimer.token}: {gate.lost} row(s) were taken over by another try of this delivery (this "
                "one was presumed dead); it stops so that nobody gets two messages."
            )

    def _settle(self, who: str) -> int:
        """Settle what dead claimers left; the number of rows put back to pending."""
        counts = settle(self.conn, self.occurrence_id, self.claimer, self.uncertain, self.settings.lease)
        if counts["newer"]:
            raise CampaignError(
                f"{self.claimer.token}: a later try of this task is running; this one stops so that nobody "
                "gets two messages."
            )
        alive = self.conn.execute(
            "SELECT state = 'running' FROM campaign.delivery_claims WHERE claimer = %s", (self.claimer.token,)
        ).fetchone()
        if not (alive and alive[0]):
            raise CampaignError(
                f"{self.claimer.token}: another task recorded this one as dead and settled its rows; it stops "
                "so that nobody gets two messages."
            )
        settled = {k: v for k, v in counts.items() if k not in ("dead_claimers", "newer") and v}
        if settled:
            self.log.warning(
                "rows left by %s (%d claimer(s) gone): %s; 'unknown' rows may or may not have been sent and "
                "are not sent again (on_uncertain=%r)",
                who,
                counts["dead_claimers"],
                settled,
                self.settings.on_uncertain,
            )
        return counts.get("pending", 0)

    def _pending(self) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM campaign.delivery_logs WHERE occurrence_id = %s AND status = 'pending'",
            (self.occurrence_id,),
        ).fetchone()
        return int(row[0]) if row else 0

    def _page(self, rows: list[dict[str, Any]]) -> None:
        gate = self.gate
        assert gate is not None
        missing = [r[LOG_ID] for r in rows if r.get(RECIPIENT) is None]
        if missing:
            raise CampaignError(
                f"{len(missing)} ledger row(s) (ids {missing[:5]}) have no recipient in the targets table "
                f"{self.targets}: it was replaced or pruned since the delivery was prepared. Nothing was sent to "
                "them (their rows stay pending); run the prepare task of this run again."
            )
        gate.arm([r[LOG_ID] for r in rows])  # marked while the page renders
        envelopes, refused = self.composer.compose(rows)  # a render error is the delivery's fault: raised
        if refused:
            gate.record([Result(log_id, "permanent", error=reason) for log_id, reason in refused])
        self._send(envelopes)
        self._progress()
        self._check_error_rate()

    def _send(self, envelopes: list[Envelope]) -> None:
        """Send a page's envelopes, retrying transient failures with exponential backoff."""
        gate, settings = self.gate, self.settings
        assert gate is not None
        pending = envelopes
        for attempt in range(settings.max_retries + 1):
            if not pending:
                return
            gate.arm([e.log_id for e in pending])
            results = gate.reconcile(pending, self.channel.send_batch(pending, gate))
            self._check_running()
            retry = [r for r in results if r.outcome == "transient"]
            if not retry:
                return
            if attempt == settings.max_retries:
                gate.record(
                    [
                        Result(r.log_id, "permanent", error=f"gave up after {attempt + 1} tries: {r.error}")
                        for r in retry
                    ]
                )
                return
            delay = min(settings.retry_delay * (2**attempt), 60.0)
            self.log.info("%d transient failure(s); retrying in %.1fs", len(retry), delay)
            if self.killed.wait(delay):
                self._check_running()
            again = {r.log_id for r in retry}
            pending = [e for e in pending if e.log_id in again]

    def _progress(self) -> None:
        gate = self.gate
        assert gate is not None
        now = time.monotonic()
        if now - self.last_report < self.settings.progress_every:
            return
        self.last_report = now
        done = gate.tally["sent"] + gate.tally["failed"]
        rate = done / max(now - self.started, 1e-9)
        left = self._pending()
        self.log.info(
            "sent %d (%d failed) at %.0f/s; %d pending in the occurrence, ETA %.0fs",
            gate.tally["sent"],
            gate.tally["failed"],
            rate,
            left,
            left / rate if rate else 0,
        )

    def _check_error_rate(self) -> None:
        gate, settings = self.gate, self.settings
        assert gate is not None
        failed, done = gate.tally["failed"], gate.tally["sent"] + gate.tally["failed"]
        if settings.max_error_rate is not None and done >= settings.min_for_error_rate:
            if failed / done > settings.max_error_rate:
                raise CampaignError(
                    f"max_error_rate={settings.max_error_rate}: {failed} of {done} recipients failed "
                    f"({failed / done:.0%}); stopped. The rest stay pending: fix the cause (see the errors in "
                    "campaign.delivery_logs) and clear the task to resume."
                )

    def _finish(
        self,
        pages: PageClaims | None,
        ledger: psycopg.Connection,
        rate: SharedRate | None,
        error: BaseException | None,
    ) -> dict[str, Any]:
        """Stop the threads, record every result, hand back what was only claimed, close the claim."""
        import json

        if pages is not None:
            pages.stop()
        gate = self.gate
        left: list[tuple[int, str, str | None, str | None]] = []
        try:
            if gate is not None:
                gate.stop()  # the channel's threads waiting to send give up...
            try:
                self.channel.close()  # ...so that closing the channel never waits on them
            finally:
                if gate is not None:
                    left = gate.close()
                if rate is not None:
                    rate.close()
            if left:  # the ledger thread failed: its last results are written here
                written, _ = write_results(self.conn, self.claimer.token, left)
                self.log.warning(
                    "%d result(s) written after the ledger connection failed", sum(written.values())
                )
                if gate is not None:
                    gate.tally.update({k: v for k, v in written.items() if k != "claimed"})
            handed = self._hand_back(self.conn)
            if handed:
                self.log.info("%d claimed recipient(s) handed back (pending)", handed)
        finally:
            tally = {k: gate.tally[k] if gate else 0 for k in ("sent", "failed")}
            message = None if error is None else f"{type(error).__name__}: {error}"
            try:
                self.conn.execute(
                    "UPDATE campaign.delivery_claims SET state = %s, counts = %s, error = %s,"
                    " finished_at = now(), updated_at = now() WHERE claimer = %s AND state = 'running'",
                    ("failed" if error else "finished", json.dumps(tally), message, self.claimer.token),
                )
            finally:
                ledger.close()  # releases the liveness lock
        if gate is not None and gate.unrecorded:
            self.log.warning(
                "%d result(s) were not recorded: another try had taken those rows over", gate.unrecorded
            )
        result = finish_occurrence(self.conn, self.occurrence_id, error=message)
        result["this_try"] = {"sent": tally.get("sent", 0), "failed": tally.get("failed", 0)}
        self.log.info(
            "done: %s (this task: %s)",
            ", ".join(f"{k} {v}" for k, v in sorted(result["by_status"].items())),
            result["this_try"],
        )
        return result
