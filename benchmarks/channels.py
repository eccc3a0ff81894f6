"""SmtpChannel against a plain smtplib loop and against the smtp provider's SmtpHook, to a local sink.

The sink is a minimal SMTP server (fixed replies; each message read up to its final dot and
dropped) in processes of its own (one per connection, up to one per core, sharing one listening
socket, on uvloop when installed), so that the sender's threads and the server do not share
one interpreter lock and the sink costs as little CPU as it can. On a small machine it can
still be the ceiling: both sides of comparison 1 then measure the sink.

1. ``SmtpChannel`` sends N pre-rendered messages over ``connections`` connections; the other
   side is the hand-written equivalent: ``connections`` threads, one ``smtplib.SMTP`` each,
   each calling ``sendmail(sender, [recipient], message)`` on its share of the same messages.
2. The same, for a smaller N, against the Airflow-native way: one ``SmtpHook`` (its connection
   opened once and reused) and a loop calling ``send_email_smtp(to=recipient, ...)`` for each
   recipient, which builds each message with the email package and sends it on one connection.

Run by ``benchmarks/run.py`` (``bench_smtp``), or alone: ``python -m benchmarks.channels [N] [connections]``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import smtplib
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="campaign-bench-airflow-"))

SENDER = "news@shop.example"
HOOK_N = 2_000
BODY = "<p>Hello {name},</p>\r\n" + "<p>Our spring offer: 20% off everything in store.</p>\r\n" * 50
REPEAT = int(os.environ.get("BENCH_SMTP_REPEAT", "3"))
HOOK_REPEAT = int(os.environ.get("BENCH_SMTP_HOOK_REPEAT", "5"))  # a short run: more repeats


class _LeanSink:
    """A minimal SMTP server protocol: fixed replies, DATA read up to its terminating dot and dropped.

    The sink is the same for every side of a comparison; the lighter it is, the less it hides
    of the senders' own cost on a small machine.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.in_data = False
        self.transport: Any = None

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
                write(b"250 2.0.0 Ok: queued\r\n")
                continue
            newline = self.buffer.find(b"\r\n")
            if newline < 0:
                return
            command = self.buffer[:4].upper()
            self.buffer = self.buffer[newline + 2 :]
            if command in (b"EHLO", b"HELO"):
                write(b"250-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 0\r\n")
            elif command == b"DATA":
                self.in_data = True
                self.buffer = b"\r\n" + self.buffer  # a message may end right away
                write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif command == b"QUIT":
                write(b"221 Bye\r\n")
                self.transport.close()
                return
            else:
                write(b"250 Ok\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def eof_received(self) -> bool:
        return False


def _serve(sock: socket.socket, pipe: Connection) -> None:
    """One sink process on the shared listening socket (uvloop when installed), until terminated."""
    import asyncio

    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(loop.create_server(_LeanSink, sock=sock))  # type: ignore[arg-type]
    pipe.send(True)
    loop.run_forever()


@contextmanager
def sink(processes: int = 1) -> Iterator[int]:
    """A discarding SMTP server in ``processes`` child processes sharing one listening socket; yields its port."""
    ctx = multiprocessing.get_context("spawn")
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    children = []
    try:
        for _ in range(processes):
            ours, theirs = ctx.Pipe()
            child = ctx.Process(target=_serve, args=(listener, theirs), daemon=True)
            child.start()
            children.append(child)
            ours.recv()
        yield listener.getsockname()[1]
    finally:
        for child in children:
            child.terminate()
            child.join(10)
        listener.close()


def sink_processes(connections: int) -> int:
    """As many sink processes as connections, up to one per core: aiosmtpd is slower than the sender."""
    return max(1, min(connections, os.cpu_count() or 1))


def messages(n: int) -> list[tuple[int, str, bytes]]:
    """``n`` pre-rendered messages (about 3 KB, HTML and text) as (log id, recipient, bytes)."""
    made = []
    for i in range(1, n + 1):
        to = f"customer{i}@example.org"
        html = BODY.format(name=f"Customer {i}")
        made.append(
            (
                i,
                to,
                (
                    f"From: Shop <{SENDER}>\r\nTo: <{to}>\r\nSubject: Spring offer\r\n"
                    f"Message-ID: <{i}.spring@shop.example>\r\nMIME-Version: 1.0\r\n"
                    f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n"
                ).encode(),
            )
        )
    return made


def plain_smtplib(port: int, batch: list[tuple[int, str, bytes]], connections: int) -> None:
    """The hand-written equivalent: one thread and one smtplib connection per share of the messages."""

    def share(part: list[tuple[int, str, bytes]]) -> None:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.local", timeout=30)
        for _, to, message in part:
            client.sendmail(SENDER, [to], message)
        client.quit()

    threads = [threading.Thread(target=share, args=(batch[i::connections],)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def ours(conn_id: str, batch: list[tuple[int, str, bytes]], connections: int) -> None:
    from airflow_campaign.channels.base import Envelope
    from airflow_campaign.channels.smtp import SmtpChannel

    envelopes = [Envelope(i, to, message, SENDER) for i, to, message in batch]
    with SmtpChannel(conn_id, connections=connections) as channel:
        results = channel.send_batch(envelopes)
    failed = [r for r in results if r.outcome != "sent"]
    assert len(results) == len(batch) and not failed, failed[:3]


def hook_loop(batch: list[tuple[int, str, bytes]]) -> None:
    """The Airflow-native way: SmtpHook.send_email_smtp once per recipient, on one reused connection."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook("smtp_default") as hook:
        for i, to, _ in batch:
            hook.send_email_smtp(
                to=to,
                subject="Spring offer",
                html_content=BODY.format(name=f"Customer {i}"),
                from_email=f"Shop <{SENDER}>",
            )


def bench_smtp(results: list[dict[str, Any]], n: int, connections: int) -> None:
    import logging

    from benchmarks.run import interleaved, record

    logging.getLogger("airflow").setLevel(logging.ERROR)
    batch = messages(n)
    with sink(sink_processes(connections)) as port:
        fields = {"conn_type": "smtp", "host": "127.0.0.1", "port": port}
        os.environ["AIRFLOW_CONN_SMTP_BENCH"] = json.dumps(
            fields | {"extra": {"local_hostname": "bench.local"}}
        )
        os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps(
            fields | {"extra": {"disable_ssl": True, "disable_tls": True}}
        )
        ours_s, other_s = interleaved(
            lambda _: ours("smtp_bench", batch, connections),
            lambda _: plain_smtplib(port, batch, connections),
            REPEAT,
        )
        print(f"  SmtpChannel {n / ours_s:,.0f} msg/s, smtplib loop {n / other_s:,.0f} msg/s")
        record(
            results,
            f"SmtpChannel, {n:,} msgs, {connections} conns",
            ours_s,
            f"smtplib loop, {connections} threads",
            other_s,
            1.25,
            "lower",
        )
        few = batch[: min(HOOK_N, n)]
        ours_s, other_s = interleaved(
            lambda _: ours("smtp_bench", few, connections), lambda _: hook_loop(few), HOOK_REPEAT
        )
        print(f"  SmtpChannel {len(few) / ours_s:,.0f} msg/s, SmtpHook loop {len(few) / other_s:,.0f} msg/s")
        record(
            results,
            f"SmtpChannel vs SmtpHook, {len(few):,} msgs",
            ours_s,
            "SmtpHook.send_email_smtp loop",
            other_s,
            0.2,
            "lower",
        )


if __name__ == "__main__":
    out: list[dict[str, Any]] = []
    bench_smtp(
        out, int(sys.argv[1]) if len(sys.argv) > 1 else 20_000, int(sys.argv[2]) if len(sys.argv) > 2 else 4
    )
