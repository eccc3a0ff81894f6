"""docs/bad-input.md is the rendering of the registered rows, so each of its rows is a test."""

from __future__ import annotations

from tests.bad_input.matrix import DOC, load, render


def test_the_document_lists_exactly_the_tests() -> None:
    rows = load()
    assert rows, "no bad-input rows registered"
    expected = render(rows)
    assert DOC.read_text(encoding="utf-8") == expected, (
        "docs/bad-input.md is out of date; run `python -m tests.bad_input.matrix`"
    )
