"""UpdateDataOperator: upsert, insert, update and delete by keys, fields, rejects, duplicates, batches."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.targeting import QueryOperator
from airflow_campaign.operators.update_data import UpdateDataOperator
from airflow_campaign.population import Population
from tests.conftest import count


def update(scratch, context, task_id="update", run_id=None, **kwargs):
    op = UpdateDataOperator(task_id=task_id, campaign_conn_id=scratch.conn_id, **kwargs)
    ctx = context(task_id, run_id=run_id)
    return op.execute(ctx), ctx


def profile(db, pid, *columns):
    cols = ", ".join(columns or ("loyalty_points",))
    return db.execute(f"SELECT {cols} FROM campaign.profiles WHERE id = %s", (pid,)).fetchone()


def snapshot(db, table="campaign.profiles"):
    return db.execute(
        f"SELECT md5(string_agg(t::text, '|' ORDER BY t::text)), count(*) FROM {table} t"
    ).fetchone()


def test_upsert_writes_only_what_changes_and_inserts_the_rest(scratch, context):
    db = scratch.db
    db.execute("UPDATE campaign.profiles SET updated_at = '2020-01-01' WHERE id <= 3")
    points = {pid: profile(db, pid, "loyalty_points", "first_name") for pid in (1, 2, 3)}
    rows = [
        {"id": 1, "loyalty_points": points[1][0] + 10, "first_name": points[1][1]},  # points change
        {"id": 2, "loyalty_points": points[2][0], "first_name": points[2][1]},  # same values: not written
        {"id": 3, "loyalty_points": points[3][0], "first_name": "Zoë"},  # first_name changes
        {"id": 900001, "loyalty_points": 5, "first_name": "New"},  # inserted
    ]
    result, _ = update(scratch, context, population=Population.inline(rows))
    assert {
        k: result[k] for k in ("inserted", "updated", "unchanged", "deleted", "unmatched", "rejected")
    } == {
        "inserted": 1,
        "updated": 2,
        "unchanged": 1,
        "deleted": 0,
        "unmatched": 0,
        "rejected": 0,
    }
    assert result["table"] == "campaign.profiles"
    assert profile(db, 1)[0] == points[1][0] + 10
    assert profile(db, 3, "first_name")[0] == "Zoë"
    assert profile(db, 900001, "loyalty_points", "first_name") == (5, "New")
    # updated_at moves only on the rows written
    stamps = dict(
        db.execute("SELECT id, updated_at > '2021-01-01' FROM campaign.profiles WHERE id <= 3").fetchall()
    )
    assert stamps == {1: True, 2: False, 3: True}

    # the same rows again change nothing
    again, _ = update(scratch, context, task_id="again", population=Population.inline(rows))
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 4)


def test_a_staging_population_round_trip_and_xcom_size(scratch, context):
    db = scratch.db
    pop = QueryOperator(
        task_id="fr", campaign_conn_id=scratch.conn_id, where="country = 'FR'", columns=["loyalty_points"]
    ).execute(context("fr"))
    db.execute(f"UPDATE {pop['table']} SET loyalty_points = loyalty_points + 1 WHERE id % 2 = 0")
    before = count(db, "SELECT sum(loyalty_points) FROM campaign.profiles")
    even = count(db, f"SELECT count(*) FROM {pop['table']} WHERE id % 2 = 0")
    result, _ = update(scratch, context, population=pop)
    assert (result["updated"], result["unchanged"], result["inserted"]) == (even, pop["count"] - even, 0)
    assert count(db, "SELECT sum(loyalty_points) FROM campaign.profiles") == before + even
    assert result["population"] == pop


def test_insert_skips_rows_that_reconcile(scratch, context):
    db = scratch.db
    before = profile(db, 1, "first_name")
    rows = [{"id": 1, "first_name": "Changed"}, {"id": 900002, "first_name": "Added"}]
    result, _ = update(scratch, context, population=Population.inline(rows), operation="insert")
    assert (result["inserted"], result["unchanged"], result["updated"]) == (1, 1, 0)
    assert profile(db, 1, "first_name") == before
    assert profile(db, 900002, "first_name") == ("Added",)


def test_insert_without_keys_into_a_log_table(scratch, context):
    db = scratch.db
    db.execute("CREATE TABLE public.visits (profile_id bigint, page text, seen_at timestamptz DEFAULT now())")
    rows = [{"profile_id": 1, "page": "/a"}, {"profile_id": 1, "page": "/a"}]
    result, _ = update(
        scratch,
        context,
        population=Population.inline(rows, key="profile_id", resource=None),
        table="public.visits",
        operation="insert",
    )
    assert result["inserted"] == 2
    assert count(db, "SELECT count(*) FROM public.visits WHERE seen_at IS NOT NULL") == 2


def test_update_touches_existing_rows_only(scratch, context):
    db = scratch.db
    rows = [{"id": 4, "last_name": "Updated"}, {"id": 900003, "last_name": "Nobody"}]
    result, _ = update(scratch, context, population=Population.inline(rows), operation="update")
    assert (result["updated"], result["unmatched"], result["inserted"], result["unchanged"]) == (1, 1, 0, 0)
    assert profile(db, 4, "last_name") == ("Updated",)
    assert profile(db, 900003) is None


def test_delete_removes_the_rows_that_reconcile(scratch, context):
    db = scratch.db
    total = count(db, "SELECT count(*) FROM campaign.profiles")
    rows = [{"id": 5}, {"id": 6}, {"id": 900004}]
    result, _ = update(scratch, context, population=Population.inline(rows), operation="delete")
    assert (result["deleted"], result["unmatched"]) == (2, 1)
    assert count(db, "SELECT count(*) FROM campaign.profiles") == total - 2
    assert profile(db, 5) is None


def test_explicit_fields_expressions_and_per_field_conditions(scratch, context):
    db = scratch.db
    db.execute("UPDATE campaign.profiles SET loyalty_points = 100, first_name = 'Ann' WHERE id IN (7, 8)")
    rows = [{"id": 7, "points": 50, "name": "ann"}, {"id": 8, "points": 150, "name": "bob"}]
    result, _ = update(
        scratch,
        context,
        population=Population.inline(rows),
        operation="update",
        fields={
            "loyalty_points": {"value": "points", "when": "src.points > dest.loyalty_points"},
            "first_name": "initcap(src.name)",
        },
    )
    assert result["updated"] == 1  # row 7: points lower (kept) and the name already 'Ann'
    assert profile(db, 7, "loyalty_points", "first_name") == (100, "Ann")
    assert profile(db, 8, "loyalty_points", "first_name") == (150, "Bob")


def test_keys_by_mapping_into_a_table_without_a_unique_index(scratch, context):
    db = scratch.db
    db.execute("CREATE TABLE public.scores (region text, mail text, score int, updated_at timestamptz)")
    db.execute("INSERT INTO public.scores VALUES ('eu', 'a@x.org', 1, NULL), ('us', 'a@x.org', 2, NULL)")
    rows = [
        {"zone": "eu", "email": "a@x.org", "score": 10},
        {"zone": "us", "email": "a@x.org", "score": 2},
        {"zone": "eu", "email": "b@x.org", "score": 3},
    ]
    result, _ = update(
        scratch,
        context,
        population=Population.inline(rows, key="email", resource=None),
        table="public.scores",
        keys={"region": "zone", "mail": "email"},
    )
    assert (result["inserted"], result["updated"], result["unchanged"]) == (1, 1, 1)
    got = db.execute(
        "SELECT region, mail, score, updated_at IS NOT NULL FROM public.scores ORDER BY 1, 2"
    ).fetchall()
    assert got == [("eu", "a@x.org", 10, True), ("eu", "b@x.org", 3, True), ("us", "a@x.org", 2, False)]


def test_set_updated_at_false_leaves_it(scratch, context):
    db = scratch.db
    db.execute("UPDATE campaign.profiles SET updated_at = '2020-01-01' WHERE id = 9")
    update(scratch, context, population=[{"id": 9, "loyalty_points": 12345}], set_updated_at=False)
    assert profile(db, 9, "loyalty_points", "updated_at::date::text") == (12345, "2020-01-01")


BAD_ROWS = [
    {"id": 10, "loyalty_points": "11"},
    {"id": None, "loyalty_points": "12"},  # missing key
    {"id": 11, "loyalty_points": "many"},  # not an integer
    {"id": 12, "loyalty_points": None},  # NOT NULL column
    {"id": 13, "loyalty_points": "99999999999"},  # out of integer range
]


def test_rejects_fail_names_rows_and_writes_nothing(scratch, context):
    before = snapshot(scratch.db)
    with pytest.raises(
        CampaignError, match=r"rejects='fail': 4 row\(s\) cannot be written .*id=11: invalid loyalty_points"
    ):
        update(scratch, context, population=Population.inline(BAD_ROWS))
    assert snapshot(scratch.db) == before


def test_rejects_skip_and_output(scratch, context):
    db = scratch.db
    result, ctx = update(scratch, context, population=Population.inline(BAD_ROWS), rejects="skip")
    assert (result["updated"], result["rejected"]) == (1, 4)
    assert profile(db, 10)[0] == 11
    assert "rejects" not in ctx["ti"].xcoms

    db.execute("UPDATE campaign.profiles SET loyalty_points = 0 WHERE id = 10")
    result, ctx = update(
        scratch, context, task_id="out", population=Population.inline(BAD_ROWS), rejects="output"
    )
    assert (result["updated"], result["rejected"]) == (1, 4)
    rejects = ctx["ti"].xcoms["rejects"]
    reasons = db.execute(
        f"SELECT id, reject_reason FROM {rejects['table']} ORDER BY id NULLS FIRST"
    ).fetchall()
    assert reasons == [
        (None, "missing id"),
        (11, "invalid loyalty_points"),
        (12, "missing loyalty_points"),
        (13, "invalid loyalty_points"),
    ]


@pytest.mark.parametrize("fast", [True, False], ids=["on_conflict", "update_then_insert"])
def test_duplicate_keys_fail_clearly_or_are_rejected(scratch, context, fast):
    db = scratch.db
    rows = [{"id": 14, "loyalty_points": 1}, {"id": 14, "loyalty_points": 2}, {"id": 15, "loyalty_points": 3}]
    extra = {} if fast else {"fields": {"loyalty_points": {"value": "loyalty_points", "when": "true"}}}
    before = snapshot(db)
    with pytest.raises(
        CampaignError, match=r"duplicates='fail': .* \(first: id=14 \(2 rows\)\).*DeduplicationOperator"
    ):
        update(scratch, context, population=Population.inline(rows), **extra)
    assert snapshot(db) == before
    result, _ = update(
        scratch,
        context,
        task_id="dup_reject",
        population=Population.inline(rows),
        duplicates="reject",
        rejects="skip",
        **extra,
    )
    assert (result["updated"], result["rejected"]) == (1, 2)
    assert profile(db, 15)[0] == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keys": ["nope"]}, r"keys: unknown column\(s\) \['nope'\] in campaign.profiles"),
        ({"keys": {"email": "mail"}}, r"keys: the population has no column\(s\) \['mail'\]"),
        ({"fields": {"points": "loyalty_points"}}, r"fields: unknown destination column\(s\) \['points'\]"),
        (
            {"fields": {"loyalty_points": "loyalty_points +"}},
            r"fields\['loyalty_points'\]='loyalty_points \+': is not valid SQL here",
        ),
        (
            {"fields": {"birth_date": "src.loyalty_points"}},
            r"fields: the database rejected the SQL \(\w+: .*date",
        ),
        ({"table": "public.nowhere"}, r"table='public.nowhere': no such table"),
        ({"resource": "public.nowhere"}, r"resource='public.nowhere': no table public.nowhere"),
        ({"fields": {"id": "loyalty_points"}}, r"fields: \['id'\] are reconciliation keys"),
    ],
)
def test_bad_options_fail_before_any_write(scratch, context, kwargs, message):
    before = snapshot(scratch.db)
    with pytest.raises(CampaignError, match=message):
        update(scratch, context, population=Population.inline([{"id": 16, "loyalty_points": 7}]), **kwargs)
    assert snapshot(scratch.db) == before


def test_a_population_without_resource_needs_a_destination(scratch, context):
    with pytest.raises(CampaignError, match=r"table/resource: the population has no resource"):
        update(scratch, context, population=Population.inline([{"id": 1}], resource=None))


def test_upsert_into_another_table_needs_keys(scratch, context):
    scratch.db.execute("CREATE TABLE public.plain (id bigint, v int)")
    with pytest.raises(CampaignError, match=r"keys: upsert into public.plain needs reconciliation keys"):
        update(
            scratch,
            context,
            population=Population.inline([{"id": 1, "v": 2}], resource=None),
            table="public.plain",
        )


def test_empty_population_follows_on_empty(scratch, context):
    empty = Population.inline([], key="id")
    result, _ = update(scratch, context, population=empty)
    assert result["updated"] == result["inserted"] == 0
    with pytest.raises(AirflowSkipException):
        update(scratch, context, population=empty, on_empty="skip")


def test_a_retried_try_leaves_the_same_state(scratch, context):
    db = scratch.db
    rows = [{"id": 17, "loyalty_points": 4242}, {"id": 900005, "loyalty_points": 1}]
    first, _ = update(scratch, context, population=rows, run_id="r1")
    state = snapshot(db)
    second, _ = update(scratch, context, population=rows, run_id="r1")
    assert snapshot(db)[1] == state[1]
    assert (second["inserted"], second["updated"], second["unchanged"]) == (0, 0, 2)
    assert profile(db, 17)[0] == 4242 and profile(db, 900005)[0] == 1


# ---- batches ----------------------------------------------------------------------------------


def test_batches_give_the_same_result_as_one_transaction(scratch, context):
    db = scratch.db
    pop = QueryOperator(task_id="all", campaign_conn_id=scratch.conn_id, columns=["loyalty_points"]).execute(
        context("all")
    )
    db.execute(f"UPDATE {pop['table']} SET loyalty_points = loyalty_points + 3 WHERE id % 3 = 0")
    changed = count(db, f"SELECT count(*) FROM {pop['table']} WHERE id % 3 = 0")
    result, _ = update(scratch, context, population=pop, batch_size=400)
    assert (result["updated"], result["unchanged"]) == (changed, pop["count"] - changed)
    assert (
        count(
            db,
            f"SELECT count(*) FROM campaign.profiles p JOIN {pop['table']} s USING (id) WHERE p.loyalty_points <> s.loyalty_points",
        )
        == 0
    )


def test_a_failed_batched_try_resumes_after_its_last_committed_batch(scratch, context):
    db = scratch.db
    n = 1000
    rows = [{"id": i, "loyalty_points": 70000 + i} for i in range(1, n + 1)]
    # a real failure in the middle: the row with id 650 cannot be written
    db.execute(
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.id = 650 THEN RAISE EXCEPTION 'disk on fire'; END IF; RETURN NEW; END $$"
    )
    db.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON campaign.profiles FOR EACH ROW EXECUTE FUNCTION public.refuse()"
    )
    with pytest.raises(CampaignError, match="disk on fire"):
        update(scratch, context, population=rows, batch_size=200, run_id="batched")
    # batches 1-3 (ids 1..600) committed, the 4th rolled back
    assert count(db, "SELECT count(*) FROM campaign.profiles WHERE loyalty_points >= 70000") == 600
    done = db.execute("SELECT done_through, counts->>'updated' FROM campaign.update_progress").fetchone()
    assert done == (600, "600")
    stamp = db.execute("SELECT updated_at FROM campaign.profiles WHERE id = 1").fetchone()[0]

    db.execute("DROP TRIGGER refuse ON campaign.profiles")
    result, _ = update(scratch, context, population=rows, batch_size=200, run_id="batched")
    assert (result["updated"], result["unchanged"]) == (n, 0)
    assert count(db, "SELECT count(*) FROM campaign.profiles WHERE loyalty_points = 70000 + id") == n
    # the first batches were not written again
    assert db.execute("SELECT updated_at FROM campaign.profiles WHERE id = 1").fetchone()[0] == stamp
    # a third try of the finished run writes nothing and reports the same
    third, _ = update(scratch, context, population=rows, batch_size=200, run_id="batched")
    assert third == result


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"operation": "merge"}, r"operation='merge' is not valid"),
        ({"rejects": "ignore"}, r"rejects='ignore' is not valid"),
        ({"duplicates": "last"}, r"duplicates='last' is not valid"),
        ({"batch_size": 0}, r"batch_size=0: give a whole number"),
        ({"table": "t", "resource": "profiles"}, r"table/resource: give one destination"),
        ({"operation": "delete", "fields": {"a": "b"}}, r"fields: a delete writes no field"),
        ({"keys": "id"}, r"keys='id': give a list"),
        ({"fields": {"a": {"val": "b"}}}, r"fields\['a'\]: a conditional field is"),
    ],
)
def test_bad_options_fail_at_parse_time(kwargs, message):
    with pytest.raises(CampaignError, match=message):
        UpdateDataOperator(task_id="parse", population=[{"id": 1}], **kwargs)


def test_new_keys_repeated_in_the_population_are_named_and_nothing_is_written(scratch, context):
    """Two rows for one key that is not in the table yet: the duplicates error, not a database
    error, and no row is left behind."""
    db = scratch.db
    rows = [
        {"id": 900010, "loyalty_points": 1},
        {"id": 900010, "loyalty_points": 2},
        {"id": 16, "loyalty_points": 3},
    ]
    before = snapshot(db)
    with pytest.raises(CampaignError, match=r"duplicates='fail': .* \(first: id=900010 \(2 rows\)\)"):
        update(scratch, context, population=Population.inline(rows))
    assert snapshot(db) == before


def test_a_key_inserted_by_another_writer_mid_upsert_is_updated_not_failed(scratch, context):
    """Another transaction inserts a key of the population while the upsert runs: the upsert waits
    for it, then writes that row as an update; every other row is written once."""
    import threading
    import time

    import psycopg

    db = scratch.db
    db.execute("CREATE TABLE public.race (id bigint PRIMARY KEY, points int)")
    db.execute("INSERT INTO public.race SELECT g, 0 FROM generate_series(1, 100) g")
    rows = [{"id": i, "points": 7} for i in range(1, 121)]  # 1..100 updated, 101..120 new
    other = psycopg.connect(scratch.url)
    other.execute("INSERT INTO public.race VALUES (110, -1)")  # not committed yet
    done: dict[str, object] = {}

    def run() -> None:
        try:
            done["result"] = update(
                scratch, context, population=Population.inline(rows), table="public.race", keys=["id"]
            )[0]
        except BaseException as exc:  # reported below
            done["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    for _ in range(200):  # until the upsert waits on the other transaction's row
        waiting = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0]
        if waiting:
            break
        time.sleep(0.05)
    assert waiting, "the upsert never waited on the other writer's row"
    other.commit()
    other.close()
    worker.join(60)
    assert "error" not in done, done.get("error")
    result = done["result"]
    assert (result["inserted"], result["updated"], result["unchanged"]) == (19, 101, 0)
    assert db.execute("SELECT count(*), min(points), max(points) FROM public.race").fetchone() == (120, 7, 7)
