"""Nothing half-written: a save that fails publishes no file, keys of the wrong type are refused
before a save, and a failing batch says exactly what earlier batches committed."""

from __future__ import annotations

import pytest

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators import save_audience
from airflow_campaign.operators.update_data import UpdateDataOperator
from tests.bad_input.matrix import bad_input
from tests.conftest import count
from tests.operators.test_save_audience import (
    people,
    published,
    read_back,
    run_context,
    save,
    snapshot,
    versions,
)


@bad_input(
    "SaveAudienceOperator",
    "a file-audience save that fails after its file is written",
    "the task fails; the new file is removed, the audience row and the published file are the previous "
    "save's, and ReadAudienceOperator reads the previous members",
)
def test_a_failed_file_save_publishes_nothing(scratch, context, tmp_path, monkeypatch) -> None:
    path = tmp_path / "loyal.csv"
    save(scratch, context, run_id="r1", population=people(1, 2), path=str(path))
    before = (snapshot(scratch.db), published(scratch.db), versions(path))
    export = tmp_path / "keys.csv"
    real = save_audience.write_query

    def export_fails(conn, query, target, **options):  # the audience file is written, then the export dies
        if target.startswith(str(tmp_path / ".keys.pending-")):  # the export, written before the commit
            raise OSError("No space left on device")
        return real(conn, query, target, **options)

    monkeypatch.setattr(save_audience, "write_query", export_fails)
    with pytest.raises(OSError, match="No space left"):
        save(scratch, context, run_id="r2", population=people(2, 3, 4), path=str(path), export_to=str(export))
    monkeypatch.setattr(save_audience, "write_query", real)
    assert (snapshot(scratch.db), published(scratch.db), versions(path)) == before
    assert read_back(scratch, context, "loyal") == [1, 2]


@bad_input(
    "SaveAudienceOperator",
    "text keys ('abc') saved into a profiles list audience",
    "refused before any write: `population: its key 'id' holds a value that is not a bigint key of resource "
    "'profiles' (invalid input syntax for type bigint: \"abc\")`",
)
def test_keys_of_the_wrong_type_are_refused_before_the_save(scratch, context) -> None:
    before = snapshot(scratch.db)
    with pytest.raises(
        CampaignError, match=r"its key 'id' holds a value that is not a bigint key of resource"
    ):
        save(scratch, context, population=[{"id": "12"}, {"id": "abc"}])
    assert snapshot(scratch.db) == before
    assert count(scratch.db, "SELECT count(*) FROM campaign.audiences WHERE name = 'loyal'") == 0


@bad_input(
    "SaveAudienceOperator",
    "text keys that are valid numbers ('12') saved into a profiles audience",
    "accepted: the keys convert to the resource's key type, and the audience reads back",
)
def test_text_keys_that_convert_are_saved(scratch, context) -> None:
    save(scratch, context, ctx=run_context(context), population=[{"id": "12"}, {"id": "3"}])
    assert read_back(scratch, context, "loyal") == [3, 12]


@bad_input(
    "UpdateDataOperator",
    "batch_size=2 and a fields expression that fails in the third batch",
    "the task fails with the database's error and: `Rows 1 to 4 of 6 were written and committed by earlier "
    "batches; rows 5 to 6 (this batch) were rolled back. A retry with the same input resumes after row 4`",
)
def test_a_failing_batch_says_what_was_committed(scratch, context) -> None:
    db = scratch.db
    rows = [{"id": i, "d": 0 if i == 5 else 1} for i in range(1, 7)]
    before = dict(db.execute("SELECT id, loyalty_points FROM campaign.profiles WHERE id <= 6").fetchall())
    op = UpdateDataOperator(
        task_id="points",
        population=rows,
        resource="profiles",
        operation="update",
        fields={"loyalty_points": "100 / src.d"},
        batch_size=2,
        campaign_conn_id=scratch.conn_id,
    )
    with pytest.raises(CampaignError) as raised:
        op.execute(context("points"))
    message = str(raised.value)
    assert "division by zero" in message
    assert "Rows 1 to 4 of 6 were written and committed by earlier batches" in message
    assert "Nothing was written" not in message
    after = dict(db.execute("SELECT id, loyalty_points FROM campaign.profiles WHERE id <= 6").fetchall())
    assert [after[i] for i in range(1, 5)] == [100] * 4  # the committed batches
    assert [after[i] for i in (5, 6)] == [before[5], before[6]]  # the failed batch rolled back
