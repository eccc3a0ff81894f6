"""Fixtures for the channel tests: real SMTP servers and the Airflow connections pointing at them."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_campaign.channels.base import Envelope, Result
from tests.channels.servers import Certificate, Inbox, self_signed, smtp_server

SmtpConnection = Callable[..., str]


@pytest.fixture
def smtp_connection(monkeypatch: pytest.MonkeyPatch) -> SmtpConnection:
    """``smtp_connection(port, **extra)`` makes an Airflow smtp connection to 127.0.0.1 and returns its id.

    ``login=`` and ``password=`` go to the connection's fields; everything else to its extras.
    """

    def make(port: int, *, login: str | None = None, password: str | None = None, **extra: Any) -> str:
        conn_id = f"smtp_{uuid.uuid4().hex[:8]}"
        fields: dict[str, Any] = {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": extra}
        if login is not None:
            fields.update(login=login, password=password)
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
        return conn_id

    return make


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    """A well-behaved server: (its handler, its port)."""
    handler = Inbox()
    with smtp_server(handler) as server:
        yield handler, server.port


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return self_signed(tmp_path_factory.mktemp("tls"))


def envelopes(n: int, start: int = 1, domain: str = "example.org", size: int = 600) -> list[Envelope]:
    """``n`` distinct messages (CRLF line ends, a line starting with a dot to exercise dot-stuffing)."""
    made = []
    for log_id in range(start, start + n):
        to = f"customer{log_id}@{domain}"
        body = f"Hello customer {log_id},\r\n.a line that starts with a dot\r\n" + "x" * size + "\r\n"
        message = (
            f"From: Shop <news@shop.example>\r\nTo: <{to}>\r\nSubject: Offer {log_id}\r\n"
            f"Message-ID: <{log_id}@shop.example>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
        ).encode()
        made.append(Envelope(log_id=log_id, recipient=to, message=message, sender="news@shop.example"))
    return made


def written(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


class RecordingGate:
    """A gate that records every call (thread name, log id, outcome) and holds back ``refuse``."""

    def __init__(self, refuse: tuple[int, ...] = ()) -> None:
        self.refuse = set(refuse)
        self.calls: list[tuple[str, str, int, str]] = []
        self.lock = threading.Lock()

    def before(self, envelope: Envelope) -> bool:
        with self.lock:
            self.calls.append(("before", threading.current_thread().name, envelope.log_id, ""))
        return envelope.log_id not in self.refuse

    def after(self, result: Result) -> None:
        with self.lock:
            self.calls.append(("after", threading.current_thread().name, result.log_id, result.outcome))

    def check(self, results: list[Result]) -> None:
        """Each message went through ``before`` once, then ``after`` once with its final result."""
        befores = [c[2] for c in self.calls if c[0] == "before"]
        afters = {c[2]: c[3] for c in self.calls if c[0] == "after"}
        assert sorted(befores) == sorted(r.log_id for r in results)
        assert afters == {r.log_id: r.outcome for r in results}
        order = [c[:1] + c[2:3] for c in self.calls]
        for r in results:
            assert order.index(("before", r.log_id)) < order.index(("after", r.log_id))
