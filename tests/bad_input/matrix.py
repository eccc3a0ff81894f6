"""The bad-input matrix: each row is a test, and docs/bad-input.md is rendered from the rows.

A test module under tests/bad_input registers its rows with :func:`bad_input` (one test, one
row) or :func:`cases` (a parametrized test, one row per :class:`Row`). ``python -m
tests.bad_input.matrix`` rewrites docs/bad-input.md; ``test_matrix_doc`` fails when the file is
out of date, so a row in the document always names a test that runs.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"
MIN_ROWS = 15


@dataclass
class Row:
    """One bad input: the operator (or part) given it, what was given, and what the user gets."""

    operator: str
    given: str
    outcome: str
    args: dict[str, Any] = field(default_factory=dict)
    test: str = ""

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.given.lower()).strip("-")
        if len(slug) > 60:  # cut, with a digest of the whole so that two long descriptions stay apart
            slug = f"{slug[:52]}-{hashlib.md5(self.given.encode()).hexdigest()[:7]}"
        return f"{self.operator}-{slug}"


REGISTRY: list[Row] = []


def _test_name(fn: Callable[..., Any]) -> str:
    module = sys.modules[fn.__module__]
    path = Path(module.__file__ or "").resolve()
    return f"{path.relative_to(DOC.parents[1]).as_posix()}::{fn.__name__}"


def bad_input(operator: str, given: str, outcome: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated test as one row of the matrix."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        REGISTRY.append(Row(operator, given, outcome, test=_test_name(fn)))
        return fn

    return decorate


def cases(*rows: Row) -> Callable[[Callable[..., Any]], Any]:
    """Parametrize the decorated test over ``rows`` (its argument ``row``), one row each."""
    ids = [r.id for r in rows]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise AssertionError(f"bad-input rows with the same description: {sorted(duplicates)}")

    def decorate(fn: Callable[..., Any]) -> Any:
        name = _test_name(fn)
        for r in rows:
            r.test = f"{name}[{r.id}]"
            REGISTRY.append(r)
        return pytest.mark.parametrize("row", rows, ids=ids)(fn)

    return decorate


def load() -> list[Row]:
    """Import every test module of this package and return the registered rows."""
    package = sys.modules[__package__ or "tests.bad_input"]
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("test_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    return list(REGISTRY)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(rows: list[Row]) -> str:
    by_operator: dict[str, list[Row]] = {}
    for r in rows:
        by_operator.setdefault(r.operator, []).append(r)
    out = [
        "# Bad input: what each operator does with it",
        "",
        "Every row below is a test (the last column names it); the file is rendered from the tests",
        "with `python -m tests.bad_input.matrix` and a test fails when it is out of date. "
        '"Refused" means the task fails with a `CampaignError` before anything is written, deleted',
        "or sent; the quoted text is the start of the message (values are cut to about 200 characters).",
        "",
    ]
    for operator in sorted(by_operator):
        out += [f"## {operator}", "", "| Given | What you get | Test |", "| --- | --- | --- |"]
        for r in sorted(by_operator[operator], key=lambda r: r.test):
            out.append(f"| {_cell(r.given)} | {_cell(r.outcome)} | `{r.test}` |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    from tests.bad_input import matrix  # the registry the test modules fill, not this __main__'s

    found = matrix.load()
    DOC.write_text(render(found), encoding="utf-8")
    print(f"wrote {DOC} ({len(found)} rows)")
