"""`make scale`: one email delivery sent by 4 mapped shards on CeleryExecutor with two Celery workers.

A real Airflow 3 deployment (tests/airflow_cluster.py: api-server, scheduler, dag-processor) with
``[core] executor = CeleryExecutor`` and two ``airflow celery worker`` processes (concurrency 2
each: the 4 shards run at once, 2 on each worker), a private Redis as the broker and the Celery
result backend and the Airflow metadata in databases of their own on the embedded Postgres in
.campaign/scale-pg. Each worker runs in a UTS namespace of its own (``unshare --uts``, when it
can) with its own host name, so the task instances' ``hostname`` and the delivery claims' ``host``
tell the two apart as they would on two machines.

The DAG is ``targets >> prepare >> send.expand(shard=[0, 1, 2, 3])`` over SCALE_RECIPIENTS extra
profiles (default 20,000) of a fresh campaign database; the shards talk SMTP to a lean sink in a
process of its own, which stamps every message's MAIL FROM with its arrival time. The script then
prints what the LocalExecutor test (tests/e2e/test_delivery_shards.py) checks, and exits 1 when a
check fails: every recipient got exactly one message and nobody was missed (the sink and the
ledger agree), each shard's share and the worker that ran it, the send phase's duration and
throughput, the busiest 1 s window against the rate limit (SCALE_RATE, default 400/s), and how
many shards were sending within the same 100 ms (which shard sent a message: the sink's queue id
is the ledger row's provider message id, and the row names its claim).

Redis: ``redis-server`` from PATH, or Debian's package installed with apt-get (root only).
Nothing is installed into the virtualenv here: ``make scale`` installs the ``scale`` extra first.
Every process and every database it made is removed on exit, also on a failure or Ctrl-C; after a
failed run AIRFLOW_HOME (the components' and workers' output, the task logs) is kept and printed.

Settings (environment): SCALE_RECIPIENTS (20000), SCALE_RATE (400 messages/s for the whole
delivery), SCALE_PROFILES (5000 seeded profiles besides), SCALE_PAGE_SIZE (250), SCALE_TIMEOUT
(300 s for the DAG run), SCALE_PG_DIR (.campaign/scale-pg).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

N = int(os.environ.get("SCALE_RECIPIENTS", "20000"))
RATE = float(os.environ.get("SCALE_RATE", "400"))
PROFILES = int(os.environ.get("SCALE_PROFILES", "5000"))
PAGE_SIZE = int(os.environ.get("SCALE_PAGE_SIZE", "250"))
RUN_TIMEOUT = float(os.environ.get("SCALE_TIMEOUT", "300"))
PG_DIR = Path(os.environ.get("SCALE_PG_DIR", ".campaign/scale-pg"))
SHARDS = 4
WORKERS = 2
CONCURRENCY = 2  # per worker: 2 x 2 slots, the 4 shards at once
CONNECTIONS = 2  # SMTP connections per shard
FIRST_ID = 900000
DAG_ID = "scale_sharded_newsletter"
DELIVERY = "scale_newsletter"
CAMPAIGN_CONN = "campaign_scale"
SMTP_CONN = "smtp_scale_sink"
UNSUBSCRIBE_KEY = "scale-benchmark-unsubscribe-signing-key"
# Messages over the rate a 1 s window may hold: the sink stamps a message when its process gets the
# CPU (2 cores shared with 4 task processes, 2 workers, the scheduler, the api-server and Postgres),
# so a few messages at a window's edge land a few ms late in the next one; perfectly spaced stamps
# already count RATE + 1 in a closed 1 s window.
SLACK = max(5, math.ceil(RATE * 0.02))

DAG_FILE = textwrap.dedent(
    f"""
    import datetime as dt

    from airflow.sdk import DAG

    from airflow_campaign.operators.deliveries import EmailDeliveryOperator
    from airflow_campaign.operators.targeting import QueryOperator

    EMAIL = dict(
        delivery={DELIVERY!r},
        subject="{{{{ first_name }}}}, this week's selection",
        html=(
            "<p>Hello {{{{ first_name }}}},</p><p>You have {{{{ loyalty_points }}}} points to spend.</p>"
            '<p><a href="{{{{ unsubscribe_url }}}}">Unsubscribe</a></p>'
        ),
        from_addr="news@shop.example.com",
        from_name="Example Shop",
        unsubscribe_url="https://shop.example.com/unsubscribe",
        channel="smtp",
        channel_options={{"smtp_conn_id": {SMTP_CONN!r}, "connections": {CONNECTIONS}}},
        campaign_conn_id={CAMPAIGN_CONN!r},
    )

    with DAG(dag_id={DAG_ID!r}, schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False):
        targets = QueryOperator(
            task_id="targets",
            campaign_conn_id={CAMPAIGN_CONN!r},
            where="id > {FIRST_ID}",
            columns=["first_name", "loyalty_points"],
        )
        prepare = EmailDeliveryOperator(task_id="prepare", population=targets.output, mode="prepare", **EMAIL)
        send = EmailDeliveryOperator.partial(
            task_id="send",
            population=targets.output,
            mode="send",
            rate_limit={RATE!r},
            page_size={PAGE_SIZE},
            **EMAIL,
        ).expand(shard={list(range(SHARDS))!r})
        targets >> prepare >> send
    """
)


def address(g: int) -> str:
    return f"scale{g}@example.org"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# ---- the SMTP sink: a process of its own ------------------------------------------------------------


class _RecordingSink:
    """A minimal SMTP server protocol (fixed replies) that records, for each message, its recipients and
    ``time.time()`` at its MAIL FROM (the moment closest to the sender's rate gate)."""

    received: list[tuple[tuple[str, ...], float]] = []

    def __init__(self) -> None:
        self.buffer = b""
        self.in_data = False
        self.transport: Any = None
        self.mail_at = 0.0
        self.rcpts: list[str] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, chunk: bytes) -> None:
        self.buffer += chunk
        write = self.transport.write
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    self.buffer = self.buffer[-4:]  # the terminator may straddle two chunks
                    return
                self.buffer = self.buffer[end + 5 :]
                self.in_data = False
                self.received.append((tuple(self.rcpts), self.mail_at))
                write(b"250 2.0.0 Ok: queued as S%08d\r\n" % len(self.received))
                continue
            newline = self.buffer.find(b"\r\n")
            if newline < 0:
                return
            line = self.buffer[:newline]
            self.buffer = self.buffer[newline + 2 :]
            command = line[:4].upper()
            if command in (b"EHLO", b"HELO"):
                write(b"250-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 0\r\n")
            elif command == b"MAIL":
                self.mail_at = time.time()
                self.rcpts = []
                write(b"250 2.1.0 Ok\r\n")
            elif command == b"RCPT":
                start, end = line.find(b"<"), line.find(b">")
                self.rcpts.append(line[start + 1 : end].decode("utf-8", "replace"))
                write(b"250 2.1.5 Ok\r\n")
            elif command == b"DATA":
                self.in_data = True
                self.buffer = b"\r\n" + self.buffer  # a message may end right away
                write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif command == b"QUIT":
                write(b"221 Bye\r\n")
                self.transport.close()
                return
            else:  # RSET, NOOP
                self.rcpts = []
                write(b"250 Ok\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def eof_received(self) -> bool:
        return False


def _serve_sink(sock: socket.socket, pipe: Connection) -> None:
    """The sink process: serves until its parent goes; answers ``"dump"`` on the pipe with what it got."""
    import asyncio

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(loop.create_server(_RecordingSink, sock=sock))

    def control() -> None:
        try:
            request = pipe.recv()
        except EOFError:
            loop.stop()
            return
        if request == "dump":
            pipe.send(list(_RecordingSink.received))

    loop.add_reader(pipe.fileno(), control)
    pipe.send("ready")
    loop.run_forever()


class Sink:
    """The sink process on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = int(self.listener.getsockname()[1])
        self.pipe, theirs = ctx.Pipe()
        self.process = ctx.Process(target=_serve_sink, args=(self.listener, theirs), daemon=True)
        self.process.start()
        if not self.pipe.poll(30) or self.pipe.recv() != "ready":
            raise RuntimeError("the SMTP sink did not start")

    def received(self) -> list[tuple[tuple[str, ...], float]]:
        self.pipe.send("dump")
        if not self.pipe.poll(60):
            raise RuntimeError("the SMTP sink did not answer")
        return list(self.pipe.recv())

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.pipe.close()
        self.listener.close()


# ---- Redis -------------------------------------------------------------------------------------


def redis_server_binary() -> str:
    """``redis-server`` from PATH, or Debian's package installed now (as root)."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit(
            "redis-server is not installed, and installing it needs root: run "
            "`sudo apt-get update && sudo apt-get install -y redis-server` (or put a redis-server on PATH)"
        )
    say("redis-server is not on PATH: installing Debian's redis-server package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:  # the package would start a system-wide Redis service: keep services down
        policy.write_text(
            "#!/bin/sh\n# written by benchmarks/scale.py while it installs redis-server\nexit 101\n"
        )
        policy.chmod(0o755)
    try:
        for command in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"],
        ):
            say("$ " + " ".join(command))
            done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, check=False)
            if done.returncode:
                raise SystemExit(f"`{' '.join(command)}` failed with exit code {done.returncode}")
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if not found:
        raise SystemExit("apt-get installed redis-server, but there is no redis-server binary on PATH")
    return found


class Redis:
    """A private redis-server on 127.0.0.1 and a free port: no persistence, stopped with :meth:`stop`."""

    def __init__(self, binary: str, workdir: Path) -> None:
        from tests.airflow_cluster import free_port

        self.workdir = workdir
        self.log = workdir / "redis.log"
        for _attempt in range(3):
            self.port = free_port()
            with self.log.open("ab") as out:
                self.process = subprocess.Popen(
                    [
                        binary,
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        str(self.port),
                    ]
                    + ["--daemonize", "no", "--protected-mode", "yes", "--dir", str(workdir)],
                    cwd=workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            if self._wait():
                return
            self.stop()
        raise RuntimeError(f"redis-server did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait(self, timeout: float = 20.0) -> bool:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # e.g. lost the race for its port
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
                try:
                    if client.ping():
                        return True
                finally:
                    client.close()
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


# ---- Postgres ----------------------------------------------------------------------------------


def create_database(server_url: str, name: str) -> str:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server_url, dbname=name)


def drop_database(server_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with contextlib.suppress(psycopg.Error), psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def campaign_database(url: str) -> None:
    """Migrate, seed PROFILES profiles, and add the N profiles the delivery targets."""
    import psycopg

    from airflow_campaign.schema import migrate
    from airflow_campaign.seed import seed

    with psycopg.connect(url, autocommit=True) as conn:
        migrate.upgrade(conn)
        seed(conn, PROFILES)
        conn.execute(
            "INSERT INTO campaign.profiles (id, email, first_name, loyalty_points)"
            " SELECT %s + g, 'scale' || g || '@example.org', 'Name' || g, g FROM generate_series(1, %s) g",
            (FIRST_ID, N),
        )
        conn.execute("ANALYZE campaign.profiles")


# ---- the figures -------------------------------------------------------------------------------


def max_in_window(stamps: list[float], width: float = 1.0) -> int:
    """The most arrivals in any window [t, t + width) (sliding: every arrival starts one)."""
    stamps = sorted(stamps)
    return max((bisect.bisect_left(stamps, t + width, lo=i) - i for i, t in enumerate(stamps)), default=0)


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAILED'}] {what}")
        if not ok:
            self.failed.append(what)


def report(
    cluster: Any, run_id: str, state: str, campaign_url: str, received: list[tuple[tuple[str, ...], float]]
) -> list[str]:
    """Print the figures; the checks that failed."""
    import psycopg

    check = Checks()
    expected = {address(g) for g in range(1, N + 1)}
    tis = cluster.task_instances(DAG_ID, run_id)
    with psycopg.connect(campaign_url, autocommit=True) as conn:
        occurrences = conn.execute(
            "SELECT o.id, o.status FROM campaign.delivery_occurrences o"
            " JOIN campaign.deliveries d ON d.id = o.delivery_id WHERE d.name = %s",
            (DELIVERY,),
        ).fetchall()
        occurrence_id = occurrences[0][0] if len(occurrences) == 1 else None
        by_status = dict(
            conn.execute(
                "SELECT status, count(*) FROM campaign.delivery_logs WHERE occurrence_id = %s GROUP BY 1",
                (occurrence_id,),
            ).fetchall()
        )
        ledger_sent = {
            row[0]
            for row in conn.execute(
                "SELECT address FROM campaign.delivery_logs WHERE occurrence_id = %s AND status = 'sent'",
                (occurrence_id,),
            )
        }
        shard_of_queue_id = dict(
            conn.execute(
                "SELECT l.provider_message_id, c.shard FROM campaign.delivery_logs l"
                " JOIN campaign.delivery_claims c ON c.claimer = l.claimed_by WHERE l.occurrence_id = %s",
                (occurrence_id,),
            ).fetchall()
        )
        claims = conn.execute(
            "SELECT shard, host, pid, state, coalesce((counts->>'sent')::int, 0),"
            " coalesce((counts->>'failed')::int, 0) FROM campaign.delivery_claims WHERE occurrence_id = %s"
            " ORDER BY shard, id",
            (occurrence_id,),
        ).fetchall()

    per_address = Counter(r for rcpts, _ in received for r in rcpts)
    multi = [rcpts for rcpts, _ in received if len(rcpts) != 1]
    duplicates = {a: n for a, n in per_address.items() if n > 1}
    missed = expected - set(per_address)
    unexpected = set(per_address) - expected
    ledger_missed = expected - ledger_sent
    print()
    print(f"DAG run {run_id}: {state}")
    print(f"  recipients targeted          {N:>8}")
    print(f"  messages received (sink)     {len(received):>8}")
    print(f"  distinct recipients received {len(per_address):>8}")
    print(f"  received more than once      {len(duplicates):>8}")
    print(f"  missed (not at the sink)     {len(missed):>8}")
    print(f"  missed (not 'sent' in ledger){len(ledger_missed):>8}")
    print(f"  unexpected recipients        {len(unexpected):>8}")
    print(f"  ledger statuses              {by_status}")

    print("\n  task instances (the Celery worker is the task instance's hostname)")
    print(
        f"    {'task':<10} {'map':>3} {'state':<8} {'try':>3} {'worker':<16} {'pid':>7} {'start':>7} {'end':>7}"
    )
    t0 = min((t.start_date for t in tis if t.start_date), default=None)

    def rel(value: Any) -> str:
        return f"{(value - t0).total_seconds():7.2f}" if value is not None and t0 is not None else "      -"

    order = {"targets": 0, "prepare": 1, "send": 2}
    for t in sorted(tis, key=lambda t: (order.get(t.task_id, 9), t.map_index)):
        print(
            f"    {t.task_id:<10} {t.map_index:>3} {t.state or '-':<8} {t.try_number:>3} {t.hostname or '-':<16}"
            f" {t.pid or 0:>7} {rel(t.start_date)} {rel(t.end_date)}"
        )
    shards = {t.map_index: t for t in tis if t.task_id == "send"}
    print("\n  delivery claims (campaign.delivery_claims)")
    print(f"    {'shard':>5} {'host':<16} {'pid':>7} {'state':<9} {'sent':>6} {'failed':>6} {'share':>6}")
    sent: dict[int, int] = {}
    for shard, host, pid, claim_state, n_sent, n_failed in claims:
        sent[shard] = sent.get(shard, 0) + n_sent
        print(
            f"    {shard:>5} {host or '-':<16} {pid or 0:>7} {claim_state:<9} {n_sent:>6} {n_failed:>6}"
            f" {100 * n_sent / max(N, 1):5.1f}%"
        )
    per_worker = Counter(t.hostname for t in shards.values())
    print(f"    shards per worker: {dict(per_worker)}")

    stamps = sorted(t for _, t in received)
    duration = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    busiest = max_in_window(stamps)
    print(
        f"\n  send phase {duration:.2f}s (first to last message at the sink),"
        f" {len(stamps) / duration if duration else 0:.1f} messages/s"
    )
    print(f"  busiest 1 s window: {busiest} messages; rate limit {RATE:g}/s (slack {SLACK})")
    if stamps:
        buckets = Counter(int((t - stamps[0]) // 5) for t in stamps)
        print(
            "  messages/s in each 5 s of the send: "
            + " ".join(f"{buckets.get(i, 0) / 5:.0f}" for i in range(max(buckets) + 1))
        )
    # which shard sent each message: the sink's queue id is in the ledger, the ledger row names its claim
    by_shard: dict[int, list[float]] = {}
    for index, (_, t) in enumerate(received, 1):
        shard_no = shard_of_queue_id.get(f"S{index:08d}")
        if shard_no is not None:
            by_shard.setdefault(shard_no, []).append(t)
    if by_shard and stamps:
        print("  per shard: first and last message (s after the first of all), busiest 1 s of its own")
        for shard_no, times in sorted(by_shard.items()):
            print(
                f"    shard {shard_no}: {times[0] - stamps[0]:6.2f} .. {times[-1] - stamps[0]:6.2f}"
                f"  {len(times):>6} messages, busiest 1 s {max_in_window(times)}"
            )
        for width in (0.1, 1.0):
            windows: dict[int, set[int]] = {}
            for shard_no, times in by_shard.items():
                for t in times:
                    windows.setdefault(int((t - stamps[0]) // width), set()).add(shard_no)
            spread = Counter(len(v) for v in windows.values())
            total = sum(spread.values())
            print(
                f"  shards sending within the same {width * 1000:.0f} ms (share of the send's windows): "
                + ", ".join(f"{k}: {100 * spread[k] / total:.0f}%" for k in sorted(spread))
            )
    print(f"  load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")

    print("\nchecks")
    ti_states = sorted((t.task_id, t.map_index, t.state) for t in tis)
    want = sorted(
        [("targets", -1, "success"), ("prepare", -1, "success")]
        + [("send", i, "success") for i in range(SHARDS)]
    )
    check(state == "success" and ti_states == want, "the DAG run and its 6 task instances succeeded")
    check(len(received) == N and len(per_address) == N, f"the sink received {N} messages for {N} recipients")
    check(not duplicates, "nobody received more than one message")
    check(not multi, "every message had exactly one recipient")
    check(not missed and not unexpected, "nobody was missed, nobody unexpected was sent to")
    check(
        by_status == {"sent": N} and not ledger_missed, "the ledger has every recipient 'sent', nothing else"
    )
    check(
        sorted(sent) == list(range(SHARDS)) and all(v > 0 for v in sent.values()) and sum(sent.values()) == N,
        "each of the 4 shards sent a share, adding up to the whole",
    )
    check(
        len(claims) == SHARDS and all(c[3] == "finished" for c in claims),
        "one claim per shard, each finished",
    )
    check(
        len({t.pid for t in shards.values()}) == SHARDS
        and all(t.start_date and t.end_date for t in shards.values())
        and max(t.start_date for t in shards.values()) < min(t.end_date for t in shards.values()),
        "the 4 shards ran at the same time, in 4 processes",
    )
    hosts = {t.hostname for t in tis}
    if len(hosts) > 1 or WORKERS == 1:
        check(len(per_worker) == WORKERS, f"the shards ran on both workers ({dict(per_worker)})")
    else:
        print("  [--] the workers share one host name (no UTS namespaces here): which ran what is not told")
    check(busiest <= RATE + SLACK, f"no 1 s window over the rate limit: {busiest} <= {RATE:g} + {SLACK}")
    check(
        duration >= (N - 1 - SLACK) / RATE,
        f"the send lasted at least (N - 1 - slack) / rate = {(N - 1 - SLACK) / RATE:.2f}s",
    )
    return check.failed


# ---- the run -----------------------------------------------------------------------------------


def uts_prefix(hostname: str) -> tuple[str, ...]:
    """A command prefix that runs the rest as host ``hostname`` (a UTS namespace), or () if it cannot."""
    unshare = shutil.which("unshare")
    if not unshare:
        return ()
    probe = subprocess.run(
        [unshare, "--uts", "--", "sh", "-c", 'hostname "$0" && hostname', hostname],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode or probe.stdout.strip() != hostname:
        return ()
    return (unshare, "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', hostname)


def main() -> int:
    if not sys.platform.startswith("linux"):
        print("benchmarks/scale.py runs on Linux only (process handling)", file=sys.stderr)
        return 2

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGHUP, terminated)
    began = time.monotonic()
    cluster: Any = None
    keep_home = False
    with contextlib.ExitStack() as stack:
        try:
            binary = redis_server_binary()
            from airflow_campaign import embedded
            from airflow_campaign.embedded import connection_fields
            from tests.airflow_cluster import AirflowCluster, ExtraProcess, sqlalchemy_url

            workdir = Path(tempfile.mkdtemp(prefix="campaign-scale-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)

            say(f"embedded Postgres in {PG_DIR}")
            server_url = embedded.start(PG_DIR).url
            tag = uuid.uuid4().hex[:8]
            campaign_db, celery_db = f"campaign_scale_{tag}", f"celery_results_{tag}"
            stack.callback(drop_database, server_url, campaign_db)
            campaign_url = create_database(server_url, campaign_db)
            stack.callback(drop_database, server_url, celery_db)
            create_database(server_url, celery_db)
            started = time.monotonic()
            campaign_database(campaign_url)
            say(
                f"campaign database {campaign_db}: {PROFILES} seeded + {N} target profiles ({time.monotonic() - started:.1f}s)"
            )

            redis = Redis(binary, workdir)
            stack.callback(redis.stop)
            say(f"redis-server {binary} on {redis.url} (pid {redis.process.pid})")
            sink = Sink()
            stack.callback(sink.stop)
            say(f"SMTP sink on 127.0.0.1:{sink.port} (pid {sink.process.pid})")

            dags = workdir / "dags"
            dags.mkdir()
            (dags / "scale_sharded_newsletter.py").write_text(DAG_FILE)
            env = {
                f"AIRFLOW_CONN_{CAMPAIGN_CONN.upper()}": json.dumps(connection_fields(campaign_url)),
                f"AIRFLOW_CONN_{SMTP_CONN.upper()}": json.dumps(
                    {
                        "conn_type": "smtp",
                        "host": "127.0.0.1",
                        "port": sink.port,
                        "extra": {"starttls": False},
                    }
                ),
                "AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY": UNSUBSCRIBE_KEY,
                "AIRFLOW__CELERY__BROKER_URL": redis.url,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + sqlalchemy_url(server_url, celery_db),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(CONCURRENCY),
                "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
                "AIRFLOW__LOGGING__CELERY_LOGGING_LEVEL": "INFO",
            }
            workers = {}
            for i in range(1, WORKERS + 1):
                name = f"scale-worker-{i}"
                prefix = uts_prefix(name)
                workers[f"celery-worker-{i}"] = ExtraProcess(
                    args=("celery", "worker", "--celery-hostname", name, "--concurrency", str(CONCURRENCY))
                    + ("--skip-serve-logs",),
                    # the task instance's hostname: the namespace's host name, without a DNS look-up
                    env={"AIRFLOW__CORE__HOSTNAME_CALLABLE": "socket.gethostname"} if prefix else {},
                    prefix=prefix,
                )
            say(
                f"Airflow: api-server, scheduler (CeleryExecutor), dag-processor, {WORKERS} Celery workers x "
                f"{CONCURRENCY} ({'own host names' if workers['celery-worker-1'].prefix else 'one host name'})"
            )
            cluster = AirflowCluster(
                server_url,
                dags,
                env=env,
                parallelism=max(SHARDS, WORKERS * CONCURRENCY),
                executor="CeleryExecutor",
                extra_processes=workers,
                use_template=False,
                startup_timeout=180,
            )
            stack.callback(lambda: cluster.stop(keep_home=keep_home))
            started = time.monotonic()
            cluster.start()
            for name in workers:
                cluster.wait_for_output(name, " ready.", timeout=120)
            up = time.monotonic()
            say(f"cluster up in {up - started:.1f}s (AIRFLOW_HOME {cluster.home})")

            cluster.wait_for_dag(DAG_ID, timeout=120)
            cluster.unpause(DAG_ID)
            run_id = cluster.trigger(DAG_ID)
            say(f"triggered {DAG_ID} ({run_id}): {N} recipients, rate limit {RATE:g}/s, {SHARDS} shards")
            state = cluster.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT)
            ran = time.monotonic()
            say(f"run {state} in {ran - up:.1f}s")
            received = sink.received()
            failed = report(cluster, run_id, state, campaign_url, received)
            if state != "success":
                print(cluster.failed_task_logs(DAG_ID, run_id))
            print(
                f"\nwall time: {time.monotonic() - began:.1f}s so far (set-up {up - began:.1f}s,"
                f" run {ran - up:.1f}s)"
            )
            if failed:
                keep_home = True
                print(f"\n{len(failed)} check(s) FAILED; AIRFLOW_HOME kept: {cluster.home}")
                return 1
            print("\nall checks passed")
            return 0
        except BaseException as exc:
            # a failure keeps AIRFLOW_HOME for a post-mortem; Ctrl-C or a kill does not
            keep_home = not isinstance(exc, (KeyboardInterrupt, SystemExit))
            if keep_home and cluster is not None and cluster.home.exists():
                print(f"\nfailed ({type(exc).__name__}); AIRFLOW_HOME kept: {cluster.home}", file=sys.stderr)
            elif not keep_home:
                print(f"\ninterrupted ({type(exc).__name__}): cleaning up", file=sys.stderr)
            raise
        finally:
            say("stopping everything")
            stop_started = time.monotonic()
            stack.close()
            say(f"stopped in {time.monotonic() - stop_started:.1f}s; total {time.monotonic() - began:.1f}s")
    return 1


if __name__ == "__main__":
    sys.exit(main())
