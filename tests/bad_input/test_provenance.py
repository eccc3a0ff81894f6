"""What a population dict cannot do: choose the table its rows are written to, relabel a staging
table's key, reach another DAG's staging table; and what a file audience save cannot touch."""

from __future__ import annotations

import pytest

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.extract_file import ExtractFileOperator
from airflow_campaign.operators.save_audience import SaveAudienceOperator
from airflow_campaign.operators.targeting import QueryOperator
from airflow_campaign.operators.update_data import UpdateDataOperator
from tests.bad_input.matrix import bad_input
from tests.conftest import count
from tests.operators.test_save_audience import run_context, save, versions


@bad_input(
    "UpdateDataOperator",
    "an inline dict whose resource names an application table (public.app_users), no table= in the DAG",
    "refused before any write: `population: inline rows from a dict (XCom, dag_run.conf) say "
    "resource='public.app_users' …; such rows may be profiles keyed by 'id', or of no resource`",
)
def test_a_dict_cannot_choose_where_its_rows_are_written(scratch, context) -> None:
    db = scratch.db
    db.execute("CREATE TABLE public.app_users (id bigint PRIMARY KEY, is_admin boolean DEFAULT false)")
    db.execute("INSERT INTO public.app_users VALUES (1), (2), (3)")
    for operation, rows in (("upsert", [{"id": 2, "is_admin": True}]), ("delete", [{"id": 1}, {"id": 3}])):
        forged = {"kind": "inline", "key": "id", "resource": "public.app_users", "rows": rows}
        op = UpdateDataOperator(
            task_id="write_back", population=forged, operation=operation, campaign_conn_id=scratch.conn_id
        )
        with pytest.raises(CampaignError, match=r"say resource='public.app_users'"):
            op.execute(context("write_back"))
    assert db.execute("SELECT id, is_admin FROM public.app_users ORDER BY id").fetchall() == [
        (1, False),
        (2, False),
        (3, False),
    ]


@bad_input(
    "SaveAudienceOperator",
    "an inline dict of profiles keyed by 'country' instead of 'id'",
    "refused before any write: `… say resource='profiles', key='country'; such rows may be profiles keyed by 'id'`",
)
def test_a_dict_cannot_key_profiles_by_another_column(scratch, context) -> None:
    forged = {"kind": "inline", "key": "country", "resource": "profiles", "rows": [{"country": "FR"}]}
    with pytest.raises(CampaignError, match=r"key='country'; such rows may be profiles keyed by 'id'"):
        save(scratch, context, population=forged, audience="weekly_vip")
    assert count(scratch.db, "SELECT count(*) FROM campaign.audiences WHERE name = 'weekly_vip'") == 0


@bad_input(
    "ExtractFileOperator",
    "the dict of a staging table made by another DAG",
    "refused before any file is written: `population: staging table … was made by DAG 'confidential', not by "
    "this DAG ('other_team'); … Share rows across DAGs as a saved audience`",
)
def test_a_staging_table_of_another_dag_is_refused(scratch, context, tmp_path) -> None:
    made = QueryOperator(task_id="q", where="id <= 5", campaign_conn_id=scratch.conn_id).execute(
        context("q", dag_id="confidential")
    )
    op = ExtractFileOperator(
        task_id="leak", population=made, path=str(tmp_path / "out.csv"), campaign_conn_id=scratch.conn_id
    )
    with pytest.raises(
        CampaignError, match=r"was made by DAG 'confidential', not by this DAG \('other_team'\)"
    ):
        op.execute(context("leak", dag_id="other_team"))
    assert list(tmp_path.iterdir()) == []
    # the same DAG may use it
    out = ExtractFileOperator(
        task_id="mine", population=made, path=str(tmp_path / "mine.csv"), campaign_conn_id=scratch.conn_id
    ).execute(context("mine", dag_id="confidential"))
    assert out["rows"] == 5


@bad_input(
    "UpdateDataOperator",
    "the dict of a staging table relabelled as another resource",
    "refused: `the population dict says resource='public.app_users', key='id', but the task that made … recorded "
    "resource='profiles', key='id'; a dict cannot relabel a staging table's rows`",
)
def test_a_staging_table_cannot_be_relabelled(scratch, context) -> None:
    scratch.db.execute("CREATE TABLE public.app_users (id bigint PRIMARY KEY)")
    scratch.db.execute("INSERT INTO public.app_users VALUES (1), (2)")
    made = QueryOperator(task_id="q", where="id <= 2", campaign_conn_id=scratch.conn_id).execute(context("q"))
    op = UpdateDataOperator(
        task_id="rm",
        population={**made, "resource": "public.app_users"},
        operation="delete",
        campaign_conn_id=scratch.conn_id,
    )
    with pytest.raises(CampaignError, match=r"a dict cannot relabel a staging table's rows"):
        op.execute(context("rm"))
    assert count(scratch.db, "SELECT count(*) FROM public.app_users") == 2


@bad_input(
    "SaveAudienceOperator",
    "path='/d/./gold.csv' when another audience's file is '/d/gold.csv'",
    "refused: `path='/d/gold.csv' is already the file of audience 'a'` (paths are compared in one spelling); "
    "the other audience's published file is untouched",
)
def test_two_spellings_of_one_path_are_one_file(scratch, context, tmp_path) -> None:
    first = save(scratch, context, population=[{"id": 1}], audience="a", path=str(tmp_path / "gold.csv"))
    with pytest.raises(CampaignError, match=r"is already the file of audience 'a'"):
        save(scratch, context, population=[{"id": 2}], audience="b", path=f"{tmp_path}/./gold.csv")
    with pytest.raises(CampaignError, match=r"is already the file of audience 'a'"):
        save(scratch, context, population=[{"id": 2}], audience="b", path=f"{tmp_path}//gold.csv")
    assert versions(tmp_path / "gold.csv") == [first["uri"].rpartition("/")[2]]


@bad_input(
    "SaveAudienceOperator",
    "a file audience on S3 beside other audiences' versions (same stem, in the folder and below it)",
    "after the commit only this audience's older versions in that folder are removed; other audiences' files, "
    "files in sub-folders and files elsewhere in the bucket stay",
)
def test_pruning_on_s3_touches_only_this_audience(scratch, context, s3) -> None:
    s3.create_bucket(Bucket="aud")
    others = [
        "audiences/archive/gold.a1.v20260101T000000000003Z.csv",  # a sub-folder
        "audiences/gold.a999.v20260101T000000000001Z.csv",  # another audience's id
        "team-x/gold.a1.v20250101T000000000009Z.csv",  # elsewhere in the bucket
        "audiences/gold.csv",  # the bare name
    ]
    for key in others:
        s3.put_object(Bucket="aud", Key=key, Body=b"id\n1\n")
    first = save(
        scratch,
        context,
        ctx=run_context(context, run_id="r1"),
        population=[{"id": 1}],
        path="s3://aud/audiences/gold.csv",
    )
    second = save(scratch, context, ctx=run_context(context, run_id="r2"), population=[{"id": 2}])
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="aud").get("Contents", []))
    assert keys == sorted([*others, second["uri"].removeprefix("s3://aud/")])
    assert first["uri"] != second["uri"]


@bad_input(
    "SaveAudienceOperator",
    "export_to when the save fails after the export was written",
    "the shared export is written under a hidden pending name and moved to export_to only after the commit: "
    "a failed save leaves export_to as it was",
)
def test_the_export_is_published_after_the_commit(scratch, context, tmp_path, monkeypatch) -> None:
    export = tmp_path / "keys.csv"
    save(scratch, context, run_id="r1", population=[{"id": 1}], export_to=str(export))
    assert export.read_text().split() == ["id", "1"]

    from airflow_campaign.operators import save_audience

    real = save_audience._AudienceSave.export_keys
    written = []

    def export_then_fail(self, *args, **kwargs):  # the export is written, then the save dies
        out = real(self, *args, **kwargs)
        written.append(out)
        raise RuntimeError("connection lost before the commit")

    op = SaveAudienceOperator(
        task_id="save",
        population=[{"id": 1}, {"id": 2}],
        audience="loyal",
        export_to=str(export),
        campaign_conn_id=scratch.conn_id,
    )
    monkeypatch.setattr(save_audience._AudienceSave, "export_keys", export_then_fail)
    with pytest.raises(RuntimeError, match="connection lost"):
        op.execute(run_context(context, run_id="r2"))
    assert written, "the export was written before the failure"
    assert export.read_text().split() == ["id", "1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.csv"]
