"""SmtpChannel against a plain smtplib loop and against the smtp provider's SmtpHook, to a local sink.

The sink is a minimal SMTP server (fixed replies; each message read up to its final dot and
kept as bytes until the benchmark asks what it received) in processes of its own (one per
connection, up to one per core, sharing one listening socket, on uvloop when installed), so
that the sender's threads and the server do not share one interpreter lock and the sink costs
as little CPU as it can. On a small machine it can still be the ceiling: both sides of
comparison 1 then measure the sink.

1. ``SmtpChannel`` sends N pre-rendered messages over ``connections`` connections; the other
   side is the hand-written equivalent: ``connections`` threads, one ``smtplib.SMTP`` each,
   each calling ``sendmail(sender, [recipient], message)`` on its share of the same messages.
   Checked: the sink received the same messages (bytes), to the same recipients.
2. The same template sent to a smaller N both ways, each side rendering every recipient's
   personalised subject and html inside the clock, on the same number of connections (1 vs 1,
   then ``connections`` vs ``connections``): ours is the delivery engine's composer
   (``compile_email`` once, then per recipient ``EmailComposer``: render + ``MimeSkeleton``)
   and ``SmtpChannel(connections=n)``; the other is the Airflow-native way: Jinja's sandbox
   renders the subject and html, and ``SmtpHook.send_email_smtp(to=recipient, ...)`` builds
   the message with the email package and sends it, one ``SmtpHook`` (its connection opened
   once and reused) per thread, ``n`` threads each sending its share. Ours also builds a text
   part (multipart/alternative), which the hook does not. Checked: the same number of messages,
   to the same recipients, with equal decoded subjects and html bodies.

Every run of every side is checked (outside the clock) against what the batch should give,
before a ratio is printed. Names in results.json: ``SmtpChannel, N msgs, C conns`` (1) and
``SmtpChannel vs SmtpHook, N msgs, C conn(s)`` (2).

Run by ``benchmarks/run.py`` (``bench_smtp``), or alone: ``python -m benchmarks.channels [N] [connections]``.
"""

from __future__ import annotations

import email
import hashlib
import json
import multiprocessing
import os
import smtplib
import socket
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.policy import compat32
from multiprocessing.connection import Connection
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="campaign-bench-airflow-"))

SENDER = "news@shop.example"
HOOK_N = 2_000
BODY = "<p>Hello {name},</p>\r\n" + "<p>Our spring offer: 20% off everything in store.</p>\r\n" * 50
# the template of comparison 2, rendered by each side for each recipient
SUBJECT_TEMPLATE = "{{ first_name }}, our spring offer: {{ points }} points"
HTML_TEMPLATE = (
    "<p>Hello {{ first_name }},</p>\r\n"
    + "<p>Our spring offer: 20% off everything in store.</p>\r\n" * 50
    + "<p>You have {{ points }} points.</p>\r\n"
)
MASK = (1 << 128) - 1
REPEAT = int(os.environ.get("BENCH_SMTP_REPEAT", "3"))
HOOK_REPEAT = int(os.environ.get("BENCH_SMTP_HOOK_REPEAT", "5"))  # a short run: more repeats


# what this sink process received since the last report: (envelope recipients, message bytes)
_KEPT: list[tuple[tuple[bytes, ...], bytes]] = []


class _LeanSink:
    """A minimal SMTP server protocol: fixed replies, DATA read up to its terminating dot and kept.

    The sink is the same for every side of a comparison; the lighter it is, the less it hides
    of the senders' own cost on a small machine. It keeps each message's bytes and envelope
    recipients (no parsing) until the benchmark asks for a report, outside the clock.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.in_data = False
        self.recipients: list[bytes] = []
        self.scanned = 0  # how much of a message's data was searched for its end already
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, chunk: bytes) -> None:
        self.buffer += chunk
        write = self.transport.write
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n", self.scanned)
                if end < 0:
                    self.scanned = max(0, len(self.buffer) - 4)  # the terminator may straddle two chunks
                    return
                self.scanned = 0
                _KEPT.append((tuple(self.recipients), self.buffer[2:end]))  # after the CRLF added at DATA
                self.recipients = []
                self.buffer = self.buffer[end + 5 :]
                self.in_data = False
                write(b"250 2.0.0 Ok: queued\r\n")
                continue
            newline = self.buffer.find(b"\r\n")
            if newline < 0:
                return
            line = self.buffer[:newline]
            command = line[:4].upper()
            self.buffer = self.buffer[newline + 2 :]
            if command in (b"EHLO", b"HELO"):
                write(b"250-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 0\r\n")
            elif command == b"MAIL":
                self.recipients = []
                write(b"250 Ok\r\n")
            elif command == b"RCPT":
                self.recipients.append(line[line.find(b"<") + 1 : line.rfind(b">")])
                write(b"250 Ok\r\n")
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
    loop.add_reader(pipe.fileno(), _report, pipe)
    pipe.send(True)
    loop.run_forever()


def _report(pipe: Connection) -> None:
    """Answer a report request (``"raw"`` or ``"decoded"``) with this process's Received, and forget it."""
    how = pipe.recv()
    kept = list(_KEPT)
    _KEPT.clear()
    pipe.send(Received.of(kept, decoded=how == "decoded"))


def _digest(*fields: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(b"\0".join(fields), digest_size=16).digest(), "big")


def _unstuff(data: bytes) -> bytes:
    """The message as sent: SMTP's dot-stuffing undone, without the line break before the final dot."""
    if data.startswith(b".."):
        data = data[1:]
    return data.replace(b"\r\n..", b"\r\n.").rstrip(b"\r\n")


def _decoded(message: bytes) -> tuple[bytes, bytes, bytes]:
    """(To, Subject, html body) of a message, decoded (RFC 2047 words, transfer encodings), with
    line breaks as LF and no trailing ones: what a reader sees, however the message was encoded."""
    parsed = email.message_from_bytes(message, policy=compat32)
    subject = " ".join(str(make_header(decode_header(parsed.get("Subject", "")))).split())
    html = b""
    for part in parsed.walk():
        if part.get_content_type() == "text/html":
            payload = part.get_payload(decode=True)
            html = payload.decode(part.get_content_charset() or "utf-8").encode() if payload else b""
    html = html.replace(b"\r\n", b"\n").rstrip(b"\n")
    return str(parsed.get("To", "")).strip().encode(), subject.encode(), html


@dataclass(frozen=True)
class Received:
    """What a sink received, in a form that does not depend on order or on which process got what:
    the message count and sums (mod 2**128) of a digest per message of its envelope recipients,
    and of its recipients with either its bytes (``raw``) or its decoded To, Subject and html."""

    messages: int
    recipients: int
    content: int

    @classmethod
    def of(cls, kept: Iterable[tuple[tuple[bytes, ...], bytes]], decoded: bool) -> Received:
        n = recipients = content = 0
        for rcpt, data in kept:
            n += 1
            to = b",".join(rcpt)
            recipients += _digest(to)
            message = _unstuff(data)
            content += _digest(to, *_decoded(message)) if decoded else _digest(to, message)
        return cls(n, recipients & MASK, content & MASK)

    def __add__(self, other: Received) -> Received:
        return Received(
            self.messages + other.messages,
            (self.recipients + other.recipients) & MASK,
            (self.content + other.content) & MASK,
        )


class Sink:
    """The sink's port, and ``received()``: what its processes got since the last call."""

    def __init__(self, port: int, pipes: list[Connection]) -> None:
        self.port = port
        self.pipes = pipes

    def received(self, decoded: bool = False) -> Received:
        for pipe in self.pipes:
            pipe.send("decoded" if decoded else "raw")
        total = Received(0, 0, 0)
        for pipe in self.pipes:
            total = total + pipe.recv()
        return total


@contextmanager
def sink(processes: int = 1) -> Iterator[Sink]:
    """An SMTP server in ``processes`` child processes sharing one listening socket; yields its Sink."""
    ctx = multiprocessing.get_context("spawn")
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    children = []
    pipes = []
    try:
        for _ in range(processes):
            ours, theirs = ctx.Pipe()
            child = ctx.Process(target=_serve, args=(listener, theirs), daemon=True)
            child.start()
            children.append(child)
            ours.recv()
            pipes.append(ours)
        yield Sink(listener.getsockname()[1], pipes)
    finally:
        for child in children:
            child.terminate()
            child.join(10)
        listener.close()


def sink_processes(connections: int) -> int:
    """As many sink processes as connections, up to one per core: a server is slower than the sender."""
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


def sent_as(batch: list[tuple[int, str, bytes]]) -> Received:
    """What the sink must receive for ``batch`` (comparison 1: the bytes themselves)."""
    return Received.of((((to.encode(),), message) for _, to, message in batch), decoded=False)


def plain_smtplib(port: int, batch: list[tuple[int, str, bytes]], connections: int) -> None:
    """The hand-written equivalent: one thread and one smtplib connection per share of the messages."""

    def share(part: list[tuple[int, str, bytes]]) -> None:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.local", timeout=30)
        for _, to, message in part:
            client.sendmail(SENDER, [to], message)
        client.quit()

    _threads(share, batch, connections)


def _threads(work: Any, batch: list[Any], connections: int) -> None:
    """``work(share)`` in ``connections`` threads, each on every ``connections``-th item of ``batch``."""
    threads = [threading.Thread(target=work, args=(batch[i::connections],)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _send(conn_id: str, envelopes: list[Any], connections: int) -> None:
    from airflow_campaign.channels.smtp import SmtpChannel

    with SmtpChannel(conn_id, connections=connections) as channel:
        results = channel.send_batch(envelopes)
    failed = [r for r in results if r.outcome != "sent"]
    assert len(results) == len(envelopes) and not failed, failed[:3]


def ours(conn_id: str, batch: list[tuple[int, str, bytes]], connections: int) -> None:
    from airflow_campaign.channels.base import Envelope

    _send(conn_id, [Envelope(i, to, message, SENDER) for i, to, message in batch], connections)


# ---- comparison 2: the same template rendered and sent both ways ---------------------------------


def recipients(n: int) -> list[dict[str, Any]]:
    """``n`` recipients: address and the two values the template uses."""
    return [
        {
            "id": i,
            "email": f"customer{i}@example.org",
            "first_name": f"Customer {i}",
            "points": (i * 37) % 1000,
        }
        for i in range(1, n + 1)
    ]


def expected(rows: list[dict[str, Any]]) -> Received:
    """What the sink must receive for ``rows`` (comparison 2), rendered here once with Jinja."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    subject = SandboxedEnvironment(undefined=StrictUndefined).from_string(SUBJECT_TEMPLATE)
    html = SandboxedEnvironment(autoescape=True, undefined=StrictUndefined).from_string(HTML_TEMPLATE)
    total = Received(0, 0, 0)
    for row in rows:
        to = row["email"].encode()
        body = html.render(row).encode().replace(b"\r\n", b"\n").rstrip(b"\n")
        total = total + Received(1, _digest(to), _digest(to, to, subject.render(row).encode(), body))
    return total


def rendered(conn_id: str, rows: list[dict[str, Any]], connections: int) -> None:
    """Ours: the delivery engine's composer renders and builds each message, SmtpChannel sends them."""
    from airflow_campaign.delivery.email import LOG_ID, RECIPIENT, SEND_TO, EmailComposer
    from airflow_campaign.delivery.mime import MimeSkeleton
    from airflow_campaign.delivery.render import EmailContent, compile_email

    content = EmailContent(subject=SUBJECT_TEMPLATE, html=HTML_TEMPLATE, from_addr=SENDER, from_name="Shop")
    composer = EmailComposer(
        compile_email(content, marketing=False),
        MimeSkeleton.for_email(content, "bench/smtp"),
        "bench",
        "smtp",
    )
    envelopes, refused = composer.compose(
        [{**row, LOG_ID: row["id"], SEND_TO: row["email"], RECIPIENT: str(row["id"])} for row in rows]
    )
    assert not refused, refused[:3]
    _send(conn_id, envelopes, connections)


def hook_loop(rows: list[dict[str, Any]], connections: int) -> None:
    """The Airflow-native way: Jinja renders, SmtpHook.send_email_smtp builds and sends, one
    SmtpHook (one reused connection) per thread."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    subject = SandboxedEnvironment(undefined=StrictUndefined).from_string(SUBJECT_TEMPLATE)
    html = SandboxedEnvironment(autoescape=True, undefined=StrictUndefined).from_string(HTML_TEMPLATE)

    def share(part: list[dict[str, Any]]) -> None:
        with SmtpHook("smtp_default") as hook:
            for row in part:
                hook.send_email_smtp(
                    to=row["email"],
                    subject=subject.render(row),
                    html_content=html.render(row),
                    from_email=f"Shop <{SENDER}>",
                )

    _threads(share, rows, connections)


def bench_smtp(results: list[dict[str, Any]], n: int, connections: int) -> None:
    import logging

    from benchmarks.run import interleaved, record

    logging.getLogger("airflow").setLevel(logging.ERROR)
    batch = messages(n)
    with sink(sink_processes(connections)) as server:
        fields = {"conn_type": "smtp", "host": "127.0.0.1", "port": server.port}
        os.environ["AIRFLOW_CONN_SMTP_BENCH"] = json.dumps(
            fields | {"extra": {"local_hostname": "bench.local"}}
        )
        os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps(
            fields | {"extra": {"disable_ssl": True, "disable_tls": True}}
        )

        def check(want: Received, decoded: bool) -> Any:
            def received(side: str, i: int, _: Any) -> None:
                got = server.received(decoded)
                if got != want:
                    raise AssertionError(
                        f"run {i} of {side}: the sink received {got.messages} messages, expected {want.messages};"
                        f" same recipients: {got.recipients == want.recipients}, same content:"
                        f" {got.content == want.content}"
                    )

            return received

        ours_s, other_s = interleaved(
            lambda _: ours("smtp_bench", batch, connections),
            lambda _: plain_smtplib(server.port, batch, connections),
            REPEAT,
            check=check(sent_as(batch), decoded=False),
        )
        print(
            f"  SmtpChannel {n / ours_s:,.0f} msg/s, smtplib loop {n / other_s:,.0f} msg/s"
            " (same bytes to the same recipients, every run)"
        )
        record(
            results,
            f"SmtpChannel, {n:,} msgs, {connections} conns",
            ours_s,
            f"smtplib loop, {connections} threads",
            other_s,
            1.25,
            "lower",
        )
        rows = recipients(min(HOOK_N, n))
        want = expected(rows)
        for conns in sorted({1, connections}):
            ours_s, other_s = interleaved(
                lambda _, c=conns: rendered("smtp_bench", rows, c),
                lambda _, c=conns: hook_loop(rows, c),
                HOOK_REPEAT,
                check=check(want, decoded=True),
            )
            print(
                f"  rendered + sent on {conns} connection(s): SmtpChannel {len(rows) / ours_s:,.0f} msg/s,"
                f" SmtpHook {len(rows) / other_s:,.0f} msg/s (same recipients, subjects and html, every run)"
            )
            record(
                results,
                f"SmtpChannel vs SmtpHook, {len(rows):,} msgs, {conns} conn{'s' if conns > 1 else ''}",
                ours_s,
                f"Jinja + SmtpHook.send_email_smtp, {conns} thread{'s' if conns > 1 else ''}",
                other_s,
                0.5,
                "lower",
            )


if __name__ == "__main__":
    out: list[dict[str, Any]] = []
    bench_smtp(
        out, int(sys.argv[1]) if len(sys.argv) > 1 else 20_000, int(sys.argv[2]) if len(sys.argv) > 2 else 4
    )
