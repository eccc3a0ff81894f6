"""Populations are verified, not trusted: forged dicts from XCom or dag_run.conf, tables declared
trusted in code, the campaign's bookkeeping tables and the catalogs, and the shapes of a dict."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.extract_file import ExtractFileOperator
from airflow_campaign.operators.save_audience import SaveAudienceOperator
from airflow_campaign.operators.subscription_services import SubscriptionServicesOperator
from airflow_campaign.operators.targeting import (
    DeduplicationOperator,
    EnrichmentOperator,
    ExclusionOperator,
    IntersectionOperator,
    QueryOperator,
    SegmentationOperator,
    UnionOperator,
)
from airflow_campaign.operators.update_data import UpdateDataOperator
from airflow_campaign.population import Population
from tests.bad_input.matrix import Row, bad_input, cases
from tests.conftest import SEED_PROFILES, count

KEY = "k" * 32
HTML = '<p>Hello {{ first_name }}</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
# what a refusal of ours says; SubscriptionServicesOperator refuses a non-profiles resource itself
REFUSED = (
    r"not a staging table recorded in campaign\.staging_tables|is a PostgreSQL system catalog table"
    r"|one of the campaign's own bookkeeping tables|subscriptions belong to profiles"
    r"|inline rows from a dict \(XCom, dag_run.conf\) say resource="
)


# ---- what the database and the disk hold ------------------------------------------------------


def snapshot(db: psycopg.Connection) -> dict[str, tuple[int, str]]:
    """Row count and a digest of the contents of every table in schemas campaign and campaign_staging."""
    tables = db.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname IN ('campaign', 'campaign_staging') AND c.relkind IN ('r', 'p') ORDER BY 1, 2"
    ).fetchall()
    out = {}
    for schema, name in tables:
        row = db.execute(
            sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {} t"
            ).format(sql.Identifier(schema, name))
        ).fetchone()
        out[f"{schema}.{name}"] = (int(row[0]), row[1])
    return out


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ---- every operator that reads a population ----------------------------------------------------

Make = Callable[[Any, Any, Path], Any]


def _email(pop: Any, conn_id: str, folder: Path) -> Any:
    return EmailDeliveryOperator(
        task_id="mail",
        population=pop,
        subject="Hello",
        html=HTML,
        from_addr="news@example.com",
        unsubscribe_url="https://example.com/unsubscribe",
        channel="outbox",
        channel_options={"folder": str(folder / "outbox")},
        campaign_conn_id=conn_id,
    )


WRITERS: dict[str, Callable[[Any, str, Path], Any]] = {
    **{
        f"UpdateDataOperator({op})": (
            lambda pop, conn_id, folder, op=op: UpdateDataOperator(
                task_id="write", population=pop, operation=op, campaign_conn_id=conn_id
            )
        )
        for op in ("insert", "upsert", "update", "delete")
    },
    **{
        f"SubscriptionServicesOperator({op})": (
            lambda pop, conn_id, folder, op=op: SubscriptionServicesOperator(
                task_id="subs", population=pop, service="newsletter", operation=op, campaign_conn_id=conn_id
            )
        )
        for op in ("subscribe", "unsubscribe")
    },
    "SaveAudienceOperator": lambda pop, conn_id, folder: SaveAudienceOperator(
        task_id="save", population=pop, audience="forged", campaign_conn_id=conn_id
    ),
    "ExtractFileOperator": lambda pop, conn_id, folder: ExtractFileOperator(
        task_id="extract", population=pop, path=str(folder / "out.csv"), campaign_conn_id=conn_id
    ),
    "EmailDeliveryOperator(outbox)": _email,
    "UnionOperator": lambda pop, conn_id, folder: UnionOperator(
        task_id="union", populations=[pop, pop], campaign_conn_id=conn_id
    ),
    "IntersectionOperator": lambda pop, conn_id, folder: IntersectionOperator(
        task_id="inter", populations=[pop, pop], campaign_conn_id=conn_id
    ),
    "ExclusionOperator": lambda pop, conn_id, folder: ExclusionOperator(
        task_id="excl", primary=pop, exclude=[pop], campaign_conn_id=conn_id
    ),
    "DeduplicationOperator": lambda pop, conn_id, folder: DeduplicationOperator(
        task_id="dedup", population=pop, on=["id"], campaign_conn_id=conn_id
    ),
    "EnrichmentOperator": lambda pop, conn_id, folder: EnrichmentOperator(
        task_id="enrich", population=pop, columns={"one": "1"}, campaign_conn_id=conn_id
    ),
    "SegmentationOperator": lambda pop, conn_id, folder: SegmentationOperator(
        task_id="segment", population=pop, segments=[{"code": "a"}], campaign_conn_id=conn_id
    ),
}


def forged_table(table: str) -> dict[str, Any]:
    """The dict seen in the reports: a table population naming any table, as XCom or conf carries it."""
    return {
        "kind": "table",
        "table": table,
        "key": "id",
        "resource": "profiles",
        "columns": ["id", "email", "first_name"],
        "count": 5000,
    }


def forged_inline(resource: str, key: str = "id") -> dict[str, Any]:
    """Inline rows whose resource names a table a population may not name."""
    return {
        "kind": "inline",
        "key": key,
        "resource": resource,
        "columns": [key, "status"],
        "count": 1,
        "rows": [{key: 1, "status": "pending"}],
    }


@pytest.fixture
def unsubscribe_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", KEY)


FORGERIES = [
    (
        "a forged table population naming campaign.profiles (not a staging table)",
        "refused before any write: `population: table='campaign.profiles' is not a staging table recorded in "
        "campaign.staging_tables …`; no row of schemas campaign and campaign_staging changes, no file is written",
        forged_table("campaign.profiles"),
    ),
    (
        "a forged table population naming the catalog table pg_catalog.pg_authid",
        "refused before any write: `population: table='pg_catalog.pg_authid': pg_catalog.pg_authid is a "
        "PostgreSQL system catalog table …`; nothing changes, no file is written",
        forged_table("pg_catalog.pg_authid"),
    ),
    (
        "a forged table population naming the bookkeeping table campaign.delivery_logs",
        "refused before any write: `… campaign.delivery_logs is one of the campaign's own bookkeeping tables …`; "
        "nothing changes, no file is written",
        forged_table("campaign.delivery_logs"),
    ),
    (
        "inline rows whose resource is the catalog table pg_catalog.pg_authid",
        "refused before any write: `population: inline rows from a dict (XCom, dag_run.conf) say "
        "resource='pg_catalog.pg_authid', key='oid'; such rows may be profiles keyed by 'id', or of no resource`; "
        "nothing changes",
        forged_inline("pg_catalog.pg_authid", key="oid"),
    ),
    (
        "inline rows whose resource is the bookkeeping table campaign.delivery_logs",
        "refused before any write: `population: inline rows from a dict (XCom, dag_run.conf) say "
        "resource='campaign.delivery_logs' …`; nothing changes",
        forged_inline("campaign.delivery_logs"),
    ),
]


@cases(
    *(
        Row(
            writer.partition("(")[0],
            f"{given}{' (' + writer.partition('(')[2] if '(' in writer else ''}",
            outcome,
            args={"pop": pop, "writer": writer},
        )
        for writer in WRITERS
        for given, outcome, pop in FORGERIES
    )
)
def test_every_operator_refuses_a_forged_population_before_any_write(
    row, scratch, context, tmp_path, unsubscribe_key
):
    before = snapshot(scratch.db)
    op = WRITERS[row.args["writer"]](json.loads(json.dumps(row.args["pop"])), scratch.conn_id, tmp_path)
    with pytest.raises(CampaignError, match=REFUSED):
        op.execute(context(op.task_id))
    assert snapshot(scratch.db) == before, f"{row.args['writer']} changed the database"
    assert files(tmp_path) == [], f"{row.args['writer']} wrote a file"


def test_the_forgeries_reach_every_operator_that_reads_a_population():
    """The rows above cover each writer: every operator taking a population is in WRITERS."""
    names = {w.partition("(")[0] for w in WRITERS}
    assert names >= {
        "UpdateDataOperator",
        "SubscriptionServicesOperator",
        "SaveAudienceOperator",
        "ExtractFileOperator",
        "EmailDeliveryOperator",
        "UnionOperator",
        "IntersectionOperator",
        "ExclusionOperator",
        "DeduplicationOperator",
        "EnrichmentOperator",
        "SegmentationOperator",
    }


# ---- the reported cases, one by one -------------------------------------------------------------


@bad_input(
    "UpdateDataOperator",
    "operation='delete' given a forged table population naming campaign.profiles",
    "Refused: `population: table='campaign.profiles' is not a staging table recorded in "
    "campaign.staging_tables …`; every profile is still there",
)
def test_delete_with_a_forged_profiles_table_deletes_nothing(scratch, context):
    op = UpdateDataOperator(
        task_id="delete",
        population=forged_table("campaign.profiles"),
        operation="delete",
        campaign_conn_id=scratch.conn_id,
    )
    with pytest.raises(CampaignError, match=r"population: table='campaign.profiles' is not a staging table"):
        op.execute(context("delete"))
    assert count(scratch.db, "SELECT count(*) FROM campaign.profiles") == SEED_PROFILES


@bad_input(
    "SubscriptionServicesOperator",
    "operation='unsubscribe' given a forged table population naming campaign.profiles",
    "Refused: `population: table='campaign.profiles' is not a staging table recorded …`; nobody is "
    "unsubscribed",
)
def test_unsubscribe_with_a_forged_profiles_table_unsubscribes_nobody(scratch, context):
    subscribed = (
        "SELECT count(*) FROM campaign.subscriptions s JOIN campaign.services v ON v.id = s.service_id"
    )
    before = count(scratch.db, subscribed)
    op = SubscriptionServicesOperator(
        task_id="unsub",
        population=forged_table("campaign.profiles"),
        service="newsletter",
        operation="unsubscribe",
        campaign_conn_id=scratch.conn_id,
    )
    with pytest.raises(CampaignError, match=r"is not a staging table recorded in campaign\.staging_tables"):
        op.execute(context("unsub"))
    assert count(scratch.db, subscribed) == before > 0


@bad_input(
    "EmailDeliveryOperator",
    "a forged table population naming campaign.profiles (channel='outbox')",
    "Refused: `population: table='campaign.profiles' is not a staging table recorded …`; no message "
    "is written, the ledger is untouched",
)
def test_delivery_to_a_forged_profiles_table_mails_nobody(scratch, context, tmp_path, unsubscribe_key):
    op = _email(forged_table("campaign.profiles"), scratch.conn_id, tmp_path)
    with pytest.raises(CampaignError, match=r"is not a staging table recorded in campaign\.staging_tables"):
        op.execute(context("mail"))
    assert files(tmp_path) == []
    assert count(scratch.db, "SELECT count(*) FROM campaign.delivery_logs") == 0
    assert count(scratch.db, "SELECT count(*) FROM campaign.deliveries") == 0


@bad_input(
    "ExtractFileOperator",
    "a forged table population naming pg_catalog.pg_authid (role passwords)",
    "Refused: `population: table='pg_catalog.pg_authid': pg_catalog.pg_authid is a PostgreSQL system "
    "catalog table, which a population can never name …`; no file is written",
)
def test_extract_of_pg_authid_writes_no_file(scratch, context, tmp_path):
    op = ExtractFileOperator(
        task_id="extract",
        population={"kind": "table", "table": "pg_catalog.pg_authid", "key": "oid", "resource": None},
        path=str(tmp_path / "roles.csv"),
        campaign_conn_id=scratch.conn_id,
    )
    with pytest.raises(CampaignError, match=r"pg_catalog\.pg_authid is a PostgreSQL system catalog table"):
        op.execute(context("extract"))
    assert files(tmp_path) == []


def _one_sent_message(scratch: Any, context: Any, folder: Path) -> tuple[int, int]:
    """Send one real message through the outbox; return its ledger row id and the message count."""
    pop = Population.inline([{"id": 1, "email": "ann@example.com", "first_name": "Ann"}]).to_dict()
    _email(pop, scratch.conn_id, folder).execute(context("mail", run_id="sent"))
    row = scratch.db.execute("SELECT id, status FROM campaign.delivery_logs").fetchall()
    assert [r[1] for r in row] == ["sent"]
    return int(row[0][0]), len(files(folder))


@bad_input(
    "UpdateDataOperator",
    "inline rows whose resource is campaign.delivery_logs, setting a sent ledger row back to 'pending'",
    "Refused: `population: resource='campaign.delivery_logs': campaign.delivery_logs is one of the "
    "campaign's own bookkeeping tables …`; the row stays 'sent' and a re-run mails nobody again",
)
def test_inline_rows_cannot_rewrite_the_ledger(scratch, context, tmp_path, unsubscribe_key):
    ledger_id, sent = _one_sent_message(scratch, context, tmp_path)
    forged = {
        "kind": "inline",
        "key": "id",
        "resource": "campaign.delivery_logs",
        "rows": [{"id": ledger_id, "status": "pending"}],
    }
    op = UpdateDataOperator(
        task_id="rewrite", population=forged, operation="update", campaign_conn_id=scratch.conn_id
    )
    with pytest.raises(
        CampaignError,
        match=r"resource='campaign.delivery_logs'.*(bookkeeping tables|such rows may be profiles keyed by 'id')",
    ):
        op.execute(context("rewrite"))
    assert scratch.db.execute("SELECT status FROM campaign.delivery_logs").fetchall() == [("sent",)]
    pop = Population.inline([{"id": 1, "email": "ann@example.com", "first_name": "Ann"}]).to_dict()
    _email(pop, scratch.conn_id, tmp_path).execute(context("mail", run_id="sent"))
    assert len(files(tmp_path)) == sent


# ---- the rule on tables, however they are spelled ----------------------------------------------


@cases(
    *(
        Row(
            "UpdateDataOperator",
            f"{what}: table={table!r}",
            "Refused before any write: `table=…: campaign.… is one of the campaign's own bookkeeping tables, "
            "which a population can never name and no task may write to. Allowed: 'profiles' …`",
            args={"table": table},
        )
        for table, what in (
            ("campaign.delivery_logs", "the delivery ledger as the destination"),
            ("Campaign.Delivery_Logs", "mixed-case ledger"),
            ('"campaign"."delivery_logs"', "quoted ledger"),
            ("campaign.schema_migrations", "the migrations table"),
            ("campaign.staging_tables", "the staging registry"),
            ("campaign.subscriptions", "subscriptions (use SubscriptionServicesOperator)"),
        )
    ),
    Row(
        "UpdateDataOperator",
        "table='pg_catalog.pg_authid' (a catalog table as the destination)",
        "Refused before any write: `table='pg_catalog.pg_authid': … is a PostgreSQL system catalog table …`",
        args={"table": "pg_catalog.pg_authid"},
    ),
)
def test_update_data_never_writes_to_a_bookkeeping_or_catalog_table(row, scratch, context):
    before = snapshot(scratch.db)
    op = UpdateDataOperator(
        task_id="write",
        population=[{"id": 1, "status": "pending"}],
        table=row.args["table"],
        keys=["id"],
        operation="update",
        campaign_conn_id=scratch.conn_id,
    )
    with pytest.raises(
        CampaignError, match=r"^table=.*(bookkeeping tables|system catalog table).*Allowed: 'profiles'"
    ):
        op.execute(context("write"))
    assert snapshot(scratch.db) == before


@cases(
    *(
        Row(
            "Population",
            f"{what} resource {resource!r} in inline rows declared in the DAG file",
            "Refused: `population: resource=…: campaign.delivery_logs is one of the campaign's own bookkeeping "
            "tables …` (the name is resolved to the real table, whatever its spelling)",
            args={"resource": resource},
        )
        for resource, what in (
            ("Campaign.Delivery_Logs", "a mixed-case"),
            ('"campaign"."delivery_logs"', "a quoted"),
            ("campaign.DELIVERY_LOGS", "an upper-case"),
        )
    )
)
def test_a_resource_is_resolved_to_the_real_table(row, scratch, context):
    before = snapshot(scratch.db)
    declared = forged_inline(row.args["resource"])  # declared in code: the name itself is checked
    op = UpdateDataOperator(
        task_id="write",
        population=Population.inline(declared["rows"], key="id", resource=row.args["resource"]),
        operation="update",
        campaign_conn_id=scratch.conn_id,
    )
    with pytest.raises(
        CampaignError, match=r"population: resource=.*campaign\.delivery_logs is one of the campaign"
    ):
        op.execute(context("write"))
    assert snapshot(scratch.db) == before


@bad_input(
    "Population",
    "a bare table name ('delivery_logs', 'staging_tables') when the database's search_path starts with campaign",
    "Refused: the name is resolved on the search_path to its OID, and campaign.delivery_logs is a bookkeeping "
    "table whatever it is called",
)
def test_a_search_path_cannot_hide_a_bookkeeping_table(scratch, context, tmp_path):
    name = scratch.db.info.dbname
    scratch.db.execute(
        sql.SQL("ALTER DATABASE {} SET search_path = campaign, public").format(sql.Identifier(name))
    )
    for table in ("delivery_logs", "staging_tables"):
        op = ExtractFileOperator(
            task_id="extract",
            population=forged_table(table),
            path=str(tmp_path / "out.csv"),
            campaign_conn_id=scratch.conn_id,
        )
        with pytest.raises(
            CampaignError, match=rf"campaign\.{table} is one of the campaign's own bookkeeping"
        ):
            op.execute(context("extract"))
    assert files(tmp_path) == []


@bad_input(
    "QueryOperator",
    "resource='campaign.delivery_logs' (a bookkeeping table as the resource)",
    "Refused: `resource='campaign.delivery_logs': campaign.delivery_logs is one of the campaign's own "
    "bookkeeping tables … Allowed: 'profiles' (campaign.profiles), campaign.quarantine, "
    "campaign.app_subscriptions, or a table of yours in another schema …`",
)
def test_a_bookkeeping_table_is_never_a_resource(scratch, context):
    before = snapshot(scratch.db)
    op = QueryOperator(task_id="q", resource="campaign.delivery_logs", campaign_conn_id=scratch.conn_id)
    with pytest.raises(CampaignError, match=r"^resource='campaign.delivery_logs': .*bookkeeping.*Allowed"):
        op.execute(context("q"))
    assert snapshot(scratch.db) == before


@bad_input(
    "Population",
    "a table made by hand in schema campaign_staging, not recorded in campaign.staging_tables",
    "Refused: `population: table='campaign_staging.by_hand' is not a staging table recorded in "
    "campaign.staging_tables of this database …`",
)
def test_an_unrecorded_staging_table_is_refused(scratch, context, tmp_path):
    scratch.db.execute("CREATE TABLE campaign_staging.by_hand AS SELECT id FROM campaign.profiles")
    op = ExtractFileOperator(
        task_id="extract",
        population=forged_table("campaign_staging.by_hand"),
        path=str(tmp_path / "out.csv"),
        campaign_conn_id=scratch.conn_id,
    )
    with pytest.raises(
        CampaignError, match=r"table='campaign_staging.by_hand' is not a staging table recorded"
    ):
        op.execute(context("extract"))
    assert files(tmp_path) == []


@bad_input(
    "Population",
    "a staging table recorded in another database (a same-named table exists, unrecorded, in this one)",
    "Refused: the table must be recorded in campaign.staging_tables of the database the task uses",
)
def test_a_staging_table_of_another_database_is_refused(db, scratch, context, tmp_path):
    elsewhere = QueryOperator(task_id="elsewhere", where="id <= 5").execute(context("elsewhere"))
    schema, table = elsewhere["table"].split(".")
    scratch.db.execute(
        sql.SQL("CREATE TABLE {} AS SELECT id FROM campaign.profiles").format(sql.Identifier(schema, table))
    )
    op = UpdateDataOperator(
        task_id="delete", population=elsewhere, operation="delete", campaign_conn_id=scratch.conn_id
    )
    with pytest.raises(
        CampaignError, match=r"is not a staging table recorded in campaign\.staging_tables of this"
    ):
        op.execute(context("delete"))
    assert count(scratch.db, "SELECT count(*) FROM campaign.profiles") == SEED_PROFILES


# ---- trusted tables: declared in code only ------------------------------------------------------


@bad_input(
    "Population",
    "Population.from_table('public.points_import', trusted=True) given in the DAG file (a table of yours)",
    "Used: its columns and row count are read from the database, and UpdateDataOperator updates the "
    "profiles it names",
)
def test_a_trusted_table_declared_in_code_is_used(scratch, context):
    scratch.db.execute(
        "CREATE TABLE public.points_import AS SELECT id, 777 AS loyalty_points FROM campaign.profiles WHERE id <= 4"
    )
    pop = Population.from_table("public.points_import", key="id", resource="profiles", trusted=True)
    out = UpdateDataOperator(
        task_id="points", population=pop, operation="update", campaign_conn_id=scratch.conn_id
    ).execute(context("points"))
    assert out["updated"] == 4
    assert pop.columns == ["id", "loyalty_points"] and pop.count == 4
    assert count(scratch.db, "SELECT count(*) FROM campaign.profiles WHERE loyalty_points = 777") == 4


@bad_input(
    "Population",
    "Population.from_table('public.points_import') without trusted=True",
    "Refused: `population: table='public.points_import' is not a staging table recorded … declare it in "
    "the DAG file: Population.from_table('schema.table', key=..., resource=..., trusted=True)`",
)
def test_an_untrusted_from_table_must_be_a_staging_table(scratch, context):
    scratch.db.execute("CREATE TABLE public.points_import AS SELECT id FROM campaign.profiles WHERE id <= 4")
    op = UpdateDataOperator(
        task_id="delete",
        population=Population.from_table("public.points_import"),
        operation="delete",
        campaign_conn_id=scratch.conn_id,
    )
    with pytest.raises(CampaignError, match=r"not a staging table recorded.*trusted=True"):
        op.execute(context("delete"))
    assert count(scratch.db, "SELECT count(*) FROM campaign.profiles") == SEED_PROFILES


@cases(
    Row(
        "Population",
        "Population.from_table('campaign.delivery_logs', trusted=True) (trusted, but a bookkeeping table)",
        "Refused: `population: table='campaign.delivery_logs': … bookkeeping tables …`; trust does not reach "
        "the campaign's bookkeeping",
        args={"table": "campaign.delivery_logs"},
    ),
    Row(
        "Population",
        "Population.from_table('pg_catalog.pg_authid', trusted=True) (trusted, but a catalog table)",
        "Refused: `population: table='pg_catalog.pg_authid': … system catalog table …`",
        args={"table": "pg_catalog.pg_authid"},
    ),
)
def test_trust_never_reaches_bookkeeping_or_catalog_tables(row, scratch, context, tmp_path):
    op = ExtractFileOperator(
        task_id="extract",
        population=Population.from_table(row.args["table"], key="oid", resource=None, trusted=True),
        path=str(tmp_path / "out.csv"),
        campaign_conn_id=scratch.conn_id,
    )
    with pytest.raises(CampaignError, match=r"population: table=.*(bookkeeping tables|system catalog table)"):
        op.execute(context("extract"))
    assert files(tmp_path) == []


@bad_input(
    "Population",
    'a population dict carrying "trusted": true (from XCom or dag_run.conf)',
    "Refused: `population: the population dict has a 'trusted' key (True); trust cannot come from XCom or "
    "dag_run.conf …`",
)
def test_trusted_in_a_dict_is_refused(scratch, context, tmp_path):
    scratch.db.execute("CREATE TABLE public.mine AS SELECT id FROM campaign.profiles")
    op = ExtractFileOperator(
        task_id="extract",
        population={**forged_table("public.mine"), "trusted": True},
        path=str(tmp_path / "out.csv"),
        campaign_conn_id=scratch.conn_id,
    )
    with pytest.raises(CampaignError, match=r"population: the population dict has a 'trusted' key"):
        op.execute(context("extract"))
    assert files(tmp_path) == []


@bad_input(
    "Population",
    "the dict form (to_dict, or Airflow's XCom serialisation) of a trusted Population, passed downstream",
    "Untrusted again: neither form carries `trusted`, so the table must be a recorded staging table",
)
def test_trust_does_not_travel_through_xcom(scratch, context):
    from airflow.sdk.serde import serialize

    scratch.db.execute("CREATE TABLE public.mine AS SELECT id FROM campaign.profiles")
    trusted = Population.from_table("public.mine", trusted=True)
    assert "trusted" not in trusted.to_dict()
    serialized = serialize(trusted)
    assert "trusted" not in json.dumps(serialized)
    for again in (Population.from_value(trusted.to_dict()), Population.deserialize(trusted.serialize(), 1)):
        assert not again.trusted
        with pytest.raises(CampaignError, match=r"not a staging table recorded"):
            with scratch.db.transaction():
                again.bind(scratch.db)


# ---- the shape of a dict ----------------------------------------------------------------------

STAGED = {"kind": "table", "table": "campaign_staging.t_0123456789ab", "key": "id", "resource": "profiles"}
INLINE = {"kind": "inline", "key": "id", "resource": "profiles", "rows": [{"id": 1}]}
HUGE = "x" * 1_000_000


@cases(
    Row(
        "Population",
        'count="5000" (a string)',
        "Refused: `population: count='5000': give the row count, a whole number >= 0 (not a string).`",
        args={"value": {**STAGED, "count": "5000"}, "match": r"count='5000': give the row count"},
    ),
    Row(
        "Population",
        "count=true (a bool)",
        "Refused: `population: count=True: give the row count …`",
        args={"value": {**STAGED, "count": True}, "match": r"count=True: give the row count"},
    ),
    Row(
        "Population",
        "count=-1",
        "Refused: `population: count=-1: give the row count, a whole number >= 0 …`",
        args={"value": {**STAGED, "count": -1}, "match": r"count=-1: give the row count"},
    ),
    Row(
        "Population",
        "count=1.5 in inline rows",
        "Refused: `population: count=1.5: give the row count …`",
        args={"value": {**INLINE, "count": 1.5}, "match": r"count=1.5: give the row count"},
    ),
    Row(
        "Population",
        'columns="id" (a string, not a list)',
        "Refused: `population: columns='id': give a list of column names (strings).`",
        args={"value": {**STAGED, "columns": "id"}, "match": r"columns='id': give a list"},
    ),
    Row(
        "Population",
        "columns=[1, 2] (not strings)",
        "Refused: `population: columns=1: give a column name …`",
        args={"value": {**STAGED, "columns": [1, 2]}, "match": r"columns=1: give a column name"},
    ),
    Row(
        "Population",
        "key=5 (not a string)",
        "Refused: `population: key=5: give a column name, a non-empty string of at most 63 bytes.`",
        args={"value": {**STAGED, "key": 5}, "match": r"key=5: give a column name"},
    ),
    Row(
        "Population",
        'key="" (empty)',
        "Refused: `population: key='': give a column name …`",
        args={"value": {**STAGED, "key": ""}, "match": r"key='': give a column name"},
    ),
    Row(
        "Population",
        "key of 1 MB",
        "Refused; the message shows the start of the value and its length, not all of it",
        args={
            "value": {**STAGED, "key": HUGE},
            "match": r"key='xxx.*… \(1,000,002 characters\): give a column name",
        },
    ),
    Row(
        "Population",
        'kind="TABLE"',
        "Refused: `population: a dict must be a population's dict form (with kind 'table' or 'inline') …`",
        args={"value": {**STAGED, "kind": "TABLE"}, "match": r"a dict must be a population's"},
    ),
    Row(
        "Population",
        "table=123 (not a string)",
        "Refused: `population: table=123: give a name …`",
        args={"value": {**STAGED, "table": 123}, "match": r"table=123: give a name"},
    ),
    Row(
        "Population",
        "resource of 1 MB",
        "Refused; the message is cut to about 200 characters of the value",
        args={"value": {**INLINE, "resource": HUGE}, "match": r"resource='xxx.*characters\): give a name"},
    ),
    Row(
        "Population",
        'inline rows="id" (not a list)',
        "Refused: `population: rows='id': give the rows as a list of dicts.`",
        args={"value": {**INLINE, "rows": "id"}, "match": r"rows='id': give the rows as a list"},
    ),
    Row(
        "Population",
        "inline rows=[1] (a row that is not a dict)",
        "Refused: `population: rows[0]=1: each row must be a dict …`",
        args={"value": {**INLINE, "rows": [1]}, "match": r"rows\[0\]=1: each row must be a dict"},
    ),
    Row(
        "Population",
        "inline rows with a non-string column name ({1: 'a'})",
        "Refused: `population: rows[0]: column=1: give a column name …`",
        args={
            "value": {**INLINE, "rows": [{"id": 1, 1: "a"}]},
            "match": r"rows\[0\]: column=1: give a column name",
        },
    ),
    Row(
        "Population",
        "a list of dicts with a non-string column name",
        "Refused: `population[0]: column=1: give a column name …`",
        args={"value": [{"id": 1, 1: "a"}], "match": r"population\[0\]: column=1"},
    ),
)
def test_the_fields_of_a_dict_are_checked(row):
    with pytest.raises(CampaignError, match=row.args["match"]) as caught:
        Population.from_value(row.args["value"], "population")
    assert len(str(caught.value)) < 800


@bad_input(
    "Population",
    "a recorded staging table with a key that is not one of its columns",
    "Refused: `population: the population dict says resource='profiles', key='nope', but the task that made "
    "campaign_staging.… recorded resource='profiles', key='id'; a dict cannot relabel a staging table's rows`",
)
def test_a_key_that_is_not_a_real_column_is_refused(scratch, context, tmp_path):
    real = QueryOperator(task_id="real", where="id <= 5", campaign_conn_id=scratch.conn_id).execute(
        context("real")
    )
    op = ExtractFileOperator(
        task_id="extract",
        population={**real, "key": "nope"},
        path=str(tmp_path / "out.csv"),
        campaign_conn_id=scratch.conn_id,
    )
    with pytest.raises(
        CampaignError, match=r"population: the population dict says resource='profiles', key='nope'"
    ):
        op.execute(context("extract"))
    assert files(tmp_path) == []


@bad_input(
    "Population",
    "a recorded staging table whose dict claims other columns and another count",
    "The database wins: the columns are read from the table and the count from campaign.staging_tables",
)
def test_the_database_wins_over_the_dict(scratch, context):
    real = QueryOperator(
        task_id="real", where="id <= 5", columns=["email"], campaign_conn_id=scratch.conn_id
    ).execute(context("real"))
    pop = Population.from_value({**real, "columns": ["id", "rolpassword"], "count": 10**9})
    with scratch.db.transaction():
        pop.bind(scratch.db)
    assert (pop.columns, pop.count) == (["id", "email"], 5)
