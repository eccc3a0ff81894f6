"""SaveAudienceOperator: list and file audiences, modes, updates, size history, exports, Asset events."""

from __future__ import annotations

import datetime as dt
import gzip
import re
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import Asset, AssetAlias
from airflow.sdk.exceptions import AirflowSkipException
from airflow.sdk.execution_time.context import OutletEventAccessors

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.save_audience import SaveAudienceOperator, converts_always
from airflow_campaign.operators.targeting import QueryOperator, ReadAudienceOperator
from airflow_campaign.population import Population
from tests.conftest import ids

MONDAY = dt.datetime(2026, 3, 2, 6, 30, tzinfo=dt.timezone.utc)


# ---- helpers -------------------------------------------------------------------------------


def save(scratch, context, task_id="save", run_id=None, ctx=None, **kwargs) -> dict[str, Any]:
    """Run a SaveAudienceOperator on the scratch database; ``ctx`` reuses a context (a retry)."""
    kwargs.setdefault("audience", "loyal")
    op = SaveAudienceOperator(task_id=task_id, campaign_conn_id=scratch.conn_id, **kwargs)
    ctx = ctx or run_context(context, task_id, run_id=run_id)
    return op.execute(ctx)


def run_context(context, task_id="save", run_id=None, logical_date=MONDAY) -> dict[str, Any]:
    ctx = context(task_id, run_id=run_id)
    ctx["logical_date"] = logical_date
    ctx["outlet_events"] = OutletEventAccessors()
    return ctx


def people(*keys: int) -> list[dict[str, int]]:
    return [{"id": k} for k in keys]


def members(db, name: str) -> list[int]:
    return [
        r[0]
        for r in db.execute(
            "SELECT m.member_key::bigint FROM campaign.audience_members m JOIN campaign.audiences a"
            " ON a.id = m.audience_id WHERE a.name = %s ORDER BY 1",
            (name,),
        )
    ]


def audience(db, name: str) -> dict[str, Any] | None:
    row = db.execute(
        "SELECT type, resource, key_column, file_uri, file_format, columns, row_count"
        " FROM campaign.audiences WHERE name = %s",
        (name,),
    ).fetchone()
    keys = ("type", "resource", "key_column", "file_uri", "file_format", "columns", "row_count")
    return dict(zip(keys, row, strict=True)) if row else None


def sizes(db, name: str) -> list[tuple]:
    """(size, added, removed, dag_id, run_id, task_id) of each save, oldest first."""
    return db.execute(
        "SELECT s.size, s.added, s.removed, s.dag_id, s.run_id, s.task_id FROM campaign.audience_sizes s"
        " JOIN campaign.audiences a ON a.id = s.audience_id WHERE a.name = %s ORDER BY s.updated_at, s.id",
        (name,),
    ).fetchall()


def snapshot(db) -> tuple:
    """Everything saved about audiences, to compare before and after a failed save."""
    return tuple(
        db.execute(
            f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
        ).fetchone()
        for table in ("campaign.audiences", "campaign.audience_members", "campaign.audience_sizes")
    )


def read_back(scratch, context, name: str, task_id: str = "read") -> list[int]:
    """The audience as ReadAudienceOperator reads it: the keys of its population."""
    out = ReadAudienceOperator(task_id=task_id, audience=name, campaign_conn_id=scratch.conn_id).execute(
        context(task_id)
    )
    return ids(scratch.db, out)


def query(scratch, context, where: str, task_id: str = "query") -> dict[str, Any]:
    return QueryOperator(task_id=task_id, where=where, campaign_conn_id=scratch.conn_id).execute(
        context(task_id)
    )


# ---- list audiences --------------------------------------------------------------------------


def test_create_list_audience_from_a_query(scratch, context):
    db = scratch.db
    pop = query(scratch, context, "loyalty_points >= 9000")
    expected = [
        r[0] for r in db.execute("SELECT id FROM campaign.profiles WHERE loyalty_points >= 9000 ORDER BY id")
    ]
    assert len(expected) > 100
    ctx = run_context(context)
    out = save(scratch, context, ctx=ctx, population=pop)
    assert out == {
        "audience": "loyal",
        "type": "list",
        "size": len(expected),
        "added": len(expected),
        "removed": 0,
    }
    assert members(db, "loyal") == expected
    assert audience(db, "loyal") == {
        "type": "list",
        "resource": "profiles",
        "key_column": "id",
        "file_uri": None,
        "file_format": None,
        "columns": None,
        "row_count": len(expected),
    }
    assert sizes(db, "loyal") == [(len(expected), len(expected), 0, "test_dag", ctx["run_id"], "save")]
    assert read_back(scratch, context, "loyal") == expected


def test_replace_makes_the_members_exactly_the_population(scratch, context):
    db = scratch.db
    save(scratch, context, run_id="r1", population=people(1, 2, 3, 4))
    out = save(scratch, context, run_id="r2", population=people(3, 4, 5))
    assert (out["size"], out["added"], out["removed"]) == (3, 1, 2)
    assert members(db, "loyal") == [3, 4, 5]
    assert [s[:3] for s in sizes(db, "loyal")] == [(4, 4, 0), (3, 1, 2)]
    assert [s[4] for s in sizes(db, "loyal")] == ["r1", "r2"]


def test_complete_adds_the_population_to_the_members(scratch, context):
    db = scratch.db
    save(scratch, context, run_id="r1", population=people(1, 2, 3))
    out = save(scratch, context, run_id="r2", population=people(3, 4, 5), update="complete")
    assert (out["size"], out["added"], out["removed"]) == (5, 2, 0)
    assert members(db, "loyal") == [1, 2, 3, 4, 5]
    assert read_back(scratch, context, "loyal") == [1, 2, 3, 4, 5]


def test_complete_on_a_new_audience_creates_it(scratch, context):
    out = save(scratch, context, population=people(7, 8), update="complete", audience="fresh")
    assert (out["size"], out["added"]) == (2, 2)
    assert members(scratch.db, "fresh") == [7, 8]


def test_seeded_vip_audience_can_be_completed(scratch, context):
    db = scratch.db
    before = members(db, "vip")
    outsider = db.execute("SELECT min(id) FROM campaign.profiles WHERE loyalty_points < 9500").fetchone()[0]
    out = save(scratch, context, audience="vip", population=people(before[0], outsider), update="complete")
    assert (out["size"], out["added"], out["removed"]) == (len(before) + 1, 1, 0)
    assert members(db, "vip") == sorted([*before, outsider])


def test_duplicate_and_null_keys_are_saved_once_and_skipped(scratch, context):
    rows = [{"id": 5}, {"id": 5}, {"id": None}, {"id": 6}]
    out = save(scratch, context, population=rows)
    assert (out["size"], out["added"]) == (2, 2)
    assert members(scratch.db, "loyal") == [5, 6]


def test_counts_and_sizes_follow_the_members_with_duplicate_and_null_keys(scratch, context):
    db = scratch.db
    save(scratch, context, run_id="r1", population=people(1, 2, 3, 4))
    replaced = [{"id": 3}, {"id": 3}, {"id": 5}, {"id": 5}, {"id": None}, {"id": 6}]
    out = save(scratch, context, run_id="r2", population=replaced)
    assert (out["size"], out["added"], out["removed"]) == (3, 2, 3)
    completed = [{"id": 6}, {"id": 7}, {"id": 7}, {"id": None}]
    out = save(scratch, context, run_id="r3", population=completed, update="complete")
    assert (out["size"], out["added"], out["removed"]) == (4, 1, 0)
    assert members(db, "loyal") == [3, 5, 6, 7]
    assert audience(db, "loyal")["row_count"] == 4
    assert [s[:3] for s in sizes(db, "loyal")] == [(4, 4, 0), (3, 2, 3), (4, 1, 0)]


def test_update_mode_updates_an_existing_audience(scratch, context):
    out = save(scratch, context, audience="vip", mode="update", population=people(1, 2))
    assert out["size"] == 2
    assert members(scratch.db, "vip") == [1, 2]


def test_update_mode_on_an_unknown_audience_fails_and_writes_nothing(scratch, context):
    before = snapshot(scratch.db)
    with pytest.raises(
        CampaignError,
        match=r"audience='vips' does not exist, and mode='update' only updates an existing audience "
        r"\(known audiences: \['do_not_contact', 'vip'\]\); fix the name, or use mode='create_or_update'",
    ):
        save(scratch, context, audience="vips", mode="update", population=people(1))
    assert snapshot(scratch.db) == before


def test_retry_of_the_same_run_leaves_the_state_of_one_clean_try(scratch, context):
    db = scratch.db
    save(scratch, context, run_id="r1", population=people(1, 2, 3, 4))
    ctx = run_context(context, run_id="r2")
    first = save(scratch, context, ctx=ctx, population=people(3, 4, 5))
    state = (members(db, "loyal"), sizes(db, "loyal"), audience(db, "loyal"))
    again = save(scratch, context, ctx=run_context(context, run_id="r2"), population=people(3, 4, 5))
    assert again == first == {"audience": "loyal", "type": "list", "size": 3, "added": 1, "removed": 2}
    assert (members(db, "loyal"), sizes(db, "loyal"), audience(db, "loyal")) == state
    assert len(sizes(db, "loyal")) == 2


def test_retry_with_a_changed_population_replaces_its_history_row(scratch, context):
    db = scratch.db
    save(scratch, context, run_id="r1", population=people(1, 2))
    save(scratch, context, run_id="r1", population=people(1, 2, 3))
    assert members(db, "loyal") == [1, 2, 3]
    assert [s[:3] for s in sizes(db, "loyal")] == [(3, 1, 0)]


def test_two_tasks_of_one_run_each_record_a_save(scratch, context):
    db = scratch.db
    save(scratch, context, task_id="first", run_id="r1", population=people(1, 2))
    save(scratch, context, task_id="second", run_id="r1", population=people(3), update="complete")
    assert [(s[0], s[5]) for s in sizes(db, "loyal")] == [(2, "first"), (3, "second")]


# ---- create_unique ---------------------------------------------------------------------------


def test_create_unique_appends_the_run_date_and_time(scratch, context):
    db = scratch.db
    ctx = run_context(context, run_id="r1", logical_date=MONDAY)
    out = save(scratch, context, ctx=ctx, audience="weekly", mode="create_unique", population=people(1, 2))
    assert out["audience"] == "weekly_20260302T063000"
    assert members(db, "weekly_20260302T063000") == [1, 2]
    # a retry of the run saves into the same audience
    retry = run_context(context, run_id="r1", logical_date=MONDAY)
    again = save(
        scratch, context, ctx=retry, audience="weekly", mode="create_unique", population=people(1, 2)
    )
    assert again == out
    assert len(sizes(db, "weekly_20260302T063000")) == 1
    # the next run makes a new audience
    later = run_context(context, run_id="r2", logical_date=MONDAY + dt.timedelta(days=7))
    out2 = save(scratch, context, ctx=later, audience="weekly", mode="create_unique", population=people(3))
    assert out2["audience"] == "weekly_20260309T063000"
    assert members(db, "weekly_20260302T063000") == [1, 2]
    assert members(db, "weekly_20260309T063000") == [3]


def test_create_unique_without_logical_date_uses_run_after(scratch, context):
    ctx = run_context(context, logical_date=None)
    ctx["dag_run"] = type(
        "DagRun", (), {"run_after": dt.datetime(2026, 5, 1, 12, 0, 5, tzinfo=dt.timezone.utc)}
    )()
    out = save(scratch, context, ctx=ctx, audience="adhoc", mode="create_unique", population=people(4))
    assert out["audience"] == "adhoc_20260501T120005"


def test_create_unique_refuses_an_audience_another_run_made(scratch, context):
    db = scratch.db
    save(scratch, context, run_id="r1", audience="weekly", mode="create_unique", population=people(1))
    before = snapshot(db)
    with pytest.raises(
        CampaignError,
        match=r"mode='create_unique': audience 'weekly_20260302T063000' already exists and was not made by "
        r"this run \(test_dag, r2\)",
    ):
        save(scratch, context, run_id="r2", audience="weekly", mode="create_unique", population=people(2))
    assert snapshot(db) == before


# ---- resources and types ---------------------------------------------------------------------


@pytest.fixture
def customers(scratch):
    """A user resource ``crm.customers`` keyed by customer_no."""
    scratch.db.execute("CREATE SCHEMA crm")
    scratch.db.execute("CREATE TABLE crm.customers (customer_no bigint PRIMARY KEY, email text)")
    scratch.db.execute(
        "INSERT INTO crm.customers SELECT g, 'c' || g || '@example.com' FROM generate_series(100, 120) g"
    )
    return lambda *keys: Population.inline(
        [{"customer_no": k} for k in keys], key="customer_no", resource="crm.customers"
    )  # declared in code: a dict may only carry rows of profiles (or of no resource)


def test_complete_with_a_population_of_another_resource_fails(scratch, context, customers):
    save(scratch, context, population=people(1, 2))
    before = snapshot(scratch.db)
    with pytest.raises(
        CampaignError,
        match=r"update='complete': audience 'loyal' holds keys of resource 'profiles' \(key 'id'\) and the "
        r"population is of resource 'crm.customers' \(key 'customer_no'\).*update='replace'",
    ):
        save(scratch, context, population=customers(100, 101), update="complete")
    assert snapshot(scratch.db) == before


def test_replace_may_change_the_resource(scratch, context, customers):
    db = scratch.db
    save(scratch, context, run_id="r1", population=people(1, 2))
    out = save(scratch, context, run_id="r2", population=customers(100, 105, 999))
    assert (out["size"], out["added"], out["removed"]) == (3, 3, 2)
    row = audience(db, "loyal")
    assert (row["resource"], row["key_column"]) == ("crm.customers", "customer_no")
    # read back as the new resource: 999 is not a customer, so it is left out
    assert read_back(scratch, context, "loyal") == [100, 105]


def test_integer_keys_are_saved_into_a_bigint_resource(scratch, context):
    db = scratch.db
    db.execute("CREATE TABLE public.small_keys (id integer, note text)")
    db.execute("INSERT INTO public.small_keys VALUES (12, 'a'), (3, 'b'), (12, 'c'), (NULL, 'd')")
    pop = Population.from_table("public.small_keys", key="id", resource="profiles", trusted=True)
    out = save(scratch, context, population=pop)
    assert (out["size"], out["added"], out["removed"]) == (2, 2, 0)
    assert read_back(scratch, context, "loyal") == [3, 12]


def test_any_key_is_saved_into_a_text_keyed_resource(scratch, context):
    db = scratch.db
    db.execute("CREATE SCHEMA crm")
    db.execute("CREATE TABLE crm.accounts (code varchar(8) PRIMARY KEY)")
    db.execute("INSERT INTO crm.accounts VALUES ('7'), ('42')")
    pop = Population.inline([{"code": 42}, {"code": 7}, {"code": 9}], key="code", resource="crm.accounts")
    out = save(scratch, context, population=pop)
    assert (out["size"], out["added"]) == (3, 3)
    assert sorted(
        r[0]
        for r in db.execute(
            "SELECT member_key FROM campaign.audience_members m JOIN"
            " campaign.audiences a ON a.id = m.audience_id WHERE a.name = 'loyal'"
        )
    ) == ["42", "7", "9"]


@pytest.mark.parametrize(
    ("source", "target", "always"),
    [
        ("bigint", "bigint", True),
        ("integer", "bigint", True),
        ("smallint", "integer", True),
        ("bigint", "numeric", True),
        ("bigint", "text", True),
        ("uuid", "character varying(20)", True),
        ("uuid", "uuid", True),
        ("bigint", "integer", False),
        ("numeric", "bigint", False),
        ("integer", "numeric(5,0)", False),
        ("text", "bigint", False),
        ("text", "uuid", False),
        (None, "bigint", False),
    ],
)
def test_the_key_check_is_skipped_only_for_conversions_that_cannot_fail(source, target, always):
    assert converts_always(source, target) is always


def test_population_of_no_resource_is_refused(scratch, context):
    pop = Population.inline([{"email": "a@example.com"}], key="email", resource=None).to_dict()
    before = snapshot(scratch.db)
    with pytest.raises(CampaignError, match=r"population: its rows belong to no resource"):
        save(scratch, context, population=pop)
    assert snapshot(scratch.db) == before


# ---- empty populations -----------------------------------------------------------------------


def test_empty_population_with_replace_empties_the_audience(scratch, context):
    db = scratch.db
    save(scratch, context, run_id="r1", population=people(1, 2))
    out = save(scratch, context, run_id="r2", population=[])
    assert (out["size"], out["added"], out["removed"]) == (0, 0, 2)
    assert members(db, "loyal") == []
    assert audience(db, "loyal")["row_count"] == 0


def test_empty_population_with_complete_changes_nothing_but_is_recorded(scratch, context):
    db = scratch.db
    save(scratch, context, run_id="r1", population=people(1, 2))
    out = save(scratch, context, run_id="r2", population=[{"id": None}], update="complete")
    assert (out["size"], out["added"], out["removed"]) == (2, 0, 0)
    assert len(sizes(db, "loyal")) == 2


@pytest.mark.parametrize(
    ("on_empty", "error"), [("skip", AirflowSkipException), ("fail", CampaignError)], ids=["skip", "fail"]
)
def test_empty_population_with_on_empty_skip_or_fail_leaves_the_audience(scratch, context, on_empty, error):
    save(scratch, context, run_id="r1", population=people(1, 2))
    before = snapshot(scratch.db)
    with pytest.raises(error, match="the population is empty"):
        save(scratch, context, run_id="r2", population=[], on_empty=on_empty)
    assert snapshot(scratch.db) == before
    assert members(scratch.db, "loyal") == [1, 2]


# ---- names and options -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "with space", "../etc", "_leading", "x" * 101, "é", "trailing\n", "a?b#c"]
)
def test_invalid_names_are_refused_when_the_dag_is_parsed(name):
    with pytest.raises(CampaignError, match=r"is not a valid audience name"):
        SaveAudienceOperator(task_id="t", population=[], audience=name)


def test_a_templated_name_is_checked_when_rendered(scratch, context):
    before = snapshot(scratch.db)
    op = SaveAudienceOperator(
        task_id="t", population=people(1), audience="{{ params.name }}", campaign_conn_id=scratch.conn_id
    )
    op.audience = "bad name"  # as rendered
    with pytest.raises(CampaignError, match=r"audience='bad name' is not a valid audience name"):
        op.execute(run_context(context, "t"))
    assert snapshot(scratch.db) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"mode": "upsert"},
            r"mode='upsert' is not valid; use one of \['create_or_update', 'update', 'create_unique'\]",
        ),
        ({"update": "merge"}, r"update='merge' is not valid; use one of \['replace', 'complete'\]"),
        ({"type": "table"}, r"type='table' is not valid; use one of \['list', 'file'\]"),
        ({"type": "list", "path": "/tmp/a.csv"}, r"path='/tmp/a.csv': a list audience keeps its members"),
        (
            {"path": "/tmp/a.xlsx"},
            r"path='/tmp/a.xlsx': name the file audience's file with its format: .csv or .tsv",
        ),
        ({"path": "/tmp/a.parquet.gz"}, r"path='/tmp/a.parquet.gz': name the file audience's file"),
        ({"path": "/tmp/a.jsonl"}, r"path='/tmp/a.jsonl': name the file audience's file"),
    ],
)
def test_options_are_checked_when_the_dag_is_parsed(kwargs, message):
    with pytest.raises(CampaignError, match=message):
        SaveAudienceOperator(task_id="t", population=[], audience="a", **kwargs)


# ---- Asset events ----------------------------------------------------------------------------


def test_static_name_declares_its_asset_and_puts_the_size_in_the_event(scratch, context):
    op = SaveAudienceOperator(
        task_id="save", population=people(1, 2, 3), audience="loyal", campaign_conn_id=scratch.conn_id
    )
    asset = Asset("campaign://audience/loyal")
    assert asset in op.outlets
    ctx = run_context(context)
    op.execute(ctx)
    assert ctx["outlet_events"][asset].extra == {
        "audience": "loyal",
        "type": "list",
        "size": 3,
        "added": 3,
        "removed": 0,
        "resource": "profiles",
    }


def test_create_unique_emits_through_an_alias(scratch, context):
    op = SaveAudienceOperator(
        task_id="save",
        population=people(1),
        audience="weekly",
        mode="create_unique",
        campaign_conn_id=scratch.conn_id,
    )
    alias = AssetAlias("campaign_audiences:weekly")
    assert op.outlets == [alias]
    ctx = run_context(context)
    op.execute(ctx)
    (event,) = ctx["outlet_events"][alias].asset_alias_events
    assert event.dest_asset_key.uri == "campaign://audience/weekly_20260302T063000"
    assert event.extra["size"] == 1


# ---- file audiences --------------------------------------------------------------------------


def lines(path) -> list[str]:
    data = path.read_bytes()
    if str(path).endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8").splitlines()


def published(db, name: str = "loyal") -> Path:
    """The file a file audience's readers read: the version its row names."""
    return Path(audience(db, name)["file_uri"])


def versions(path: Path) -> list[str]:
    """The versions of a file audience's ``path`` on disk (a save writes ``stem.v<UTC stamp>.ext``)."""
    stem, _, rest = path.name.partition(".")
    return sorted(p.name for p in path.parent.glob(f"{stem}.a*.v*.{rest}"))


def s3_lines(s3, bucket: str, key: str) -> list[str]:
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    if key.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8").splitlines()


def test_file_audience_writes_the_population_and_registers_it(scratch, context, tmp_path):
    db = scratch.db
    path = tmp_path / "loyal.csv"
    pop = QueryOperator(
        task_id="q", where="id IN (12, 3, 100)", columns=["email"], campaign_conn_id=scratch.conn_id
    ).execute(context("q"))
    out = save(scratch, context, population=pop, path=str(path))
    assert out == {
        "audience": "loyal",
        "type": "file",
        "size": 3,
        "added": 3,
        "removed": 0,
        "uri": str(published(db)),
        "path": str(path),
    }
    assert re.fullmatch(r"loyal\.a\d+\.v\d{8}T\d{12}Z\.csv", published(db).name)
    assert not path.exists(), "the file is written under its version's name, never at the bare path"
    emails = dict(db.execute("SELECT id, email FROM campaign.profiles WHERE id IN (3, 12, 100)").fetchall())
    assert lines(published(db)) == ["id,email", *(f"{i},{emails[i]}" for i in (3, 12, 100))]
    assert audience(db, "loyal") == {
        "type": "file",
        "resource": "profiles",
        "key_column": "id",
        "file_uri": str(published(db)),
        "file_format": "csv",
        "columns": ["id", "email"],
        "row_count": 3,
    }
    assert members(db, "loyal") == []
    assert [s[:3] for s in sizes(db, "loyal")] == [(3, 3, 0)]
    assert read_back(scratch, context, "loyal") == [3, 12, 100]


@pytest.mark.parametrize("name", ["a.csv.gz", "a.tsv", "a.tsv.gz", "a.parquet"])
def test_file_audience_formats_round_trip(scratch, context, tmp_path, name):
    path = tmp_path / name
    rows = [{"id": 9, "score": 0.5}, {"id": 2, "score": 1.5}, {"id": 9, "score": 0.5}]
    out = save(scratch, context, population=rows, path=str(path))
    assert out["size"] == 2
    assert audience(scratch.db, "loyal")["file_format"] == name.split(".")[1]
    assert read_back(scratch, context, "loyal") == [2, 9]
    if name == "a.tsv":
        assert lines(published(scratch.db)) == ["id\tscore", "2\t1.5", "9\t0.5"]


@pytest.mark.parametrize("name", ["a.csv", "a.parquet"])
def test_an_emptied_file_audience_reads_back_empty(scratch, context, tmp_path, name):
    path = tmp_path / name
    save(scratch, context, run_id="r1", population=people(1, 2), path=str(path))
    out = save(scratch, context, run_id="r2", population=[])
    assert (out["size"], out["added"], out["removed"]) == (0, 0, 2)
    if name == "a.csv":
        assert lines(published(scratch.db)) == ["id"]
    assert versions(path) == [published(scratch.db).name], "the first save's version was pruned"
    assert read_back(scratch, context, "loyal") == []


def test_file_audience_on_s3(scratch, context, s3):
    s3.create_bucket(Bucket="aud-files")
    uri = "s3://aud-files/audiences/loyal.csv.gz"
    out = save(scratch, context, population=people(20, 3), path=uri)
    assert (out["path"], out["size"]) == (uri, 2)
    assert re.fullmatch(r"s3://aud-files/audiences/loyal\.a\d+\.v\d{8}T\d{12}Z\.csv\.gz", out["uri"])
    assert s3_lines(s3, "aud-files", out["uri"].removeprefix("s3://aud-files/")) == ["id", "3", "20"]
    assert read_back(scratch, context, "loyal") == [3, 20]


def test_replace_rewrites_the_file_audience_in_place(scratch, context, tmp_path):
    path = tmp_path / "loyal.csv"
    save(scratch, context, run_id="r1", population=people(1, 2, 3), path=str(path))
    first = published(scratch.db)
    out = save(scratch, context, run_id="r2", population=people(3, 4))
    assert (out["type"], out["path"], out["size"], out["added"], out["removed"]) == (
        "file",
        str(path),
        2,
        1,
        2,
    )
    assert out["uri"] == str(published(scratch.db)) != str(first)
    assert lines(published(scratch.db)) == ["id", "3", "4"]
    assert versions(path) == [published(scratch.db).name], "the replaced version is removed after the commit"


def test_complete_adds_to_a_file_audience_keeping_its_rows(scratch, context, tmp_path):
    path = tmp_path / "loyal.csv"
    save(
        scratch,
        context,
        run_id="r1",
        population=[{"id": 1, "note": "a"}, {"id": 2, "note": "b"}],
        path=str(path),
    )
    out = save(
        scratch,
        context,
        run_id="r2",
        population=[{"id": 2, "tier": "gold"}, {"id": 10, "tier": "new"}],
        update="complete",
    )
    assert (out["size"], out["added"], out["removed"]) == (3, 1, 0)
    # the population's rows, then the old rows it lacks; columns of both; numeric key order
    assert lines(published(scratch.db)) == ["id,tier,note", "1,,a", "2,gold,", "10,new,"]
    assert audience(scratch.db, "loyal")["columns"] == ["id", "tier", "note"]
    assert read_back(scratch, context, "loyal") == [1, 2, 10]


def test_complete_needs_the_old_file(scratch, context, tmp_path):
    path = tmp_path / "loyal.csv"
    save(scratch, context, run_id="r1", population=people(1), path=str(path))
    published(scratch.db).unlink()
    before = snapshot(scratch.db)
    with pytest.raises(
        CampaignError, match=r"update='complete': the file of audience 'loyal' .* cannot be read"
    ):
        save(scratch, context, run_id="r2", population=people(2), update="complete")
    assert snapshot(scratch.db) == before
    assert versions(path) == []


def test_replace_when_the_old_file_is_gone_counts_its_members_removed(scratch, context, tmp_path):
    path = tmp_path / "loyal.csv"
    save(scratch, context, run_id="r1", population=people(1, 2), path=str(path))
    published(scratch.db).unlink()
    out = save(scratch, context, run_id="r2", population=people(2, 3))
    assert (out["size"], out["added"], out["removed"]) == (2, 2, 2)
    assert lines(published(scratch.db)) == ["id", "2", "3"]


def test_replace_turns_a_list_audience_into_a_file_audience_and_back(scratch, context, tmp_path):
    db = scratch.db
    path = tmp_path / "loyal.csv"
    save(scratch, context, run_id="r1", population=people(1, 2, 3))
    out = save(scratch, context, run_id="r2", population=people(2, 3, 4), type="file", path=str(path))
    assert (out["type"], out["size"], out["added"], out["removed"]) == ("file", 3, 1, 1)
    assert members(db, "loyal") == []
    assert lines(published(db)) == ["id", "2", "3", "4"]
    out = save(scratch, context, run_id="r3", population=people(4, 5), type="list")
    assert (out["type"], out["size"], out["added"], out["removed"]) == ("list", 2, 1, 2)
    assert "uri" not in out
    row = audience(db, "loyal")
    assert (row["type"], row["file_uri"], row["file_format"]) == ("list", None, None)
    assert members(db, "loyal") == [4, 5]
    assert versions(path) == []  # the file no row names any more is removed after the commit


def test_complete_with_another_type_fails_naming_both(scratch, context, tmp_path):
    save(scratch, context, population=people(1, 2))
    before = snapshot(scratch.db)
    path = tmp_path / "loyal.csv"
    with pytest.raises(
        CampaignError,
        match=r"update='complete': audience 'loyal' is a list audience and path='.*loyal.csv' saves a file "
        r"audience; .*use update='replace' to change its type",
    ):
        save(scratch, context, population=people(3), update="complete", path=str(path))
    assert snapshot(scratch.db) == before
    assert not path.exists()


def test_a_file_audience_needs_a_path(scratch, context):
    before = snapshot(scratch.db)
    with pytest.raises(
        CampaignError, match=r"path: audience 'loyal' is saved as a file audience, so give path="
    ):
        save(scratch, context, population=people(1), type="file")
    assert snapshot(scratch.db) == before


def test_two_audiences_cannot_share_a_file(scratch, context, tmp_path):
    path = tmp_path / "weekly.csv"
    ctx = run_context(context, run_id="r1", logical_date=MONDAY)
    save(
        scratch,
        context,
        ctx=ctx,
        audience="weekly",
        mode="create_unique",
        population=people(1),
        path=str(path),
    )
    before = (snapshot(scratch.db), versions(path))
    later = run_context(context, run_id="r2", logical_date=MONDAY + dt.timedelta(days=7))
    with pytest.raises(
        CampaignError, match=r"path='.*weekly.csv' is already the file of audience 'weekly_20260302T063000'"
    ):
        save(
            scratch,
            context,
            ctx=later,
            audience="weekly",
            mode="create_unique",
            population=people(2),
            path=str(path),
        )
    assert (snapshot(scratch.db), versions(path)) == before


def test_unwritable_path_fails_before_anything_is_written(scratch, context, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    before = snapshot(scratch.db)
    with pytest.raises(CampaignError, match=r"path='.*not_a_dir/loyal.csv': cannot write in .*not_a_dir"):
        save(scratch, context, population=people(1), path=str(blocker / "loyal.csv"))
    assert snapshot(scratch.db) == before


# ---- export ----------------------------------------------------------------------------------


def test_export_writes_sorted_keys_under_a_header(scratch, context, tmp_path):
    export = tmp_path / "shared" / "loyal_keys.csv"
    out = save(scratch, context, population=people(100, 2, 10, 2), export_to=str(export))
    assert out["export"] == str(export)
    assert export.read_bytes() == b"id\n2\n10\n100\n"


def test_export_after_complete_has_every_member(scratch, context, tmp_path):
    export = tmp_path / "keys.csv"
    save(scratch, context, run_id="r1", population=people(5, 1))
    save(scratch, context, run_id="r2", population=people(3), update="complete", export_to=str(export))
    assert lines(export) == ["id", "1", "3", "5"]


def test_export_of_a_file_audience(scratch, context, tmp_path):
    export = tmp_path / "keys.csv.gz"
    save(
        scratch,
        context,
        population=[{"id": 7, "x": 1}, {"id": 4, "x": 2}],
        path=str(tmp_path / "a.parquet"),
        export_to=str(export),
    )
    assert lines(export) == ["id", "4", "7"]


def test_export_of_text_keys_is_in_byte_order(scratch, context, customers, tmp_path):
    scratch.db.execute("CREATE TABLE crm.partners (code text PRIMARY KEY)")
    scratch.db.execute("INSERT INTO crm.partners VALUES ('b'), ('B'), ('a,1'), ('é')")
    pop = Population.inline(
        [{"code": c} for c in ("é", "b", "B", "a,1")], key="code", resource="crm.partners"
    )
    export = tmp_path / "partners.csv"
    save(scratch, context, population=pop, audience="partners", export_to=str(export))
    assert lines(export) == ["code", "B", '"a,1"', "b", "é"]
    assert sorted(read_back(scratch, context, "partners")) == sorted(["B", "a,1", "b", "é"])


def test_export_to_s3(scratch, context, s3):
    s3.create_bucket(Bucket="shared-audiences")
    out = save(scratch, context, population=people(3, 1), export_to="s3://shared-audiences/loyal/keys.csv")
    assert out["export"] == "s3://shared-audiences/loyal/keys.csv"
    assert s3_lines(s3, "shared-audiences", "loyal/keys.csv") == ["id", "1", "3"]


def test_export_to_a_missing_bucket_fails_before_anything_is_written(scratch, context, s3, tmp_path):
    path = tmp_path / "loyal.csv"
    save(scratch, context, run_id="r1", population=people(1), path=str(path))
    before = (snapshot(scratch.db), versions(path))
    with pytest.raises(
        CampaignError,
        match=r"export_to='s3://no-such-bucket/keys.csv': the bucket 'no-such-bucket' does not exist",
    ):
        save(scratch, context, run_id="r2", population=people(2), export_to="s3://no-such-bucket/keys.csv")
    assert (snapshot(scratch.db), versions(path)) == before


def test_export_to_an_unwritable_path_fails_before_anything_is_written(scratch, context, tmp_path):
    save(scratch, context, run_id="r1", population=people(1, 2))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    before = snapshot(scratch.db)
    with pytest.raises(CampaignError, match=r"export_to='.*file/keys.csv': cannot write in"):
        save(scratch, context, run_id="r2", population=people(3), export_to=str(blocker / "keys.csv"))
    folder = tmp_path / "keys.csv"
    folder.mkdir()
    with pytest.raises(CampaignError, match=r"export_to='.*keys.csv' is a directory"):
        save(scratch, context, run_id="r2", population=people(3), export_to=str(folder))
    assert snapshot(scratch.db) == before
    assert members(scratch.db, "loyal") == [1, 2]


def test_export_must_be_a_csv_file():
    with pytest.raises(
        CampaignError, match=r"export_to='/tmp/keys.parquet': the shared export is a CSV file"
    ):
        SaveAudienceOperator(task_id="t", population=[], audience="a", export_to="/tmp/keys.parquet")


def test_a_file_audience_is_the_asset_event_uri(scratch, context, tmp_path):
    ctx = run_context(context)
    op = SaveAudienceOperator(
        task_id="save",
        population=people(1),
        audience="loyal",
        path=str(tmp_path / "l.csv"),
        export_to=str(tmp_path / "k.csv"),
        campaign_conn_id=scratch.conn_id,
    )
    op.execute(ctx)
    extra = ctx["outlet_events"][Asset("campaign://audience/loyal")].extra
    assert (extra["uri"], extra["export"], extra["size"]) == (
        str(published(scratch.db)),
        str(tmp_path / "k.csv"),
        1,
    )


# ---- retries and failures --------------------------------------------------------------------


def test_retry_of_a_file_audience_leaves_the_state_of_one_clean_try(scratch, context, tmp_path):
    db = scratch.db
    path, export = tmp_path / "loyal.csv", tmp_path / "keys.csv"
    save(scratch, context, run_id="r1", population=people(1, 2), path=str(path))
    kwargs = {"population": people(2, 3, 4), "export_to": str(export)}
    first = save(scratch, context, ctx=run_context(context, run_id="r2"), **kwargs)

    def state():
        row = {k: v for k, v in audience(db, "loyal").items() if k != "file_uri"}
        return lines(published(db)), lines(export), sizes(db, "loyal"), row, len(versions(path))

    before = state()
    again = save(scratch, context, ctx=run_context(context, run_id="r2"), **kwargs)
    assert {k: v for k, v in again.items() if k != "uri"} == {k: v for k, v in first.items() if k != "uri"}
    assert (first["size"], first["added"], first["removed"]) == (3, 2, 1)
    assert state() == before


def test_a_failure_while_writing_rolls_back_and_the_retry_completes(scratch, context, tmp_path, monkeypatch):
    """The export fails after the members were written: nothing is committed; the retry saves."""
    from airflow_campaign.operators import save_audience

    db = scratch.db
    save(scratch, context, run_id="r1", population=people(1, 2))
    before = snapshot(db)
    export = tmp_path / "keys.csv"
    real = save_audience.write_query

    def flaky(conn, query, path, **options):
        if Path(path).parent == export.parent and Path(path).name.startswith(".keys.pending-"):
            raise OSError("disk full")
        return real(conn, query, path, **options)

    monkeypatch.setattr(save_audience, "write_query", flaky)
    with pytest.raises(OSError, match="disk full"):
        save(scratch, context, run_id="r2", population=people(2, 3), export_to=str(export))
    assert snapshot(db) == before
    assert not export.exists()
    monkeypatch.setattr(save_audience, "write_query", real)
    out = save(scratch, context, run_id="r2", population=people(2, 3), export_to=str(export))
    assert (out["size"], out["added"], out["removed"]) == (2, 1, 1)
    assert members(db, "loyal") == [2, 3]
    assert [s[:3] for s in sizes(db, "loyal")] == [(2, 2, 0), (2, 1, 1)]
    assert lines(export) == ["id", "2", "3"]
