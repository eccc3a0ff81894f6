"""What every campaign operator shares: the connection, run identity, outputs and on_empty."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, TypeVar, get_args

import psycopg
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException
from psycopg import sql

from airflow_campaign import options
from airflow_campaign.errors import CampaignError, shown
from airflow_campaign.hooks.campaign import STAGING_SCHEMA, CampaignHook, staging_table_name
from airflow_campaign.population import CURRENT_DAG, Population
from airflow_campaign.schema.migrate import require_current

OnEmpty = Literal["skip", "continue", "fail"]
T = TypeVar("T")


def check_choice(option: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise at DAG-parse time when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise CampaignError(f"{option}={shown(value)} is not valid; use one of {list(choices)}.")


def literal_choices(literal: Any) -> tuple[Any, ...]:
    return get_args(literal)


def input_labels(option: str, n: int) -> list[str]:
    """How errors name ``n`` inputs given to ``option``: ``option`` alone, or ``option[i]``."""
    return [option] if n == 1 else [f"{option}[{i}]" for i in range(n)]


def run_identity(context: Any) -> dict[str, Any]:
    """dag_id, task_id, run_id and map_index of the running task instance."""
    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    return {
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": ti.run_id,
        "map_index": -1 if map_index is None else int(map_index),
    }


#: Aliases the operators' composed SQL gives the population (p, src), its resource (r), the
#: existing row (dest) and work tables (w). Some are documented for users to write (the
#: resource is ``r`` in a QueryOperator's ``where``); a database message names them either way.
_OUR_ALIASES = "p|r|w|src|dest"
_QUALIFIED_COLUMN = re.compile(
    rf'\bcolumn (?P<alias>{_OUR_ALIASES})\.(?P<column>"(?:[^"]|"")+"|[^\s"]+) does not exist'
)
_SUGGESTED_COLUMN = re.compile(rf'\bthe column "(?P<alias>{_OUR_ALIASES})\.(?P<column>[^"]+)"')


def _in_user_terms(detail: str, hint: str, option: str) -> tuple[str, str]:
    """The database's message and hint with our aliases left out where the user wrote none.

    ``column w.score does not exist`` becomes ``column "score" does not exist`` when the SQL
    the user wrote (shown in ``option``, as in ``where='score > 1'``) has no ``w.``; a hint's
    suggestion ``"p.loyalty_points"`` becomes ``"loyalty_points"`` unless the user qualifies
    with ``p.`` (or two suggestions differ only by their alias). What the user wrote is kept.
    """
    written = {a for a in _OUR_ALIASES.split("|") if re.search(rf"(?<![\w.\"]){a}\.", option)}
    if "=" in option:  # the option shows the user's SQL: a qualified name it lacks is ours
        detail = _QUALIFIED_COLUMN.sub(
            lambda m: m[0] if m["alias"] in written else f"column {_quoted(m['column'])} does not exist",
            detail,
        )
    else:  # unknown: a qualified name in the message may be the user's, and says how they write
        written |= {m["alias"] for m in _QUALIFIED_COLUMN.finditer(detail)}
    suggested = [m["column"] for m in _SUGGESTED_COLUMN.finditer(hint)]
    if len(set(suggested)) == len(suggested):
        hint = _SUGGESTED_COLUMN.sub(
            lambda m: m[0] if m["alias"] in written else f'the column "{m["column"]}"', hint
        )
    return detail, hint


def _quoted(column: str) -> str:
    return column if column.startswith('"') else f'"{column}"'


@contextmanager
def sql_errors(option: str) -> Iterator[None]:
    """Turn a database error raised by user-written SQL into a CampaignError naming ``option``."""
    try:
        yield
    except psycopg.Error as exc:
        diag = exc.diag
        detail, hint = _in_user_terms(
            (diag.message_primary or str(exc)).strip().removesuffix("."),
            (diag.message_hint or "").strip().removesuffix("."),
            option,
        )
        raise CampaignError(
            f"{option}: the database rejected the SQL ({type(exc).__name__}: {detail})."
            + (f" Hint: {hint}." if hint else "")
            + " Nothing was written; fix the option and clear the task."
        ) from exc


def _checked_init(init: Callable[..., None]) -> Callable[..., None]:
    """``init`` followed, once the outermost ``__init__`` returns, by the option checks."""

    @functools.wraps(init)
    def wrapper(self: CampaignBaseOperator, *args: Any, **kwargs: Any) -> None:
        depth = self.__dict__.get("_campaign_init_depth", 0)
        if depth == 0:  # the options as the DAG author gave them, before any constructor reads them
            kwargs.update(
                options.run_checks(
                    kwargs,
                    type(self).all_option_checks(),
                    rendered=False,
                    template_fields=self.template_fields,
                )
            )
        object.__setattr__(self, "_campaign_init_depth", depth + 1)
        try:
            init(self, *args, **kwargs)
        finally:
            object.__setattr__(self, "_campaign_init_depth", depth)

    return wrapper


def _checked_execute(execute: Callable[..., Any]) -> Callable[..., Any]:
    """``execute`` preceded by the option checks on the rendered values."""

    @functools.wraps(execute)
    def wrapper(self: CampaignBaseOperator, context: Any) -> Any:
        self.check_options()
        ti = context.get("ti") if isinstance(context, dict) else None
        token = CURRENT_DAG.set(getattr(ti, "dag_id", None))
        try:
            return execute(self, context)
        finally:
            CURRENT_DAG.reset(token)

    return wrapper


class CampaignBaseOperator(BaseOperator):
    """Base of every campaign operator.

    :param campaign_conn_id: Airflow connection (type postgres) to the campaign database.
    :param on_empty: when the result has no rows: ``"continue"`` (default: pass the empty
        population on), ``"skip"`` (mark this task skipped) or ``"fail"``.
    """

    ui_color = "#e3ecfa"
    #: ``{option: check}`` (airflow_campaign.options), merged along the class hierarchy: run when
    #: the operator is built (a templated value waits) and again on rendered values before execute.
    option_checks: ClassVar[dict[str, options.Check]] = {
        "campaign_conn_id": options.name,
        "on_empty": options.choice(literal_choices(OnEmpty)),
        "population": options.optional(options.population),
        "primary": options.population,
        "exclude": options.population,
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _checked_init(cls.__dict__["__init__"])  # type: ignore[method-assign]
        if "execute" in cls.__dict__:
            cls.execute = _checked_execute(cls.__dict__["execute"])  # type: ignore[method-assign]

    def __init__(
        self, *, campaign_conn_id: str = "campaign_default", on_empty: OnEmpty = "continue", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.campaign_conn_id = campaign_conn_id
        self.on_empty = on_empty

    @classmethod
    def all_option_checks(cls) -> dict[str, options.Check]:
        """``option_checks`` of this class and its bases (a subclass's entry wins)."""
        checks: dict[str, options.Check] = {}
        for klass in reversed(cls.__mro__):
            checks.update(vars(klass).get("option_checks", {}))
        return checks

    def check_options(self) -> None:
        """Check the rendered options (the attributes of the same names) before execute."""
        checks = self.all_option_checks()
        values = {o: getattr(self, o) for o in checks if hasattr(self, o)}
        for option, value in options.run_checks(values, checks, rendered=True, template_fields=()).items():
            setattr(self, option, value)

    def get_hook(self) -> CampaignHook:
        return CampaignHook(campaign_conn_id=self.campaign_conn_id)

    def save(
        self,
        conn: psycopg.Connection,
        context: Any,
        select: sql.Composable,
        *,
        key: str,
        resource: str | None,
        params: Any = None,
        suffix: str = "",
        option: str = "sql",
    ) -> Population:
        """Materialise ``select`` as this task's staging table and describe it as a Population."""
        identity = run_identity(context)
        name = staging_table_name(suffix=suffix, **identity)
        with sql_errors(option):
            count = CampaignHook.replace_table(conn, name, select, params, identity=identity, output=suffix)
        table = f"{STAGING_SCHEMA}.{name}"
        columns = [c for c, _ in CampaignHook.columns_of(conn, table)]
        if key not in columns:
            raise CampaignError(
                f"{option}: the result has no key column {key!r} (columns: {columns}); select it."
            )
        conn.execute(  # what the rows are, for the tasks that read the table (see Population.bind)
            "UPDATE campaign.staging_tables SET resource = %s, key_column = %s WHERE table_name = %s",
            (resource, key, table),
        )
        return Population(kind="table", table=table, key=key, resource=resource, columns=columns, count=count)

    def check_empty(self, population: Population, what: str = "result") -> None:
        """Apply ``on_empty`` (call inside the transaction so 'skip' and 'fail' write nothing)."""
        if population.count:
            return
        if self.on_empty == "skip":
            raise AirflowSkipException(f"{self.task_id}: the {what} is empty (on_empty='skip').")
        if self.on_empty == "fail":
            raise CampaignError(f"{self.task_id}: the {what} is empty and on_empty='fail'.")

    def inputs(
        self, conn: psycopg.Connection, values: Sequence[Any], option: str
    ) -> list[tuple[Population, sql.Composable]]:
        """Coerce and bind each input population, checking they exist."""
        out = []
        for label, value in zip(input_labels(option, len(values)), values, strict=True):
            pop = Population.from_value(value, label)
            out.append((pop, pop.bind(conn, label)))
        return out

    def require_schema(self, conn: psycopg.Connection) -> None:
        """Raise, naming this task and its connection, when the database lacks migrations."""
        require_current(conn, f"{self.task_id} (connection {self.campaign_conn_id!r})")

    def autocommit_connection(self) -> psycopg.Connection:
        """A new connection on which each ``with conn.transaction()`` block commits on its own."""
        conn = self.get_hook().connect()
        conn.autocommit = True
        return conn

    def run_in_transaction(self, work: Callable[[psycopg.Connection], T]) -> T:
        with self.get_hook().transaction() as conn:
            self.require_schema(conn)
            return work(conn)
