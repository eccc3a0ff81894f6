"""ExtractFileOperator to csv.gz against a hand-written COPY + gzip, and against the pandas path.

The pandas path is what the Amazon provider's ``SqlToS3Operator`` does: read the query into a
DataFrame (``PostgresHook.get_df``), then ``DataFrame.to_csv`` with gzip. Every side writes the
same rows (one row per profile, seven columns) at the same gzip level, so the comparison is
about the way the rows travel, not about compression settings. Peak memory is each side's peak
RSS in a child process of its own that imports only what that side needs.

Checked before any ratio is printed (AssertionError otherwise): after every run of (1) both
files decompress to the same bytes; after every run of (2) the pandas file parses to the same
rows as ours (CSV fields compared as values: an empty field and a missing one alike, ``12.0`` as
``12``, timestamps and dates by value; the rows as a multiset, in any order); (3) writes every row.

Run by ``benchmarks/run.py`` (``bench_extract``), or alone against the bench database:
``python -m benchmarks.extract_file``.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

COLUMNS = ["email", "first_name", "last_name", "country", "birth_date", "loyalty_points", "last_purchase_at"]
LEVEL = 1  # ExtractFileOperator's default gzip level, used by every side
CHILD_REPEAT = int(os.environ.get("BENCH_CHILD_REPEAT", "3"))


def _peak_mb() -> float:
    """This process's peak RSS in MB: VmHWM, which (unlike ru_maxrss) exec resets, so a child
    does not inherit the high-water mark of the process that forked it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _context(task_id: str, run: int) -> dict[str, Any]:
    from benchmarks.run import context

    return context(task_id, run)


def population(scale: int, fraction: float = 1.0) -> dict[str, Any]:
    """The profiles (all, or the first ``fraction`` of them by id) as a staging-table population."""
    from airflow_campaign.operators.targeting import QueryOperator

    where = "true" if fraction >= 1 else f"id <= {int(scale * fraction)}"
    task_id = f"extract_source_{int(fraction * 100)}"
    return QueryOperator(task_id=task_id, where=where, columns=COLUMNS).execute(_context(task_id, 0))


# ---- the sides, each callable in this process or in a child ----------------------------------------


def ours(pop: dict[str, Any], path: str) -> int:
    """ExtractFileOperator, as a DAG would use it."""
    from airflow_campaign.operators.extract_file import ExtractFileOperator

    op = ExtractFileOperator(
        task_id="extract", population=pop, path=path, timestamp_in_name=False, compression_level=LEVEL
    )
    return int(op.execute(_context("extract", 0))["rows"])


def copy_gzip(url: str, table: str, path: str) -> int:
    """The hand-written equivalent: COPY … TO STDOUT, gzip in-process with a 1 MB write buffer.
    (The row count it returns is psycopg's, -1 for a COPY: its file is checked by its bytes.)"""
    schema, name = table.split(".")
    query = f'COPY (SELECT * FROM "{schema}"."{name}") TO STDOUT WITH (FORMAT csv, HEADER)'
    with (
        psycopg.connect(url) as conn,
        conn.cursor() as cur,
        cur.copy(query) as copy,
        io.BufferedWriter(gzip.open(path, "wb", compresslevel=LEVEL), 1 << 20) as out,  # type: ignore[arg-type]
    ):
        for data in copy:
            out.write(data)
    return cur.rowcount


def pandas_path(table: str, path: str) -> int:
    """SqlToS3Operator's way: the whole result in a DataFrame, then to_csv (gzip)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    frame = PostgresHook(postgres_conn_id="campaign_default").get_df(
        f"SELECT * FROM {table}", df_type="pandas"
    )
    frame.to_csv(path, index=False, compression={"method": "gzip", "compresslevel": LEVEL})
    return len(frame)


def _child(side: str, pop_json: str, path: str) -> None:
    """Entry point of a child process: run one side once, print its time and peak RSS."""
    import logging

    logging.getLogger("airflow.task.operators").setLevel(logging.ERROR)
    pop = json.loads(pop_json)
    if side == "ours":
        from airflow_campaign.operators.extract_file import ExtractFileOperator  # noqa: F401
    else:
        import pandas  # noqa: F401
        from airflow.providers.postgres.hooks.postgres import PostgresHook  # noqa: F401
    imported = _peak_mb()
    started = time.perf_counter()
    rows = ours(pop, path) if side == "ours" else pandas_path(pop["table"], path)
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": _peak_mb(), "imported_mb": imported}))


def in_child(side: str, pop: dict[str, Any], path: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "child", side, json.dumps(pop), path],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median_child(side: str, pop: dict[str, Any], path: str, check: Any = None) -> dict[str, Any]:
    """Median time and memory of ``CHILD_REPEAT`` child runs; ``check(path)`` after each one."""
    runs = []
    for _ in range(CHILD_REPEAT):
        runs.append(in_child(side, pop, path))
        if check is not None:
            check(path)
    return {
        key: statistics.median(r[key] for r in runs) for key in ("seconds", "peak_mb", "imported_mb", "rows")
    }


# ---- what the files hold -----------------------------------------------------------------------------


def csv_digest(path: str) -> str:
    """A digest of the decompressed bytes of a csv.gz file (read in chunks: memory stays flat)."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _value(field: str) -> str:
    """One CSV field as a value, whoever wrote it: ``12.0`` is 12, ``…+00`` and ``…+00:00`` are
    the same instant, an empty field is nothing."""
    if field.endswith(".0") and field[:-2].lstrip("-").isdigit():
        return field[:-2]
    if len(field) >= 10 and field[4:5] == "-" and field[7:8] == "-" and field[:4].isdigit():
        try:
            return (dt.date if len(field) == 10 else dt.datetime).fromisoformat(field).isoformat()
        except ValueError:
            return field
    return field


def rows_digest(path: str) -> tuple[int, list[str], int]:
    """(rows, header, order-independent digest of the rows as values) of a csv.gz file."""
    total = count = 0
    with gzip.open(path, "rt", encoding="utf-8", newline="") as file:
        reader = csv.reader(file)
        header = next(reader)
        for row in reader:
            joined = "\x1f".join(_value(field) for field in row).encode()
            total += int.from_bytes(hashlib.blake2b(joined, digest_size=16).digest(), "big")
            count += 1
    return count, header, total & ((1 << 128) - 1)


# ---- the comparisons ---------------------------------------------------------------------------------


def bench_extract(url: str, results: list[dict[str, Any]], scale: int) -> None:
    from benchmarks.run import interleaved, load, record

    pop = population(scale)
    folder = Path(tempfile.mkdtemp(prefix="campaign-bench-extract-"))
    ours_file, hand_file, pandas_file = (str(folder / f"{n}.csv.gz") for n in ("ours", "copy", "pandas"))

    # (1) the operator against the fastest hand-written way, in this process, alternately
    digests: dict[str, str] = {}

    def same_csv(side: str, i: int, rows: int) -> None:
        got = csv_digest(ours_file if side == "ours" else hand_file)
        digests.setdefault("first", got)
        if got != digests["first"] or (side == "ours" and rows != pop["count"]):
            raise AssertionError(
                f"run {i} of {side}: {rows} rows, CSV digest {got[:12]}; the first run wrote"
                f" {pop['count']} rows, digest {digests['first'][:12]}"
            )

    ours_s, copy_s = interleaved(
        lambda i: ours(pop, ours_file), lambda i: copy_gzip(url, pop["table"], hand_file), check=same_csv
    )
    print(
        f"  {pop['count']:,} rows; csv.gz {os.path.getsize(ours_file) / 1e6:.1f} MB (ours) vs "
        f"{os.path.getsize(hand_file) / 1e6:.1f} MB (COPY + gzip); the same CSV bytes every run"
    )
    record(
        results,
        f"ExtractFileOperator csv.gz, {scale:,} profiles",
        ours_s,
        "COPY TO STDOUT + in-process gzip",
        copy_s,
        1.5,
        "lower",
    )

    # (2) against the pandas path, each side in child processes of its own (time and peak RSS)
    start = load()
    want = rows_digest(hand_file)

    def same_bytes(path: str) -> None:
        if csv_digest(path) != digests["first"]:
            raise AssertionError(f"{path}: not the CSV the COPY wrote")

    def same_rows(path: str) -> None:
        got = rows_digest(path)
        if got != want:
            raise AssertionError(
                f"{path}: {got[0]} rows, header {got[1]}, same values: {got[2] == want[2]}; the COPY wrote"
                f" {want[0]} rows, header {want[1]}"
            )

    mine = _median_child("ours", pop, ours_file, same_bytes)
    theirs = _median_child("pandas", pop, pandas_file, same_rows)
    end = load()
    print("  the pandas file holds the same rows as ours (parsed, compared as values) every run")
    print(
        f"  ours {mine['seconds']:.2f}s peak {mine['peak_mb']:.0f} MB ({mine['imported_mb']:.0f} MB after imports); "
        f"pandas {theirs['seconds']:.2f}s peak {theirs['peak_mb']:.0f} MB ({theirs['imported_mb']:.0f} MB after imports)"
    )
    # pandas must take at least 3x the time and 5x the peak memory: ours / theirs <= 1/3 and 1/5
    record(
        results,
        f"ExtractFileOperator vs pandas (SqlToS3Operator path), seconds, {scale:,}",
        mine["seconds"],
        "read_sql + DataFrame.to_csv gzip (child)",
        theirs["seconds"],
        0.333,
        "lower",
        load_start=start,
        load_end=end,
    )
    record(
        results,
        f"ExtractFileOperator vs pandas (SqlToS3Operator path), peak MB, {scale:,}",
        mine["peak_mb"],
        "read_sql + DataFrame.to_csv gzip peak MB",
        theirs["peak_mb"],
        0.2,
        "lower",
        load_start=start,
        load_end=end,
    )
    # (3) memory flat in the row count: our peak on every row against a tenth of them
    tenth = population(scale, 0.1)
    start = load()
    small = _median_child("ours", tenth, str(folder / "tenth.csv.gz"))
    if small["rows"] != tenth["count"]:
        raise AssertionError(f"the tenth: {small['rows']} rows written of {tenth['count']}")
    record(
        results,
        f"ExtractFileOperator peak MB, {scale:,} vs {tenth['count']:,} rows",
        mine["peak_mb"],
        f"same, {tenth['count']:,} rows",
        small["peak_mb"],
        1.2,
        "lower",
        load_start=start,
    )
    for name in os.listdir(folder):
        os.unlink(folder / name)
    folder.rmdir()


def main() -> int:
    """Run bench_extract alone on the bench database (BENCH_SCALE profiles)."""
    from benchmarks.run import database

    scale = int(os.environ.get("BENCH_SCALE", "1000000"))
    results: list[dict[str, Any]] = []
    bench_extract(database(scale), results, scale)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        _child(*sys.argv[2:5])
        sys.exit(0)
    sys.exit(main())
