"""The README's benchmark table, rendered from the last ``make bench``.

``benchmarks/results.json`` holds the comparisons and ``benchmarks/machine.json`` the machine
and the run they came from (both written by ``make bench``). ``python -m benchmarks.table``
replaces the README's table (between the ``bench:start`` and ``bench:end`` markers) with them;
``make bench`` runs it at the end. ``tests/test_bench_table.py`` fails when the README's table
is not the one these two files give.

Each comparison is of one of five kinds, by what the other side is:

- ``airflow``: what an Airflow user writes today with Airflow's own hooks and operators
  (``PostgresHook.insert_rows``, ``SmtpHook.send_email_smtp``, the pandas path of
  ``SqlToS3Operator``);
- ``raw``: the raw limit, the same work hand-written against PostgreSQL or the standard library
  (a bare ``CREATE TABLE AS``, ``INSERT … ON CONFLICT``, ``COPY``, an ``smtplib`` loop);
- ``scale``: the operator against itself (more rows, more shards), for memory and scaling;
- ``floor``: a rate (a name ending ``/s``) against the floor an issue set for it;
- ``ceiling``: a time (a name ending `` ms``, shown in milliseconds) against the most an
  acceptance criterion allows (e.g. a Campaigns page answering in 300 ms).
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RESULTS = HERE / "results.json"
MACHINE = HERE / "machine.json"
README = HERE.parent / "README.md"
START = "<!-- bench:start (python -m benchmarks.table) -->"
END = "<!-- bench:end -->"

# the first pattern that matches a comparison's name gives its kind
KINDS: list[tuple[str, str]] = [
    (r"^Campaigns .* ms$", "ceiling"),
    (r"vs fetch \+ insert_rows|vs SmtpHook|vs pandas", "airflow"),
    (r"recipients/s$", "floor"),
    (r"vs boto3 publish loop", "raw"),
    (r"peak MB, .* vs |shards vs 1", "scale"),
    (
        r"^(QueryOperator|SegmentationOperator|UpdateDataOperator upsert|SubscriptionServicesOperator|"
        r"SaveAudienceOperator|ExtractFileOperator csv|SmtpChannel, |Email render|MIME build|"
        r"Email engine send|Delivery prepare)",
        "raw",
    ),
]
KIND_TITLES = {
    "airflow": "Against the Airflow-native way",
    "raw": "Against the raw limit (the same work hand-written)",
    "scale": "Scaling (the operator against itself)",
    "floor": "Against a floor (a rate the work must reach)",
    "ceiling": "Against a ceiling (a time the work must stay under)",
}


def kind_of(name: str) -> str:
    for pattern, kind in KINDS:
        if re.search(pattern, name):
            return kind
    raise KeyError(f"benchmark {name!r} has no kind in benchmarks/table.py KINDS; add one")


def machine(url: str, scale: int, started: float, finished: float) -> dict[str, Any]:
    """What the run ran on: written next to results.json by ``make bench``."""
    import psycopg

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = round(pages / 2**30)
    except (ValueError, OSError):
        pass
    from importlib.metadata import version

    with psycopg.connect(url) as conn:
        postgres = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "airflow": version("apache-airflow"),
        "postgres": postgres,
        "psycopg": psycopg.__version__,
        "scale": scale,
        "minutes": round((finished - started) / 60, 1),
    }


def _seconds(value: float, name: str) -> str:
    if "MB" in name:
        return f"{value:,.0f} MB"
    if name.endswith("/s"):
        return f"{value:,.0f}/s"
    if name.endswith(" ms"):
        return f"{value * 1000:,.1f} ms"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def render(results: list[dict[str, Any]], run: dict[str, Any]) -> str:
    """The README section: the machine and run, then one table per kind."""
    loads = [r[k] for r in results for k in ("load_start", "load_end") if r.get(k) is not None]
    missed = [r["name"] for r in results if not _met(r)]
    lines = [
        f"From the last `make bench` at {run['scale']:,} profiles, on {run['cpus']} cores "
        f"({run['cpu_model'] or 'unknown CPU'}), {run['memory_gib']} GiB, {run['os']}, "
        f"PostgreSQL {run['postgres']}, Python {run['python']}, Airflow {run['airflow']}; "
        f"{run['minutes']} minutes; the 1-minute load average ranged {min(loads):.2f} to {max(loads):.2f} "
        "(2 cores: above 2 the machine was busy). Ratio = ours / theirs, lower is better (higher, against a floor); each "
        "figure is the median of alternating runs whose outputs were checked to agree.",
        "",
    ]
    for kind in ("airflow", "raw", "scale", "floor", "ceiling"):
        rows = [r for r in results if kind_of(r["name"]) == kind]
        if not rows:
            continue
        lines += [
            f"**{KIND_TITLES[kind]}**",
            "",
            "| Comparison | Ours | Theirs | | Ratio | Target |",
            "| --- | ---: | --- | ---: | ---: | --- |",
        ]
        for r in rows:
            sign = "≤" if r["better"] == "lower" else "≥"
            lines.append(
                f"| {r['name']} | {_seconds(r['ours_s'], r['name'])} | {r['other']} | "
                f"{_seconds(r['other_s'], r['name'])} | {r['ratio']:.3f} | {sign} {r['target']}"
                f"{'' if _met(r) else ' **missed**'} |"
            )
        lines.append("")
    if missed:
        lines.append("Missed in this run: " + "; ".join(missed) + ".")
    else:
        lines.append("Every target was met in this run.")
    return "\n".join(lines)


def _met(r: dict[str, Any]) -> bool:
    return bool(r["ratio"] <= r["target"] if r["better"] == "lower" else r["ratio"] >= r["target"])


def section() -> str:
    results = json.loads(RESULTS.read_text(encoding="utf-8"))
    run = json.loads(MACHINE.read_text(encoding="utf-8"))
    return f"{START}\n{render(results, run)}\n{END}"


def current(readme: str) -> str:
    """The README's table as it is now (markers included)."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {START!r} … {END!r} block")
    return readme[start : end + len(END)]


def main() -> int:
    readme = README.read_text(encoding="utf-8")
    README.write_text(readme.replace(current(readme), section()), encoding="utf-8")
    print(f"wrote the benchmark table into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
