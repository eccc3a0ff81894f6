"""The `airflow-campaign` command: database upgrade, seed data, staging pruning, incremental state, demo, dev."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

URL_ENV = "CAMPAIGN_DATABASE_URL"


def _add_target(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--conn-id", help="Airflow connection id (default campaign_default)")
    group.add_argument("--url", help=f"postgresql:// URL (default ${URL_ENV} when set)")


def connect(args: argparse.Namespace) -> Any:
    """A psycopg connection from --url, $CAMPAIGN_DATABASE_URL or an Airflow connection."""
    import psycopg

    url = args.url or (None if args.conn_id else os.environ.get(URL_ENV))
    if url:
        return psycopg.connect(url, autocommit=True)
    return psycopg.connect(autocommit=True, **airflow_connection_params(args.conn_id or "campaign_default"))


def airflow_connection_params(conn_id: str) -> dict[str, Any]:
    """libpq keywords for an Airflow connection, looked up as the ``airflow`` CLI does.

    Outside a running task the Task SDK cannot reach the metadata database, so this asks
    Airflow's core secrets backends (environment variables, the metadata database, any
    configured backend) directly.
    """
    from airflow.models.connection import Connection  # the SDK's skips the metadata DB outside a task
    from airflow.sdk.exceptions import AirflowNotFoundException

    from airflow_campaign.errors import CampaignError

    try:
        conn = Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        raise CampaignError(
            f"--conn-id: no Airflow connection {conn_id!r} (looked in AIRFLOW_CONN_{conn_id.upper()}, the "
            "metadata database and any secrets backend); create it with `airflow connections add`, "
            f"or pass --url / set ${URL_ENV}."
        ) from None
    params: dict[str, Any] = {
        "host": conn.host or None,
        "port": conn.port or None,
        "user": conn.login or None,
        "password": conn.password or None,
        "dbname": conn.schema or None,
    }
    for key, value in (conn.extra_dejson or {}).items():
        if key in {"sslmode", "sslcert", "sslkey", "sslrootcert", "sslcrl", "application_name", "options"}:
            params[key] = value
    return {k: v for k, v in params.items() if v is not None}


def cmd_db(args: argparse.Namespace) -> int:
    from airflow_campaign.schema import migrate

    with connect(args) as conn:
        if args.action == "upgrade":
            applied = migrate.upgrade(conn)
            for m in applied:
                print(f"applied {m.version:04d}_{m.name}")
            print(f"campaign schema at version {migrate.current_version(conn)} (head {migrate.head()})")
        else:
            print(migrate.current_version(conn))
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from airflow_campaign.seed import seed

    started = time.monotonic()
    with connect(args) as conn:
        counts = seed(conn, args.profiles, args.seed, force=args.force)
    for table, count in counts.items():
        print(f"{table:>18}: {count}")
    print(f"seeded in {time.monotonic() - started:.1f}s")
    return 0


def cmd_staging(args: argparse.Namespace) -> int:
    from airflow_campaign.durations import parse_duration
    from airflow_campaign.hooks.campaign import CampaignHook

    seconds = parse_duration(args.older_than, "--older-than")
    with connect(args) as conn:
        names = CampaignHook.prune(conn, seconds, dry_run=args.dry_run)
    for name in names:
        print(("would drop " if args.dry_run else "dropped ") + name)
    print(f"{len(names)} staging table(s) older than {args.older_than}")
    return 0


def check_timestamp(conn: Any, option: str, value: str) -> None:
    """Raise naming ``option`` when ``value`` is not a timestamp PostgreSQL understands."""
    import psycopg

    from airflow_campaign.errors import CampaignError

    try:
        with conn.transaction():
            conn.execute("SELECT %s::text::timestamptz", (value,))
    except psycopg.DataError as exc:
        raise CampaignError(
            f"{option}={value!r} is not a timestamp; write e.g. '2026-01-31T00:00:00+00:00'."
        ) from exc


def cmd_incremental(args: argparse.Namespace) -> int:
    key = (args.dag_id, args.task_id)
    with connect(args) as conn:
        if args.action == "show":
            row = conn.execute(
                "SELECT watermark, previous_watermark, last_run_id FROM campaign.incremental_state"
                " WHERE dag_id = %s AND task_id = %s",
                key,
            ).fetchone()
            seen = conn.execute(
                "SELECT count(*) FROM campaign.incremental_history WHERE dag_id = %s AND task_id = %s", key
            ).fetchone()[0]
            print(f"watermark: {row[0] if row else None}")
            print(f"last run:  {row[2] if row else None}")
            print(f"remembered rows: {seen}")
        elif args.action == "set":
            check_timestamp(conn, "--watermark", args.watermark)
            conn.execute(
                "INSERT INTO campaign.incremental_state (dag_id, task_id, watermark) VALUES (%s, %s, %s::timestamptz)"
                " ON CONFLICT (dag_id, task_id) DO UPDATE SET watermark = EXCLUDED.watermark,"
                " previous_watermark = NULL, last_run_id = NULL, updated_at = now()",
                (*key, args.watermark),
            )
            print(f"watermark of {args.dag_id}.{args.task_id} set to {args.watermark}")
        else:
            with conn.transaction():
                conn.execute("DELETE FROM campaign.incremental_state WHERE dag_id = %s AND task_id = %s", key)
                conn.execute(
                    "DELETE FROM campaign.incremental_history WHERE dag_id = %s AND task_id = %s", key
                )
            print(f"state of {args.dag_id}.{args.task_id} reset: the next run starts from scratch")
    return 0


def cmd_embedded(args: argparse.Namespace) -> int:
    from airflow_campaign import embedded

    if args.action == "stop":
        if not embedded.is_running(args.data_dir):
            print(f"no embedded Postgres is running in {embedded.data_path(args.data_dir)}; nothing to stop")
            return 0
        holders = embedded.stop(args.data_dir, force=args.force)
        path = embedded.data_path(args.data_dir)
        if holders:
            print(
                f"the embedded Postgres in {path} is still used by process(es) {holders}; it stops when "
                "they exit (or run `airflow-campaign embedded stop --force`)"
            )
            return 1
        print(f"stopped the embedded Postgres in {path}")
        return 0
    print(embedded.start(args.data_dir, stop_at_exit=False).url)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from airflow_campaign.demo import run_demo

    return run_demo(profiles=args.profiles, workdir=args.workdir)


def cmd_ui(args: argparse.Namespace) -> int:
    from airflow_campaign.ui.serve import serve

    return serve(workdir=args.workdir, port=args.port, profiles=args.profiles)


def cmd_dev(args: argparse.Namespace) -> int:
    from airflow_campaign.dev import run_dev

    return run_dev(
        args.dag_file,
        dag_id=args.dag_id,
        profiles=args.seed,
        conf=args.conf,
        logical_date=args.logical_date,
        workdir=args.workdir,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airflow-campaign", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="create or upgrade the campaign schema")
    db.add_argument("action", choices=["upgrade", "version"])
    _add_target(db)
    db.set_defaults(func=cmd_db)

    seed = sub.add_parser(
        "seed",
        help="replace the profile data with deterministic synthetic data (test databases: refused on a "
        "database with delivery or subscription history unless --force)",
    )
    seed.add_argument("--profiles", type=int, default=100_000)
    seed.add_argument("--seed", type=int, default=42)
    seed.add_argument(
        "--force",
        action="store_true",
        help="seed even when the database holds history the seed did not make (delivery logs, occurrences, "
        "subscription events, audiences, quarantine entries): it is deleted",
    )
    _add_target(seed)
    seed.set_defaults(func=cmd_seed)

    staging = sub.add_parser("staging", help="manage the staging tables that carry populations")
    staging.add_argument("action", choices=["prune"])
    staging.add_argument("--older-than", default="7d", help="retention, e.g. 7d, 12h (default 7d)")
    staging.add_argument("--dry-run", action="store_true", help="list what would be dropped")
    _add_target(staging)
    staging.set_defaults(func=cmd_staging)

    inc = sub.add_parser("incremental", help="inspect, set or reset an IncrementalQueryOperator's state")
    inc.add_argument("action", choices=["show", "set", "reset"])
    inc.add_argument("--dag-id", required=True)
    inc.add_argument("--task-id", required=True)
    inc.add_argument("--watermark", help="with set: an ISO timestamp")
    _add_target(inc)
    inc.set_defaults(func=cmd_incremental)

    emb = sub.add_parser("embedded", help="start (and print the URL of) or stop the embedded Postgres")
    emb.add_argument("action", choices=["start", "stop"])
    emb.add_argument("--data-dir", default=None, help="default .campaign/pg")
    emb.add_argument(
        "--force", action="store_true", help="with stop: stop it even while other processes use it"
    )
    emb.set_defaults(func=cmd_embedded)

    demo = sub.add_parser("demo", help="run the demo campaign on embedded defaults")
    demo.add_argument("--profiles", type=int, default=100_000)
    demo.add_argument("--workdir", default=".campaign")
    demo.set_defaults(func=cmd_demo)

    ui = sub.add_parser(
        "ui",
        help="start Airflow with the Campaigns pages on the demo's data (Ctrl-C stops it)",
        description="Start the embedded Postgres in WORKDIR/pg (preparing the demo's data when it holds no "
        "delivery), then Airflow's api-server, scheduler (LocalExecutor), dag-processor and triggerer with "
        "their metadata in database airflow_ui on that server; print the URL and a login, and make sure "
        "Airflow holds a successful run of campaign_targeting (re-used from an earlier start, else "
        "triggered). Ctrl-C stops every process it started.",
    )
    ui.add_argument(
        "--port", type=int, default=8080, help="the api-server's port on 127.0.0.1 (default 8080)"
    )
    ui.add_argument("--workdir", default=".campaign", help="where the server, Airflow and the outbox live")
    ui.add_argument(
        "--profiles",
        type=int,
        default=100_000,
        help="profiles to seed when the campaign database holds no delivery yet (default 100000)",
    )
    ui.set_defaults(func=cmd_ui)

    dev = sub.add_parser(
        "dev",
        help="run a DAG file once with dag.test() on the embedded Postgres and print each task's result",
        description="Start (or reuse) the embedded Postgres in WORKDIR/pg, create or upgrade the campaign "
        "schema, seed demo profiles when it has none (or when --seed says), set up Airflow on SQLite in "
        "WORKDIR/airflow with campaign_default pointing at the server, run the DAG once with dag.test(), "
        "then print every task's state, duration and return value, or its error. Exits 1 when a task failed.",
    )
    dev.add_argument("dag_file", help="the .py file defining the DAG")
    dev.add_argument("--dag-id", help="the DAG to run when the file defines several")
    dev.add_argument(
        "--seed",
        type=int,
        metavar="PROFILES",
        help="replace the profiles with this many seeded demo profiles first (default: keep the "
        "database's profiles; seed 10000 when it has none)",
    )
    dev.add_argument("--conf", help='dag_run.conf as a JSON object, e.g. \'{"since": "2026-01-01"}\'')
    dev.add_argument(
        "--logical-date",
        help="the run's logical date, e.g. 2026-01-31 or 2026-01-31T06:00:00+00:00 (default now)",
    )
    dev.add_argument("--workdir", default=".campaign", help="where the server, Airflow and the outbox live")
    dev.set_defaults(func=cmd_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "action", None) == "set" and args.command == "incremental" and not args.watermark:
        print("airflow-campaign: incremental set needs --watermark", file=sys.stderr)
        return 2
    import psycopg

    from airflow_campaign.errors import CampaignError

    try:
        return int(args.func(args))
    except CampaignError as exc:
        print(f"airflow-campaign: {exc}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as exc:
        print(
            f"airflow-campaign: cannot reach the campaign database ({str(exc).strip()}); "
            f"check --url, --conn-id or ${URL_ENV}.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
