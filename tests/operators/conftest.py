"""Fixtures for delivery tests: real SMTP servers (aiosmtpd) reachable through Airflow connections."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from tests.channels.servers import Inbox, smtp_server


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Inbox], str]]:
    """``smtp(handler)`` starts an aiosmtpd server and returns the Airflow connection id to it."""
    servers = []

    def start(handler: Inbox) -> str:
        server = smtp_server(handler)
        controller = server.__enter__()
        servers.append(server)
        conn_id = f"smtp_t{len(servers)}"
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": controller.port,
                    "extra": {"starttls": False},
                }
            ),
        )
        return conn_id

    yield start
    for server in servers:
        server.__exit__(None, None, None)
