"""SQL options checked alone, with PostgreSQL's own parser, then bound to their parameters.

An SQL option (``where``, ``fields``, ``prefer``, a whole ``sql``...) is code the DAG author
writes, pasted into a statement the operator composes. Each one must be exactly what its
place takes, whatever follows it in the composed statement:

- :func:`expression`: one scalar or boolean expression (a subquery in parentheses is one);
- :func:`select_list`: one or more select-list items (``expr AS name, ...``);
- :func:`order_list`: one or more ORDER BY items (``expr [ASC|DESC] [NULLS FIRST|LAST], ...``);
- :func:`query`: one SELECT (``WITH ... SELECT``, ``VALUES``, set operations) that reads only.

Every option is checked token by token (no ``;``, no parenthesis closed that it did not open,
none left open, quotes and ``/*`` comments closed) and parsed alone. At composition it is
wrapped in new lines (and, for an expression, in parentheses), so a trailing ``--`` comment
ends at the end of the option. Values come from ``parameters``: ``%(name)s`` placeholders, as
psycopg writes them (a literal ``%`` is then written ``%%``), each replaced by the value as an
SQL literal, in parentheses. A placeholder inside a string literal, a quoted name or a
comment is refused: it would not be a value there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pglast import ast, parser
from psycopg import sql

from airflow_campaign.errors import CampaignError, shown

FIX = "give one {what}; pass values through parameters= as %(name)s placeholders"

# psycopg's placeholder grammar (psycopg/_queries.py): %% , %(name)s|b|t , %s|b|t , anything else
_PERCENT = re.compile(rb"%(?:(?P<pct>%)|\((?P<name>[^)]*)\)(?P<fmt>[sbt])|(?P<pos>[sbt])|(?P<bad>.|$))", re.S)
_WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
_CLAUSES = {
    "distinctClause": "DISTINCT",
    "intoClause": "INTO",
    "fromClause": "FROM",
    "whereClause": "WHERE",
    "groupClause": "GROUP BY",
    "havingClause": "HAVING",
    "windowClause": "WINDOW",
    "valuesLists": "VALUES",
    "sortClause": "ORDER BY",
    "limitOffset": "OFFSET",
    "limitCount": "LIMIT",
    "lockingClause": "FOR UPDATE/SHARE",
    "withClause": "WITH",
    "larg": "a set operation",
}


class Deferred:
    """``parameters`` not known yet (templated, or an XComArg): check placeholders, bind nothing."""


DEFERRED = Deferred()
Parameters = Mapping[str, Any] | None | Deferred
Check = Callable[[str, Any, Any], sql.Composable]


def templated(value: Any, template_ext: Sequence[str] = ()) -> bool:
    """True when Airflow renders ``value`` before execute(): a Jinja template or a template file name."""
    from airflow_campaign.options import templated as jinja  # the one test for Jinja and XComArgs

    return isinstance(value, str) and (jinja(value) or value.strip().endswith(tuple(template_ext)))


@dataclass
class _Fragment:
    """An option's text as the server would see it (placeholders as ``$n``) and where they are."""

    option: str
    value: str
    what: str
    text: bytes  # placeholders replaced by $1, $2...; %% by %
    params: list[tuple[int, int, str]]  # (start, end) byte offsets of each $n in ``text``, and its name

    def fail(self, problem: str) -> CampaignError:
        return CampaignError(f"{self.option}={shown(self.value)}: {problem}; {FIX.format(what=self.what)}.")


def _fragment(option: str, value: Any, what: str, parameters: Parameters) -> _Fragment:
    if not isinstance(value, str):
        raise CampaignError(
            f"{option}={shown(value)}: give the SQL as a string (one {what}), not {type(value).__name__}."
        )
    if not value.strip():
        raise CampaignError(f"{option}={shown(value)}: the SQL is empty; {FIX.format(what=what)}.")
    raw = value.encode()
    frag = _Fragment(option, value, what, raw, [])
    found = list(_PERCENT.finditer(raw))
    if parameters is None:
        named = [m for m in found if m.group("name") is not None]
        if named and _in_code(frag, [m.span() for m in named]):
            name = named[0].group("name").decode(errors="replace")
            raise CampaignError(
                f"{option}={shown(value)}: uses the placeholder %({name})s but parameters= is not given; "
                f"pass parameters={{{name!r}: ...}}."
            )
        return frag
    out, pos = bytearray(), 0
    numbers: dict[str, int] = {}
    for m in found:
        out += raw[pos : m.start()]
        pos = m.end()
        if m.group("pct"):
            out += b"%"
        elif m.group("name") is not None:
            name = m.group("name").decode()
            number = numbers.setdefault(name, len(numbers) + 1)
            marker = f"${number}".encode()
            frag.params.append((len(out), len(out) + len(marker), name))
            out += marker
        elif m.group("pos"):
            raise frag.fail(
                "uses a positional %s placeholder; name it, %(name)s, with parameters={'name': ...}"
            )
        else:
            raise frag.fail(
                f"has a % not followed by (name)s at character {m.start() + 1}: with parameters= a literal % "
                "is written %% (e.g. LIKE 'a%%')"
            )
    out += raw[pos:]
    frag.text = bytes(out)
    return frag


def _in_code(frag: _Fragment, spans: list[tuple[int, int]]) -> bool:
    """True when any of ``spans`` (byte offsets in ``frag.text``) starts outside strings and comments."""
    try:
        tokens = parser.scan(frag.text.decode())
    except parser.ParseError:
        return False
    quoted = [
        (t.start, t.end)
        for t in tokens
        if t.name in ("SCONST", "USCONST", "IDENT", "UIDENT", "BCONST", "XCONST")
    ]
    comments = [(t.start, t.end) for t in tokens if t.name in ("SQL_COMMENT", "C_COMMENT")]
    return any(not any(a <= start <= b for a, b in quoted + comments) for start, _ in spans)


def _tokens(frag: _Fragment) -> None:
    """Token-level checks: closed quotes and comments, no ``;``, parentheses balanced, placeholders in code."""
    try:
        tokens = parser.scan(frag.text.decode())
    except parser.ParseError as exc:
        raise frag.fail(f"is not valid SQL ({exc.args[0]})") from None
    depth = 0
    params = {start: (end, name) for start, end, name in frag.params}
    for token in tokens:
        if token.name == "ASCII_59":
            raise frag.fail("has a ';', which would end the statement and start another one")
        if token.name == "ASCII_40":
            depth += 1
        elif token.name == "ASCII_41":
            depth -= 1
            if depth < 0:
                raise frag.fail(
                    f"closes a parenthesis it did not open (character {_char(frag, token.start)}), which would "
                    "end the SQL around it"
                )
        elif (
            token.name == "SCONST"
            and frag.text[token.start : token.start + 1] == b"'"
            and b"\\" in _raw(frag, token)
        ):
            # a backslash in a plain string reads differently when standard_conforming_strings is off
            # (set_config() in another fragment could switch it): one reading only
            raise frag.fail(
                f"has a backslash in the string {_piece(frag, token)}; write E'...' for escapes, or pass the "
                "value through parameters="
            )
        elif token.name == "PARAM":
            placed = params.pop(token.start, None)
            if placed is None or placed[0] != token.end + 1:
                raise frag.fail(
                    f"uses the positional parameter {_piece(frag, token)}; write %(name)s placeholders"
                )
    if depth:
        raise frag.fail(f"leaves {depth} parenthesis(es) open")
    for _, name in params.values():
        raise frag.fail(
            f"has the placeholder %({name})s inside a string literal, a name or a comment, where it is "
            "no value; put it outside the quotes (e.g. 'x' || %(name)s)"
        )


def _raw(frag: _Fragment, token: Any) -> bytes:
    return frag.text[token.start : token.end + 1]


def _char(frag: _Fragment, offset: int) -> int:
    return len(frag.text[:offset].decode(errors="replace")) + 1


def _piece(frag: _Fragment, token: Any) -> str:
    return frag.text[token.start : token.end + 1].decode(errors="replace")


def _parse(frag: _Fragment, before: str, after: str) -> ast.SelectStmt:
    """Parse ``before + text + after``: exactly one plain SELECT that reads only."""
    text = frag.text.decode()
    try:
        statements = parser.parse_sql(before + text + after)
    except parser.ParseError as exc:
        at = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else -1
        if at >= len(before) + len(text.rstrip()):
            raise frag.fail("is not valid SQL here: it ends before the SQL is complete") from None
        raise frag.fail(f"is not valid SQL here ({exc.args[0]})") from None
    if len(statements) != 1 or not isinstance(statements[0].stmt, ast.SelectStmt):
        raise frag.fail(f"is not one {frag.what}")
    _reads_only(frag, statements[0].stmt)
    return statements[0].stmt


def _reads_only(frag: _Fragment, node: Any) -> None:
    """Refuse writes (INSERT/UPDATE/DELETE/MERGE, in a WITH too), SELECT INTO and row locks anywhere."""
    if isinstance(node, _WRITES):
        raise frag.fail(
            f"holds a data-modifying statement ({type(node).__name__.removesuffix('Stmt').upper()})"
        )
    if isinstance(node, ast.SelectStmt):
        if node.intoClause is not None:
            raise frag.fail("has SELECT ... INTO, which creates a table")
        if node.lockingClause:
            raise frag.fail("has a locking clause (FOR UPDATE/SHARE)")
    if isinstance(node, (list, tuple)):
        for item in node:
            _reads_only(frag, item)
    elif isinstance(node, ast.Node):
        for name in getattr(type(node), "__slots__", ()):
            _reads_only(frag, getattr(node, name, None))


def _only(frag: _Fragment, stmt: ast.SelectStmt, keep: Sequence[str]) -> None:
    extra = [label for n, label in _CLAUSES.items() if n not in keep and getattr(stmt, n)]
    if extra:
        raise frag.fail(f"is not one {frag.what} (it adds {', '.join(extra)})")


def _bind(frag: _Fragment, parameters: Parameters, open_: str, close: str) -> sql.Composable:
    """The checked text, each placeholder replaced by its value as a literal, wrapped in ``open_``/``close``."""
    parts: list[sql.Composable] = [sql.SQL(open_)]
    if isinstance(parameters, Deferred) or not frag.params:
        parts.append(sql.SQL(frag.text.decode()))
    else:
        if not isinstance(parameters, Mapping):
            raise CampaignError(
                f"parameters={shown(parameters)}: give a dict {{name: value}} for the %(name)s placeholders."
            )
        pos = 0
        for start, end, name in frag.params:
            if name not in parameters:
                raise CampaignError(
                    f"{frag.option}={shown(frag.value)}: parameters has no {name!r} for %({name})s (it has "
                    f"{shown(sorted(map(str, parameters)))}); add it."
                )
            parts += [sql.SQL(frag.text[pos:start].decode()), _literal(name, parameters[name])]
            pos = end
        parts.append(sql.SQL(frag.text[pos:].decode()))
    parts.append(sql.SQL(close))
    return sql.Composed(parts)


def _literal(name: str, value: Any) -> sql.Composable:
    """``value`` as an SQL literal in parentheses (so no neighbour can join it into another token)."""
    literal = sql.Literal(value)
    try:
        literal.as_bytes(None)
    except Exception as exc:
        raise CampaignError(
            f"parameters[{name!r}]={shown(value)}: cannot be passed as an SQL value ({exc}); give a string, "
            "number, boolean, date, time, list or None (wrap a dict for a json column in psycopg's Jsonb)."
        ) from exc
    return sql.Composed([sql.SQL("("), literal, sql.SQL(")")])


def expression(option: str, value: Any, parameters: Parameters = None) -> sql.Composable:
    """Exactly one scalar or boolean expression, as ``(\\n<value>\\n)`` with its parameters bound."""
    frag = _fragment(option, value, "expression", parameters)
    _tokens(frag)
    stmt = _parse(frag, "SELECT (\n", "\n)")
    _only(frag, stmt, ())
    if len(stmt.targetList or ()) != 1:
        raise frag.fail("is not one expression")
    return _bind(frag, parameters, "(\n", "\n)")


def select_list(option: str, value: Any, parameters: Parameters = None) -> sql.Composable:
    """One or more select-list items (``expr [AS name], ...``), on lines of their own."""
    frag = _fragment(option, value, "select list (expression AS name, ...)", parameters)
    _tokens(frag)
    stmt = _parse(frag, "SELECT\n", "\n")
    _only(frag, stmt, ())
    return _bind(frag, parameters, "\n", "\n")


def order_list(option: str, value: Any, parameters: Parameters = None) -> sql.Composable:
    """One or more ORDER BY items (``expr [ASC|DESC] [NULLS FIRST|LAST], ...``), on lines of their own."""
    frag = _fragment(option, value, "ORDER BY list (expression [ASC|DESC], ...)", parameters)
    _tokens(frag)
    stmt = _parse(frag, "SELECT 1 ORDER BY\n", "\n")
    _only(frag, stmt, ("sortClause",))
    return _bind(frag, parameters, "\n", "\n")


def query(option: str, value: Any, parameters: Parameters = None) -> sql.Composable:
    """Exactly one SELECT that reads only, on lines of its own (a caller puts it in parentheses).

    One trailing ``;`` is dropped (a ``.sql`` file often ends with one).
    """
    if isinstance(value, str):
        stripped = value.strip()
        value = stripped[:-1] if stripped.endswith(";") else value
    frag = _fragment(option, value, "SELECT query", parameters)
    _tokens(frag)
    _parse(frag, "", "")
    return _bind(frag, parameters, "\n", "\n")


def early_parameters(parameters: Any) -> Parameters:
    """``parameters`` as known at DAG-parse time: a dict, None, or not known yet."""
    if parameters is None or (
        isinstance(parameters, Mapping) and not any(templated(v) for v in parameters.values())
    ):
        return parameters
    return DEFERRED


def check_at_parse(
    fragments: Iterable[tuple[Check, str, Any]], parameters: Any, template_ext: Sequence[str] = ()
) -> None:
    """At DAG-parse time: check each option that is not rendered later (a template is checked in execute())."""
    params = early_parameters(parameters)
    for check, option, value in fragments:
        if value is None or value == "" or templated(value, template_ext) or not isinstance(value, str):
            continue
        check(option, value, params)


def check_at_run(fragments: Iterable[tuple[Check, str, Any]], parameters: Any) -> None:
    """In execute(), after rendering and before anything runs: check every option, bind the parameters."""
    if parameters is not None and not isinstance(parameters, Mapping):
        raise CampaignError(
            f"parameters={shown(parameters)}: give a dict {{name: value}} for the %(name)s placeholders."
        )
    for check, option, value in fragments:
        if value is not None and value != "":  # an empty option is one not given
            check(option, value, parameters)
