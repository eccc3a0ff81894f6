"""SaveAudienceOperator: save a population as a list or file audience, with size history and an Asset event."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import psycopg
from airflow.sdk import Asset, AssetAlias
from psycopg import sql
from psycopg.types.json import Jsonb

from airflow_campaign import options as opt
from airflow_campaign.assets import AUDIENCE_NAME, audience_uri
from airflow_campaign.assets import AUDIENCE_NAME_MAX as NAME_MAX
from airflow_campaign.errors import CampaignError
from airflow_campaign.extract import WriteResult, check_bucket, write_query
from airflow_campaign.files import LINE_COLUMN, infer_format, load_raw
from airflow_campaign.hooks.campaign import CampaignHook
from airflow_campaign.operators.base import (
    CampaignBaseOperator,
    check_choice,
    literal_choices,
    run_identity,
)
from airflow_campaign.population import Population
from airflow_campaign.resources import Resource
from airflow_campaign.ui.links import AudiencesLink

AudienceMode = Literal["create_or_update", "update", "create_unique"]
AudienceUpdate = Literal["replace", "complete"]
AudienceType = Literal["list", "file"]

#: Formats a file audience is written in: read back by ReadAudienceOperator, and naming their
#: columns even when empty (a header line, a schema), unlike JSON Lines.
FILE_FORMATS: tuple[str, ...] = ("csv", "tsv", "parquet")
_NAME = AUDIENCE_NAME
_STAMP = "%Y%m%dT%H%M%S"
_TEXT_TYPES = ("text", "character varying", "character", "varchar", "char", "name", "citext")


def check_audience_name(option: str, name: Any, max_length: int = NAME_MAX) -> None:
    """Raise unless ``name`` can name an audience (it goes into Asset URIs and file names)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > max_length:
        raise CampaignError(
            f"{option}={name!r} is not a valid audience name: use 1 to {max_length} letters, digits, "
            "'_', '-' or '.', starting with a letter or digit (e.g. 'loyal_customers')."
        )


def run_stamp(context: Any) -> str:
    """The date and time of the run, ``YYYYMMDDTHHMMSS`` in UTC: the same for every try of the run.

    The logical date when the run has one (as ``{{ ts_nodash }}``), else the run's ``run_after``.
    """
    when = context.get("logical_date")
    if when is None:
        when = getattr(context.get("dag_run"), "run_after", None)
    if when is None:
        raise CampaignError(
            "mode='create_unique': the run has neither a logical date nor a run_after to date the "
            "audience with (is the task running outside Airflow?); put logical_date in the context, or "
            "use mode='create_or_update' with a name of your own."
        )
    return when.astimezone(dt.timezone.utc).strftime(_STAMP)


#: Key types whose every value converts to a wider one (a population's key, a resource's key).
_WIDENS = {
    "smallint": ("integer", "bigint", "numeric"),
    "integer": ("bigint", "numeric"),
    "bigint": ("numeric",),
}


def converts_always(source: str | None, target: str) -> bool:
    """Whether every value of type ``source`` converts, through its text, to the key type ``target``.

    The same type, any type to text (or to a length-limited text type, which truncates), and an
    integer to a wider integer or to an unconstrained numeric; None (unknown) never does.
    """
    if source is None:
        return False
    base = target.split("(")[0].strip()
    return source == target or base in _TEXT_TYPES or target in _WIDENS.get(source, ())


def _key_order(expr: sql.Composable, key_type: str) -> sql.Composable:
    """Sort ``expr`` (a key as text) in the order of the key's type, byte order for text keys."""
    if key_type.split("(")[0].strip() in _TEXT_TYPES:
        return sql.SQL('{} COLLATE "C"').format(expr)
    return sql.SQL("({})::{}").format(expr, sql.SQL(key_type))


@dataclass(frozen=True)
class _Audience:
    """A row of campaign.audiences as it was before this save."""

    id: int
    type: str
    resource: str
    key_column: str
    file_uri: str | None
    file_format: str | None
    row_count: int
    file_path: str | None = None


@dataclass
class SaveResult:
    """What a save did: the XCom value and the Asset event's extra."""

    audience: str
    type: str
    size: int
    added: int
    removed: int
    resource: str
    uri: str | None = None
    export: str | None = None
    path: str | None = None  # a file audience's path as given; ``uri`` is the version written

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "audience": self.audience,
            "type": self.type,
            "size": self.size,
            "added": self.added,
            "removed": self.removed,
        }
        if self.uri is not None:
            out["uri"] = self.uri
            out["path"] = self.path
        if self.export is not None:
            out["export"] = self.export
        return out

    def event_extra(self) -> dict[str, Any]:
        return {**self.to_dict(), "resource": self.resource}


class SaveAudienceOperator(CampaignBaseOperator):
    """Save a population as an audience: a list (members in the database) or a file.

    :param population: the population to save (an upstream ``.output``, its dict, a list of
        dicts or a DataFrame). It must belong to a resource; its key identifies the members.
    :param audience: the audience's name (templated): letters, digits, ``_``, ``-``, ``.``.
    :param mode: ``"create_or_update"`` (default), ``"update"`` (the audience must exist) or
        ``"create_unique"`` (append the run's date and time, ``_YYYYMMDDTHHMMSS``, to the name:
        a new audience per run, the same one for every try of a run).
    :param update: ``"replace"`` (default: the members become exactly the population; the type
        and resource may change) or ``"complete"`` (add the population to the members; the
        audience must have the same type and resource).
    :param type: ``"list"`` or ``"file"``; None keeps an existing audience's type, and makes a
        new one a list, or a file when ``path`` is given.
    :param path: where a file audience's file is written (templated; local path or
        ``s3://bucket/key``; ``.csv`` or ``.tsv``, optionally ``.gz``). Default for an existing
        file audience: its current file.
    :param export_to: also write the members' keys here (templated; local path or
        ``s3://bucket/key``): a CSV with a header line naming the key column, one key per
        line, sorted.
    :param aws_conn_id: AWS connection for ``s3://`` paths.
    :param asset_alias: name of the ``AssetAlias`` the Asset event goes through when the
        audience name is only known at run time (templated name or ``create_unique``);
        default ``"campaign_audiences:<audience>"``.
    """

    template_fields: Sequence[str] = ("population", "audience", "path", "export_to")
    operator_extra_links = (AudiencesLink(),)
    ui_color = "#d9f0e3"

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "path": opt.optional(opt.text),
        "export_to": opt.optional(opt.text),
        "aws_conn_id": opt.optional(opt.name),
        "asset_alias": opt.optional(opt.text),
    }

    def __init__(
        self,
        *,
        population: Any,
        audience: str,
        mode: AudienceMode = "create_or_update",
        update: AudienceUpdate = "replace",
        type: AudienceType | None = None,
        path: str | None = None,
        export_to: str | None = None,
        aws_conn_id: str | None = "aws_default",
        asset_alias: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("mode", mode, literal_choices(AudienceMode))
        check_choice("update", update, literal_choices(AudienceUpdate))
        if type is not None:
            check_choice("type", type, literal_choices(AudienceType))
        if not isinstance(audience, str):
            raise CampaignError(f"audience={audience!r}: give the audience's name as a string.")
        if type == "list" and path:
            raise CampaignError(
                f"path={path!r}: a list audience keeps its members in the database; leave path out, "
                "or use type='file' to save the population as a file."
            )
        if path is not None and not opt.templated(path):
            _file_format("path", path)
        if export_to is not None and not opt.templated(export_to):
            _check_export_name(export_to)
        self.population = population
        self.audience = audience
        self.mode = mode
        self.update = update
        self.audience_type = type
        self.path = path
        self.export_to = export_to
        self.aws_conn_id = aws_conn_id
        self.asset: Asset | None = None
        self.alias: AssetAlias | None = None
        if opt.templated(audience) or mode == "create_unique":
            if not opt.templated(audience):
                check_audience_name("audience", audience, NAME_MAX - len("_YYYYMMDDTHHMMSS"))
            self.alias = AssetAlias(asset_alias or f"campaign_audiences:{audience}")
            self.outlets.append(self.alias)
        else:
            check_audience_name("audience", audience)
            self.asset = Asset(audience_uri(audience))
            self.outlets.append(self.asset)

    # ---- execution ------------------------------------------------------------------------

    def audience_name(self, context: Any) -> str:
        """The audience's name for this run (rendered; with the run's date for create_unique)."""
        if self.mode == "create_unique":
            check_audience_name("audience", self.audience, NAME_MAX - len("_YYYYMMDDTHHMMSS"))
            return f"{self.audience}_{run_stamp(context)}"
        check_audience_name("audience", self.audience)
        return self.audience

    def execute(self, context: Any) -> dict[str, Any]:
        name = self.audience_name(context)
        self._written: str | None = None
        self._replaced: str | None = None
        self._pending_export: str | None = None
        self._audience_id: int | None = None
        try:
            result = self.run_in_transaction(lambda conn: self._save(conn, context, name))
        except BaseException:
            for unpublished in (self._written, self._pending_export):  # no commit records them
                if unpublished:
                    remove_file(unpublished, self.aws_conn_id, self.log)
            raise
        if self._pending_export and result.export:  # the export reaches its name once the save is committed
            publish_file(self._pending_export, result.export, self.aws_conn_id)
        if self._replaced and self._replaced != result.uri:  # the version this save superseded
            remove_file(self._replaced, self.aws_conn_id, self.log)
        if result.uri and result.path and self._audience_id is not None:
            prune_versions(
                result.path, self._audience_id, keep=result.uri, aws_conn_id=self.aws_conn_id, log=self.log
            )
        self.emit_asset_event(context, result)
        self.log.info(
            "%s: %s audience %r has %d members (%d added, %d removed)%s",
            self.task_id,
            result.type,
            result.audience,
            result.size,
            result.added,
            result.removed,
            f"; keys exported to {result.export}" if result.export else "",
        )
        return result.to_dict()

    def emit_asset_event(self, context: Any, result: SaveResult) -> None:
        """Attach the save to this task's Asset event (``campaign://audience/<name>``)."""
        events = context.get("outlet_events")
        if events is None:
            return
        if self.asset is not None:
            events[self.asset].extra.update(result.event_extra())
        elif self.alias is not None:
            events[self.alias].add(Asset(audience_uri(result.audience)), extra=result.event_extra())

    def _save(self, conn: psycopg.Connection, context: Any, name: str) -> SaveResult:
        pop = Population.from_value(self.population, "population")
        if pop.resource is None:
            raise CampaignError(
                "population: its rows belong to no resource, and an audience is a set of keys of a "
                "resource; reconcile the rows with profiles first (e.g. LoadFileOperator(reconcile_on=...)) "
                "or build it with Population.inline(rows, key=..., resource=...)."
            )
        rel = pop.bind(conn, "population")
        resource = Resource.resolve(conn, pop.resource, pop.key)
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"campaign.audience:{name}",))
        existing = self._existing(conn, name, context)
        target = self._target_type(existing)
        if existing is not None and self.update == "complete":
            self._check_completable(name, existing, target, resource)
        file_path = self._file_uri(conn, name, existing) if target == "file" else None
        if self.export_to:
            _check_export_name(self.export_to)
            check_destination("export_to", self.export_to, self.aws_conn_id)
        key = sql.Identifier(pop.key)
        found = conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {} p WHERE p.{} IS NOT NULL)").format(rel, key)
        ).fetchone()
        if not (found and found[0]):
            self.check_empty(dataclasses.replace(pop, count=0), "population")

        # ---- from here on, writes (all in this transaction) ----
        previous = _previous_members(
            conn, name, existing, self.update == "complete", self.aws_conn_id, self.log
        )
        self._check_key_type(conn, pop, rel, resource)
        audience_id = self._upsert_audience(conn, name, target, resource, file_path, file_path)
        self._audience_id = audience_id
        # this save's version: named after the audience too, so no other audience's file matches it
        file_uri = versioned(file_path, audience_id) if file_path else None
        save = _AudienceSave(
            conn, audience_id, pop, rel, resource.columns[resource.key], previous, self.update == "complete"
        )
        if target == "list":
            size, added, removed = save.write_members(existing)
            columns: list[str] | None = None
        else:
            assert file_uri is not None
            self._written = file_uri
            size, added, removed, columns = save.write_file(existing, file_uri, self.aws_conn_id)
        if existing is not None and existing.type == "file":
            self._replaced = existing.file_uri
        added, removed = self._record_size(conn, audience_id, context, size, added, removed)
        conn.execute(
            "UPDATE campaign.audiences SET row_count = %s, columns = %s, file_uri = %s, updated_at = now()"
            " WHERE id = %s",
            (size, None if columns is None else Jsonb(columns), file_uri, audience_id),
        )
        export = None
        if self.export_to:  # written under a pending name, moved to export_to after the commit
            self._pending_export = pending_name(self.export_to)
            save.export_keys(target, self._pending_export, resource.key, self.aws_conn_id)
            export = self.export_to
        return SaveResult(
            audience=name,
            type=target,
            size=size,
            added=added,
            removed=removed,
            resource=resource.name,
            uri=file_uri,
            path=file_path,
            export=export,
        )

    # ---- checks (before anything is written) ----------------------------------------------

    def _existing(self, conn: psycopg.Connection, name: str, context: Any) -> _Audience | None:
        row = conn.execute(
            "SELECT id, type, resource, key_column, file_uri, file_format, row_count, file_path"
            " FROM campaign.audiences WHERE name = %s FOR UPDATE",
            (name,),
        ).fetchone()
        existing = _Audience(*row) if row else None
        if existing is None and self.mode == "update":
            known = [r[0] for r in conn.execute("SELECT name FROM campaign.audiences ORDER BY name LIMIT 20")]
            raise CampaignError(
                f"audience={name!r} does not exist, and mode='update' only updates an existing audience "
                f"(known audiences: {known}); fix the name, or use mode='create_or_update' to create it."
            )
        if existing is not None and self.mode == "create_unique":
            ident = run_identity(context)
            made_here = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM campaign.audience_sizes WHERE audience_id = %s"
                " AND dag_id = %s AND run_id = %s)",
                (existing.id, ident["dag_id"], ident["run_id"]),
            ).fetchone()
            if not (made_here and made_here[0]):
                raise CampaignError(
                    f"audience={self.audience!r}, mode='create_unique': audience {name!r} already exists and "
                    f"was not made by this run ({ident['dag_id']}, {ident['run_id']}): another DAG or task "
                    "saves the same name at the same date and time. Give each its own audience name."
                )
        return existing

    def _target_type(self, existing: _Audience | None) -> str:
        if self.audience_type is not None:
            return self.audience_type
        if self.path:
            return "file"
        return existing.type if existing is not None else "list"

    def _check_completable(self, name: str, existing: _Audience, target: str, resource: Resource) -> None:
        if existing.type != target:
            given = f"type={self.audience_type!r}" if self.audience_type else f"path={self.path!r}"
            raise CampaignError(
                f"update='complete': audience {name!r} is a {existing.type} audience and {given} saves a "
                f"{target} audience; 'complete' adds members to an audience of the same type. Save it as a "
                f"{existing.type} audience, or use update='replace' to change its type."
            )
        if (existing.resource, existing.key_column) != (resource.name, resource.key):
            raise CampaignError(
                f"update='complete': audience {name!r} holds keys of resource {existing.resource!r} "
                f"(key {existing.key_column!r}) and the population is of resource {resource.name!r} "
                f"(key {resource.key!r}); 'complete' adds members of the same resource. Use "
                "update='replace' to change the audience's resource, or save into another audience."
            )

    def _file_uri(self, conn: psycopg.Connection, name: str, existing: _Audience | None) -> str:
        """Where the file audience is written: ``path`` (one spelling per file), or the existing
        file audience's path."""
        if self.path:
            uri = normalised_path(self.path)
        elif existing is not None and existing.type == "file" and (existing.file_path or existing.file_uri):
            uri = existing.file_path or existing.file_uri or ""
        else:
            raise CampaignError(
                f"path: audience {name!r} is saved as a file audience, so give path= for its file (a local "
                "path or s3://bucket/key ending in .csv, .tsv or .parquet)."
            )
        _file_format("path", uri)
        shared = conn.execute(
            "SELECT name FROM campaign.audiences WHERE coalesce(file_path, file_uri) = %s AND name <> %s LIMIT 1",
            (uri, name),
        ).fetchone()
        if shared:
            raise CampaignError(
                f"path={uri!r} is already the file of audience {shared[0]!r}; each file audience needs its "
                "own file (with mode='create_unique', put e.g. {{ ts_nodash }} or {{ run_id }} in path)."
            )
        check_destination("path", uri, self.aws_conn_id)
        return uri

    def _check_key_type(
        self, conn: psycopg.Connection, pop: Population, rel: sql.Composable, resource: Resource
    ) -> None:
        """Every key of the population must be a valid key of the resource (a text key saved into
        a profiles audience would only fail when the audience is read back)."""
        key_type = resource.columns[resource.key]
        if converts_always(CampaignHook.relation_types(conn, rel).get(pop.key), key_type):
            return
        key = sql.Identifier(pop.key)
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("SELECT count(p.{k}::text::{t}) FROM {rel} p").format(
                        k=key, t=sql.SQL(key_type), rel=rel
                    )
                )
        except psycopg.errors.DataError as exc:
            raise CampaignError(
                f"population: its key {pop.key!r} holds a value that is not a {key_type} key of resource "
                f"{resource.name!r} ({exc.diag.message_primary}). Nothing was written; keep only valid "
                f"{resource.key} values upstream (or reconcile the rows with the resource first)."
            ) from exc

    # ---- writing ----------------------------------------------------------------------------

    def _upsert_audience(
        self,
        conn: psycopg.Connection,
        name: str,
        target: str,
        resource: Resource,
        file_uri: str | None,
        file_path: str | None,
    ) -> int:
        file_format = _file_format("path", file_uri) if file_uri else None
        row = conn.execute(
            "INSERT INTO campaign.audiences (name, type, resource, key_column, file_uri, file_format, file_path)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET type = EXCLUDED.type,"
            " resource = EXCLUDED.resource, key_column = EXCLUDED.key_column, file_uri = EXCLUDED.file_uri,"
            " file_format = EXCLUDED.file_format, file_path = EXCLUDED.file_path, updated_at = now() RETURNING id",
            (name, target, resource.name, resource.key, file_uri, file_format, file_path),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def _record_size(
        self, conn: psycopg.Connection, audience_id: int, context: Any, size: int, added: int, removed: int
    ) -> tuple[int, int]:
        """Record this save in the size history: one row per task instance and run.

        A retry whose save changed nothing (an earlier try of the run already committed these
        members, and no other save came since) keeps the counts that try recorded: the history
        and the result read as one clean try.
        """
        ident = run_identity(context)
        keys = (audience_id, ident["dag_id"], ident["run_id"], ident["task_id"], ident["map_index"])
        earlier = conn.execute(
            "SELECT s.size, s.added, s.removed FROM campaign.audience_sizes s WHERE s.audience_id = %s"
            " AND s.dag_id = %s AND s.run_id = %s AND s.task_id = %s AND s.map_index = %s"
            " AND s.added IS NOT NULL AND NOT EXISTS (SELECT 1 FROM campaign.audience_sizes o"
            " WHERE o.audience_id = s.audience_id AND o.id <> s.id AND o.updated_at >= s.updated_at)",
            keys,
        ).fetchone()
        if earlier is not None and (added, removed) == (0, 0) and int(earlier[0]) == size:
            added, removed = int(earlier[1]), int(earlier[2] or 0)
        conn.execute(
            "INSERT INTO campaign.audience_sizes"
            " (audience_id, dag_id, run_id, task_id, map_index, size, added, removed)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (audience_id, dag_id, run_id, task_id, map_index) DO UPDATE SET size = EXCLUDED.size,"
            " added = EXCLUDED.added, removed = EXCLUDED.removed, updated_at = now()",
            (*keys, size, added, removed),
        )
        return added, removed


@dataclass
class _Previous:
    """The members an audience had before this save.

    ``relation`` selects them as ``member_key`` text (None for a new audience, or an old file
    that cannot be read: then all ``count`` recorded members count as removed). For a file
    audience, ``table`` is the temporary table its file was loaded into, with ``columns``.
    """

    relation: sql.Composable | None = None
    count: int = 0
    table: str | None = None
    columns: list[str] = field(default_factory=list)
    key: str | None = None


def _previous_members(
    conn: psycopg.Connection,
    name: str,
    existing: _Audience | None,
    complete: bool,
    aws_conn_id: str | None,
    log: Any,
) -> _Previous:
    if existing is None:
        return _Previous()
    if existing.type == "list":
        return _Previous(
            sql.SQL("SELECT member_key FROM campaign.audience_members WHERE audience_id = {}").format(
                sql.Literal(existing.id)
            ),
            existing.row_count,
        )
    assert existing.file_uri is not None
    try:
        with conn.transaction():
            raw, columns, _ = load_raw(
                conn,
                existing.file_uri,
                format=existing.file_format or infer_format(existing.file_uri),
                aws_conn_id=aws_conn_id,
            )
            if existing.key_column not in columns:
                raise CampaignError(f"it has no key column {existing.key_column!r}")
    except (CampaignError, psycopg.Error) as exc:
        if complete:
            raise CampaignError(
                f"update='complete': the file of audience {name!r} ({existing.file_uri}) cannot be read "
                f"({exc}), so there is nothing to complete. Restore the file, or use update='replace'."
            ) from exc
        log.warning(
            "The file of audience %r (%s) cannot be read (%s); every old member counts as removed.",
            name,
            existing.file_uri,
            exc,
        )
        return _Previous(None, existing.row_count)
    key = sql.Identifier(existing.key_column)
    return _Previous(
        sql.SQL("SELECT DISTINCT f.{} AS member_key FROM {} f WHERE f.{} IS NOT NULL").format(
            key, sql.Identifier(raw), key
        ),
        existing.row_count,
        table=raw,
        columns=[c for c in columns if c != LINE_COLUMN],
        key=existing.key_column,
    )


class _AudienceSave:
    """The set-based statements of one save, on the saving transaction's connection."""

    def __init__(
        self,
        conn: psycopg.Connection,
        audience_id: int,
        pop: Population,
        rel: sql.Composable,
        key_type: str,
        previous: _Previous,
        complete: bool,
    ) -> None:
        self.conn = conn
        self.audience_id = audience_id
        self.pop = pop
        self.rel = rel
        self.key = sql.Identifier(pop.key)
        self.key_type = key_type
        self.previous = previous
        self.complete = complete
        self.pop_keys = sql.SQL(
            "SELECT DISTINCT p.{key}::text AS member_key FROM {rel} p WHERE p.{key} IS NOT NULL"
        ).format(key=self.key, rel=rel)
        self.new_keys = self.pop_keys
        if complete and previous.relation is not None:
            self.new_keys = sql.SQL("{} UNION SELECT member_key FROM ({}) o").format(
                self.pop_keys, previous.relation
            )

    def diff(self) -> tuple[int, int]:
        """(added, removed) between the previous members and the new ones."""
        if self.previous.relation is None:
            row = self.conn.execute(sql.SQL("SELECT count(*) FROM ({}) n").format(self.new_keys)).fetchone()
            return (int(row[0]) if row else 0), self.previous.count
        row = self.conn.execute(
            sql.SQL(
                "WITH n AS ({}), o AS ({}) SELECT"
                " (SELECT count(*) FROM n WHERE NOT EXISTS (SELECT 1 FROM o WHERE o.member_key = n.member_key)),"
                " (SELECT count(*) FROM o WHERE NOT EXISTS (SELECT 1 FROM n WHERE n.member_key = o.member_key))"
            ).format(self.new_keys, self.previous.relation)
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def write_members(self, existing: _Audience | None) -> tuple[int, int, int]:
        """Make the list audience's members the new keys; return size, added and removed.

        The counts are the DELETE's and the INSERT's own row counts, and the size follows from
        them (the members before, the audience's ``row_count``, plus added, minus removed): no
        other pass over the population or the members.
        """
        if existing is not None and existing.type == "list":
            removed = 0 if self.complete else self._delete_members()
            added = self._insert_members()
            return existing.row_count + added - removed, added, removed
        size = self._insert_members()  # a new audience, or a file one becoming a list: no members yet
        if self.previous.relation is None:
            return size, size, self.previous.count
        added, removed = self.diff()
        return size, added, removed

    def _delete_members(self) -> int:
        """Delete the members that are not keys of the population; return how many."""
        return self.conn.execute(
            sql.SQL(
                "DELETE FROM campaign.audience_members m WHERE m.audience_id = {} AND NOT EXISTS "
                "(SELECT 1 FROM {} p WHERE p.{}::text = m.member_key)"
            ).format(sql.Literal(self.audience_id), self.rel, self.key)
        ).rowcount

    def _insert_members(self) -> int:
        """Insert the population's keys that are not members yet; return how many.

        The anti-join drops the keys that are members already in one pass over the population
        (much cheaper than a conflict per row when most are members); the DISTINCT and the key
        order then apply to the new keys only, in one sort, which also fills the primary key's
        index in order. Saves of one audience hold its advisory lock and the keys are distinct,
        so no row can conflict: no ON CONFLICT clause, whose speculative insertion per row
        costs about a fifth of the statement.
        """
        audience = sql.Literal(self.audience_id)
        return self.conn.execute(
            sql.SQL(
                "INSERT INTO campaign.audience_members (audience_id, member_key) SELECT DISTINCT {a}, p.{k}::text "
                "FROM {rel} p WHERE p.{k} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM campaign.audience_members m "
                "WHERE m.audience_id = {a} AND m.member_key = p.{k}::text) ORDER BY 2"
            ).format(a=audience, k=self.key, rel=self.rel)
        ).rowcount

    def write_file(
        self, existing: _Audience | None, uri: str, aws_conn_id: str | None
    ) -> tuple[int, int, int, list[str]]:
        """Write the file audience's file; return size, added, removed and the file's columns."""
        added, removed = self.diff()
        if existing is not None and existing.type == "list":
            self.conn.execute(
                "DELETE FROM campaign.audience_members WHERE audience_id = %s", (self.audience_id,)
            )
        query, columns = self._file_rows()
        written = _write(self.conn, query, uri, _file_format("path", uri), aws_conn_id)
        return written.rows, added, removed, columns

    def _file_rows(self) -> tuple[sql.Composable, list[str]]:
        """The file's rows, one per member, sorted by key, and its columns."""
        columns = [self.pop.key] + [c for c in self.pop.columns if c != self.pop.key]
        one_per_key = sql.SQL(
            "SELECT DISTINCT ON (p.{key}::text) p.* FROM {rel} p WHERE p.{key} IS NOT NULL "
            "ORDER BY p.{key}::text, p::text"
        ).format(key=self.key, rel=self.rel)
        prev = self.previous
        if not (self.complete and prev.table and prev.key):
            query = sql.SQL("SELECT {} FROM ({}) d ORDER BY {}").format(
                _idents(columns, "d"),
                one_per_key,
                _key_order(sql.SQL("d.{}::text").format(self.key), self.key_type),
            )
            return query, columns
        # complete: the population, then the old file's rows for keys the population lacks
        columns += [c for c in prev.columns if c not in columns]
        fkey = sql.Identifier(prev.key)

        def pick(alias: str, have: list[str]) -> sql.Composable:
            return sql.SQL(", ").join(
                sql.SQL("{}.{}::text AS {}").format(
                    sql.Identifier(alias), sql.Identifier(c), sql.Identifier(c)
                )
                if c in have
                else sql.SQL("NULL::text AS {}").format(sql.Identifier(c))
                for c in columns
            )

        old = sql.SQL(
            "SELECT DISTINCT ON (f.{fkey}) f.* FROM {raw} f WHERE f.{fkey} IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM {rel} p WHERE p.{key}::text = f.{fkey}) ORDER BY f.{fkey}, f.{line}"
        ).format(
            fkey=fkey,
            raw=sql.Identifier(prev.table),
            rel=self.rel,
            key=self.key,
            line=sql.Identifier(LINE_COLUMN),
        )
        query = sql.SQL(
            "SELECT * FROM (SELECT {} FROM ({}) d UNION ALL SELECT {} FROM ({}) f) u ORDER BY {}"
        ).format(
            pick("d", self.pop.columns),
            one_per_key,
            pick("f", prev.columns),
            old,
            _key_order(sql.SQL("u.{}").format(self.key), self.key_type),
        )
        return query, columns

    def export_keys(self, target: str, path: str, key: str, aws_conn_id: str | None) -> WriteResult:
        """Write the members' keys, sorted, under a header line naming the key column."""
        if target == "list":
            members = sql.SQL(
                "SELECT member_key FROM campaign.audience_members WHERE audience_id = {}"
            ).format(sql.Literal(self.audience_id))
        else:
            members = self.new_keys
        query = sql.SQL("SELECT k.member_key AS {} FROM ({}) k ORDER BY {}").format(
            sql.Identifier(key), members, _key_order(sql.SQL("k.member_key"), self.key_type)
        )
        return _write(self.conn, query, path, "csv", aws_conn_id)


def _idents(names: Sequence[str], alias: str) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, n) for n in names)


def _write(
    conn: psycopg.Connection, query: sql.Composable, path: str, file_format: str, aws_conn_id: str | None
) -> WriteResult:
    """Stream ``query`` to ``path`` in ``file_format`` (gzipped for .gz), with a header line."""
    return write_query(
        conn,
        query,
        path,
        format="csv" if file_format == "tsv" else file_format,
        header=True,
        delimiter="\t" if file_format == "tsv" else None,
        aws_conn_id=aws_conn_id,
    )


def _file_format(option: str, path: str) -> str:
    """The format of a file audience's file, from its name."""
    fmt = infer_format(path) if _has_format(path) else ""
    if fmt not in FILE_FORMATS or (fmt == "parquet" and path.lower().endswith(".gz")):
        raise CampaignError(
            f"{option}={path!r}: name the file audience's file with its format: .csv or .tsv "
            "(optionally .gz), or .parquet."
        )
    return fmt


def _has_format(path: str) -> bool:
    try:
        infer_format(path)
    except CampaignError:
        return False
    return True


def _check_export_name(path: str) -> None:
    if not path.lower().endswith((".csv", ".csv.gz")):
        raise CampaignError(
            f"export_to={path!r}: the shared export is a CSV file; end the name with .csv (or .csv.gz "
            "for gzip)."
        )


def check_destination(option: str, path: str, aws_conn_id: str | None) -> None:
    """Raise naming ``option`` unless a file can be written at ``path``: before anything is written.

    Local: not a directory, and its directory exists or can be made under a writable one.
    S3: the bucket exists (a bucket the connection may not inspect is left to the upload).
    """
    if path.startswith("s3://"):
        bucket, _, key = path.removeprefix("s3://").partition("/")
        if not bucket or not key or key.endswith("/"):
            raise CampaignError(f"{option}={path!r}: an S3 path is s3://bucket/key (a file, not a folder).")
        check_bucket(option, path, bucket, aws_conn_id)
        return
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise CampaignError(
            f"{option}={path!r} is a directory; give a file path, e.g. {path.rstrip('/')}/keys.csv."
        )
    folder = Path(os.path.abspath(path)).parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CampaignError(
            f"{option}={path!r}: cannot write in {existing}; choose a writable directory or fix its "
            "permissions. Nothing was written."
        )
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CampaignError(
            f"{option}={path!r}: the existing file is read-only for this worker; fix its permissions."
        )


_VERSION_STAMP = r"\.v\d{8}T\d{12}Z"


def normalised_path(path: str) -> str:
    """One spelling per local file (absolute, ``.``/``..``/``//`` and symlinked folders resolved),
    so two audiences cannot share a file under two spellings; S3 keys are kept as given."""
    if path.startswith("s3://"):
        return path
    return os.path.realpath(os.path.abspath(path))


def _split_name(path: str) -> tuple[str, str, str]:
    """``(folder, stem, rest)``: ``/d/gold.csv.gz`` -> ``("/d", "gold", ".csv.gz")``."""
    folder, _, base = path.rpartition("/")
    stem, dot, rest = base.partition(".")
    return folder, stem, dot + rest


def versioned(path: str, audience_id: int) -> str:
    """The name a save writes ``path`` under: ``gold.csv.gz`` -> ``gold.a12.v20261202T050102123456Z.csv.gz``.

    Readers read the version the audiences row names, so a file is published by the commit that
    records it, never before; the audience's id in the name keeps its versions apart from any
    other audience's.
    """
    folder, stem, rest = _split_name(path)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("v%Y%m%dT%H%M%S%fZ")
    return f"{folder}{'/' if folder else ''}{stem}.a{audience_id}.{stamp}{rest}"


def _version_pattern(path: str, audience_id: int) -> tuple[str, re.Pattern[str]]:
    folder, stem, rest = _split_name(path)
    return folder, re.compile(re.escape(f"{stem}.a{audience_id}") + _VERSION_STAMP + re.escape(rest) + "$")


def pending_name(path: str) -> str:
    """Where an export is written before the commit: a hidden name beside it, same extension."""
    folder, stem, rest = _split_name(path)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{folder}{'/' if folder else ''}.{stem}.pending-{stamp}{rest}"


def publish_file(pending: str, final: str, aws_conn_id: str | None) -> None:
    """Move a file written under ``pending`` to ``final`` (a rename; on S3 a copy, then a delete)."""
    if pending.startswith("s3://"):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        bucket, _, key = pending.removeprefix("s3://").partition("/")
        to_bucket, _, to_key = final.removeprefix("s3://").partition("/")
        client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
        client.copy_object(Bucket=to_bucket, Key=to_key, CopySource={"Bucket": bucket, "Key": key})
        client.delete_object(Bucket=bucket, Key=key)
    else:
        os.replace(pending, final)


def remove_file(uri: str, aws_conn_id: str | None, log: Any) -> None:
    """Delete a file audience's version (a local path or s3://); a failure is only logged."""
    try:
        if uri.startswith("s3://"):
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            bucket, _, key = uri.removeprefix("s3://").partition("/")
            S3Hook(aws_conn_id=aws_conn_id).get_conn().delete_object(Bucket=bucket, Key=key)
        elif os.path.exists(uri):
            os.remove(uri)
    except Exception as exc:  # the save itself is done; an old version left behind is only space
        log.warning("could not remove %s (%s); remove it by hand", uri, exc)


def prune_versions(path: str, audience_id: int, *, keep: str, aws_conn_id: str | None, log: Any) -> None:
    """Remove this audience's versions of ``path`` other than ``keep`` (left by saves that died
    between their commit and this clean-up). Only names ``<stem>.a<id>.v<stamp><ext>`` directly in
    the folder of ``path`` match: never another audience's file, nor one in a sub-folder."""
    folder, pattern = _version_pattern(path, audience_id)
    try:
        if path.startswith("s3://"):
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            bucket, _, prefix = folder.removeprefix("s3://").partition("/")
            prefix = f"{prefix}/" if prefix else ""
            keys = (
                S3Hook(aws_conn_id=aws_conn_id).list_keys(bucket_name=bucket, prefix=prefix, delimiter="/")
                or []
            )
            stale = [
                f"s3://{bucket}/{k}"
                for k in keys
                if pattern.match(k[len(prefix) :]) and "/" not in k[len(prefix) :]
            ]
        else:
            where = folder or "."
            stale = (
                [os.path.join(where, n) for n in os.listdir(where) if pattern.match(n)]
                if os.path.isdir(where)
                else []
            )
    except Exception as exc:
        log.warning("could not list old versions of %s (%s)", path, exc)
        return
    for uri in stale:
        if uri != keep and os.path.normpath(uri) != os.path.normpath(keep):
            remove_file(uri, aws_conn_id, log)
