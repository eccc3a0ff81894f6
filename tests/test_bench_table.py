"""The README's benchmark table is the one the last make bench's results give."""

from __future__ import annotations

import json

from benchmarks import table


def test_readme_table_is_rendered_from_the_last_results():
    readme = table.README.read_text(encoding="utf-8")
    assert table.current(readme) == table.section(), (
        "README.md's benchmark table is stale: run `python -m benchmarks.table` (make bench does)"
    )


def test_every_result_has_a_kind_and_the_table_shows_each_one():
    results = json.loads(table.RESULTS.read_text(encoding="utf-8"))
    rendered = table.section()
    for r in results:
        assert table.kind_of(r["name"]) in table.KIND_TITLES
        assert f"| {r['name']} |" in rendered
        assert f"| {r['ratio']:.3f} |" in rendered


def test_a_missed_target_is_marked():
    results = [
        {
            "name": "QueryOperator, 10 profiles",
            "ours_s": 2.0,
            "other": "CTAS",
            "other_s": 1.0,
            "ratio": 2.0,
            "target": 1.2,
            "better": "lower",
            "load_start": 0.5,
            "load_end": 0.7,
        }
    ]
    run = {
        "scale": 10,
        "cpus": 2,
        "cpu_model": "x",
        "memory_gib": 1,
        "os": "Linux",
        "postgres": "18",
        "python": "3",
        "airflow": "3",
        "minutes": 1.0,
    }
    out = table.render(results, run)
    assert "| 2.000 | ≤ 1.2 **missed** |" in out
    assert "Missed in this run: QueryOperator, 10 profiles." in out
    assert "ranged 0.50 to 0.70" in out


def test_a_time_against_a_ceiling_is_shown_in_milliseconds():
    results = [
        {
            "name": f"Campaigns delivery report, 1,000,000-row ledger, {stat} ms",
            "ours_s": ours,
            "other": "the ceiling: 300 ms",
            "other_s": 0.3,
            "ratio": round(ours / 0.3, 3),
            "target": 1.0,
            "better": "lower",
            "load_start": 0.5,
            "load_end": 0.7,
        }
        for stat, ours in (("median", 0.0421), ("p95", 0.3123))
    ]
    run = {"scale": 10, "cpus": 2, "cpu_model": "x", "memory_gib": 1, "os": "Linux", "postgres": "18",
           "python": "3", "airflow": "3", "minutes": 1.0}  # fmt: skip
    out = table.render(results, run)
    assert table.kind_of(results[0]["name"]) == "ceiling"
    assert "**Against a ceiling (a time the work must stay under)**" in out
    assert "| 42.1 ms | the ceiling: 300 ms | 300.0 ms | 0.140 | ≤ 1.0 |" in out
    assert "| 312.3 ms | the ceiling: 300 ms | 300.0 ms | 1.041 | ≤ 1.0 **missed** |" in out
