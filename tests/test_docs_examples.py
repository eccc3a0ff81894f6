"""The documentation: every example DAG runs on the seeded database and is shown verbatim; pages match the code.

An example ``docs/examples/<stem>.py`` is checked by a function ``check_<stem>(db)``, here or in
a module of ``tests/docs_checks/``. An operator page ``docs/operators/<page>.md`` documents the
operators its first ``from airflow_campaign.operators... import ...`` line names.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import count
from tests.docs_support import (
    AUDIENCE,
    DOCS,
    EXAMPLES,
    FR_CONTACTABLE,
    PAGES,
    SUBSCRIBERS,
    docs_bundle,
    population,
    rows,
    run_example,
)

__all__ = ["docs_bundle"]  # the fixture, imported for the tests below

# ---- one check per example ---------------------------------------------------------------


def check_first_dag(db: psycopg.Connection) -> None:
    run = run_example("first_dag")
    expected = count(
        db,
        f"SELECT count(*) FROM campaign.profiles WHERE {FR_CONTACTABLE} AND id NOT IN ({AUDIENCE})",
        "do_not_contact",
    )
    contactable = population(db, run, "contactable")
    assert contactable["count"] == expected > 0
    segments = {code: population(db, run, "segments", code) for code in ("gold", "test_cell", "regular")}
    assert sum(p["count"] for p in segments.values()) == expected
    gold = rows(db, segments["gold"], "min(loyalty_points), count(*)")
    assert gold[0][0] >= 8000


def check_query(db: psycopg.Connection) -> None:
    run = run_example("query")
    by_country = population(db, run, "by_country")
    assert by_country["count"] == count(db, f"SELECT count(*) FROM campaign.profiles WHERE {FR_CONTACTABLE}")
    assert by_country["columns"] == ["id", "email", "first_name", "last_name", "birth_year"]

    best = population(db, run, "best_customers")
    expected = db.execute(
        "SELECT id FROM campaign.profiles WHERE last_purchase_at >= '2025-07-01'"
        " ORDER BY loyalty_points DESC, id LIMIT 100"
    ).fetchall()
    assert rows(db, best, "id", "loyalty_points DESC, id") == expected
    assert len(expected) == 100

    readers = population(db, run, "newsletter_readers")
    assert readers["count"] == count(db, f"SELECT count(*) FROM ({SUBSCRIBERS}) s", "newsletter")


def check_incremental_query(db: psycopg.Connection) -> None:
    from airflow_campaign.cli import main

    url = db.info.dsn
    for task_id in ("welcome", "recent_buyers"):
        args = ["incremental", "reset", "--dag-id", "docs_incremental_query", "--task-id", task_id]
        assert main([*args, "--url", url]) == 0

    first = run_example("incremental_query")
    welcome = population(db, first, "welcome")
    assert welcome["count"] == count(
        db, "SELECT count(*) FROM campaign.profiles WHERE email IS NOT NULL AND NOT email_denylisted"
    )
    recent = population(db, first, "recent_buyers")
    assert recent["count"] == count(
        db, "SELECT count(*) FROM campaign.profiles WHERE last_purchase_at > '2025-10-01T00:00:00+00:00'"
    )
    assert "last_purchase_at" in recent["columns"]
    watermark = db.execute(
        "SELECT watermark FROM campaign.incremental_state WHERE dag_id = 'docs_incremental_query'"
        " AND task_id = 'recent_buyers'"
    ).fetchone()
    assert watermark == db.execute("SELECT max(last_purchase_at) FROM campaign.profiles").fetchone()

    second = run_example("incremental_query")
    assert population(db, second, "welcome")["count"] == 0
    assert population(db, second, "recent_buyers")["count"] == 0


def check_read_audience(db: psycopg.Connection) -> None:
    run = run_example("read_audience")
    vip = population(db, run, "vip")
    assert vip["count"] == count(db, f"SELECT count(*) FROM ({AUDIENCE}) a", "vip") > 0
    assert vip["columns"] == ["id", "email", "first_name", "loyalty_points"]
    assert run.xcom("report") == vip["count"]


def check_load_file(db: psycopg.Connection) -> None:
    run = run_example("load_file")
    signups = population(db, run, "signups")
    assert signups["count"] == 3
    assert signups["resource"] == "profiles"
    matched = db.execute(
        sql.SQL(
            "SELECT count(*) FROM {} s JOIN campaign.profiles p ON p.id = s.id AND p.email = s.email"
        ).format(sql.Identifier(*signups["table"].split(".")))
    ).fetchone()
    assert matched == (3,)
    rejects = population(db, run, "signups", "rejects")
    assert [r[:2] for r in rows(db, rejects, "_line, reject_reason")] == [
        (4, "unmatched"),
        (5, "invalid points"),
    ]
    assert run.task_states()["remove_file"].endswith("success")


def check_set_operations(db: psycopg.Connection) -> None:
    run = run_example("set_operations")
    subscribers = population(db, run, "email_subscribers")
    assert subscribers["count"] == count(
        db,
        f"SELECT count(*) FROM (({SUBSCRIBERS}) UNION ({SUBSCRIBERS})) u",
        "newsletter",
        "promotions",
    )
    audience = population(db, run, "audience")
    assert audience["columns"] == ["id", "email"]
    assert audience["count"] == count(
        db,
        f"SELECT count(*) FROM campaign.profiles WHERE country = 'FR'"
        f" AND (id IN ({SUBSCRIBERS}) OR id IN ({SUBSCRIBERS}))"
        f" AND id NOT IN ({AUDIENCE}) AND id NOT IN (1, 2, 3)",
        "newsletter",
        "promotions",
        "do_not_contact",
    )


def check_deduplication(db: psycopg.Connection) -> None:
    run = run_example("deduplication")
    one = population(db, run, "one_per_address")
    assert one["count"] == count(
        db, "SELECT count(DISTINCT email) FROM campaign.profiles WHERE email LIKE '%@%'"
    )
    kept = rows(db, one, "id", "id")
    expected = db.execute(
        "SELECT DISTINCT ON (email) id FROM campaign.profiles WHERE email LIKE '%@%'"
        " ORDER BY email, loyalty_points DESC, last_purchase_at DESC NULLS LAST, id"
    ).fetchall()
    assert kept == sorted(expected)
    two = population(db, run, "best_two_per_country")
    table = sql.Identifier(*two["table"].split("."))
    counts = db.execute(
        sql.SQL("SELECT country, count(*) FROM {} GROUP BY 1 ORDER BY 1").format(table)
    ).fetchall()
    countries = db.execute("SELECT DISTINCT country FROM campaign.profiles ORDER BY 1").fetchall()
    assert counts == [(c, 2) for (c,) in countries]


def check_enrichment(db: psycopg.Connection) -> None:
    run = run_example("enrichment")
    enriched = population(db, run, "enriched")
    vip = f"SELECT count(*) FROM ({AUDIENCE}) a"
    assert enriched["count"] == count(db, vip, "vip")
    assert enriched["columns"] == [
        "id",
        "email",
        "first_name",
        "age",
        "subscriptions",
        "last_subscribed_at",
        "platform",
    ]
    totals = rows(db, enriched, "sum(subscriptions), count(platform)")
    assert totals[0] == (
        count(db, f"SELECT count(*) FROM campaign.subscriptions WHERE profile_id IN ({AUDIENCE})", "vip"),
        count(db, f"SELECT count(*) FROM campaign.app_subscriptions WHERE profile_id IN ({AUDIENCE})", "vip"),
    )


def check_segmentation(db: psycopg.Connection) -> None:
    run = run_example("segmentation")
    contactable = population(db, run, "contactable")
    where = "email LIKE '%@%' AND NOT email_denylisted"
    total = count(db, f"SELECT count(*) FROM campaign.profiles WHERE {where}")
    assert contactable["count"] == total
    segments = run.xcom("segments")
    assert list(segments) == ["gold", "france_sample", "control", "regular"]
    counts = {code: population(db, run, "segments", code)["count"] for code in segments}
    assert counts == {code: pop["count"] for code, pop in segments.items()}
    gold = count(db, f"SELECT count(*) FROM campaign.profiles WHERE {where} AND loyalty_points >= 8000")
    french = count(
        db,
        f"SELECT count(*) FROM campaign.profiles WHERE {where} AND loyalty_points < 8000 AND country = 'FR'",
    )
    assert counts["gold"] == gold
    assert counts["france_sample"] == min(50, french)
    assert counts["control"] == math.ceil((total - gold - counts["france_sample"]) * 10 / 100)
    assert sum(counts.values()) == total
    assert run.xcom("summary") == {k: counts[k] for k in ("gold", "control", "regular")}


def check_prune_staging(db: psycopg.Connection) -> None:
    db.execute("CREATE UNLOGGED TABLE IF NOT EXISTS campaign_staging.docs_old_population (id bigint)")
    db.execute(
        "INSERT INTO campaign.staging_tables (table_name, dag_id, task_id, run_id, updated_at)"
        " VALUES ('campaign_staging.docs_old_population', 'docs_old', 'old', 'old_run', now() - interval '8 days')"
        " ON CONFLICT (table_name) DO UPDATE SET updated_at = EXCLUDED.updated_at"
    )
    fresh = count(
        db, "SELECT count(*) FROM campaign.staging_tables WHERE updated_at > now() - interval '7 days'"
    )
    run = run_example("prune_staging")
    assert "campaign_staging.docs_old_population" in run.xcom("prune_staging")
    assert db.execute("SELECT to_regclass('campaign_staging.docs_old_population')").fetchone() == (None,)
    assert count(db, "SELECT count(*) FROM campaign.staging_tables WHERE table_name LIKE '%docs_old%'") == 0
    assert (
        count(db, "SELECT count(*) FROM campaign.staging_tables WHERE updated_at > now() - interval '7 days'")
        == fresh
    )


def check_populations(db: psycopg.Connection) -> None:
    run = run_example("populations")
    audience = population(db, run, "audience")
    assert audience["count"] == count(
        db,
        "SELECT count(*) FROM campaign.profiles WHERE country = 'FR' AND id NOT IN (1, 2, 3, 4, 5)"
        " AND email IS DISTINCT FROM 'jack.fernandez14@mail.example.org'"
        " AND email IS DISTINCT FROM 'nobody@example.com'",
    )


def _checks() -> dict[str, Callable[[psycopg.Connection], None]]:
    found = {name.removeprefix("check_"): fn for name, fn in globals().items() if name.startswith("check_")}
    for path in sorted((Path(__file__).parent / "docs_checks").glob("*.py")):
        module = importlib.import_module(f"tests.docs_checks.{path.stem}")
        found.update(
            {
                name.removeprefix("check_"): fn
                for name, fn in vars(module).items()
                if name.startswith("check_")
            }
        )
    return found


CHECKS = _checks()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(example: Path, docs_bundle: None, db: psycopg.Connection) -> None:
    assert example.stem in CHECKS, f"add check_{example.stem}() asserting on the rows the example produces"
    CHECKS[example.stem](db)


# ---- the pages show the examples and document every parameter -----------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_shown_verbatim(example: Path) -> None:
    block = "```python\n" + example.read_text(encoding="utf-8")
    shown_in = [p.name for p in PAGES if block in p.read_text(encoding="utf-8")]
    assert shown_in, f"{example.name} is not copied verbatim into any page of docs/ or the README"


_IMPORT = re.compile(r"^from (airflow_campaign\.operators\.\w+) import \(?([\w, \n]+?)\)?$", re.MULTILINE)


def _operator_pages() -> dict[str, list[type]]:
    """Each docs/operators page and the operator classes its first import line names."""
    from airflow.sdk import BaseOperator

    pages: dict[str, list[type]] = {}
    for path in sorted((DOCS / "operators").glob("*.md")):
        match = _IMPORT.search(path.read_text(encoding="utf-8"))
        assert match, f"{path.name}: start with a ```python block importing the operator(s) it documents"
        module = importlib.import_module(match.group(1))
        names = [n.strip() for n in match.group(2).replace("\n", ",").split(",") if n.strip()]
        classes = [getattr(module, n) for n in names]
        pages[path.name] = [c for c in classes if isinstance(c, type) and issubclass(c, BaseOperator)]
        assert pages[path.name], f"{path.name}: its import line names no operator"
    return pages


def _parameters(cls: type) -> dict[str, Any]:
    """Keyword parameters of an operator and its campaign base classes (not BaseOperator's), with defaults."""
    from airflow.sdk import BaseOperator

    params: dict[str, Any] = {}
    for klass in cls.__mro__:
        if klass is BaseOperator or not issubclass(klass, BaseOperator):
            break
        signature = inspect.signature(klass.__init__)  # type: ignore[misc]
        for name, param in signature.parameters.items():
            if param.kind is param.KEYWORD_ONLY:
                params.setdefault(name, param.default)
    return params


def _documented_default(default: Any) -> str:
    if default is inspect.Parameter.empty:
        return "required"
    return f'`"{default}"`' if isinstance(default, str) else f"`{default!r}`"


@pytest.mark.parametrize("page", sorted(_operator_pages()))
def test_operator_page_documents_every_parameter(page: str) -> None:
    """Each parameter has a row `| `name` | default | meaning |` with the signature's default."""
    text = (DOCS / "operators" / page).read_text(encoding="utf-8")
    documented: dict[str, set[str]] = {}
    for name, default in re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", text, flags=re.MULTILINE):
        documented.setdefault(name, set()).add(default)
    for cls in _operator_pages()[page]:
        params = _parameters(cls)
        missing = sorted(set(params) - set(documented))
        assert not missing, f"{page}: parameters of {cls.__name__} missing from the table: {missing}"
        for name, default in params.items():
            expected = _documented_default(default)
            assert expected in documented[name], (
                f"{page}: {cls.__name__}({name}=...) defaults to {expected}; the page says {documented[name]}"
            )
