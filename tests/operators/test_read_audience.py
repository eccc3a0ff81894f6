"""ReadAudienceOperator: list audiences (members in the database) and file audiences."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.targeting import ReadAudienceOperator
from tests.conftest import ids, rows, staged


@pytest.fixture
def audience(db):
    """Register audiences for one test: ``audience(name, type, file_uri=None)``; removed afterwards."""
    names: list[str] = []

    def make(name, kind="file", file_uri=None, file_format=None):
        db.execute(
            "INSERT INTO campaign.audiences (name, type, file_uri, file_format) VALUES (%s, %s, %s, %s)",
            (name, kind, file_uri, file_format),
        )
        names.append(name)
        return name

    yield make
    db.execute("DELETE FROM campaign.audiences WHERE name = ANY(%s)", (names,))


def test_list_audience_vip(db, context):
    out = ReadAudienceOperator(task_id="vip", audience="vip", columns=["loyalty_points"]).execute(
        context("vip")
    )
    expected = [
        r[0] for r in db.execute("SELECT id FROM campaign.profiles WHERE loyalty_points >= 9500 ORDER BY id")
    ]
    assert len(expected) > 50
    assert ids(db, out) == expected
    assert out["columns"] == ["id", "loyalty_points"]
    assert (out["resource"], out["key"]) == ("profiles", "id")
    assert min(r["loyalty_points"] for r in rows(db, out)) >= 9500


def test_list_audience_do_not_contact_matches_its_members(db, context):
    out = ReadAudienceOperator(task_id="dnc", audience="do_not_contact").execute(context("dnc"))
    expected = [
        r[0]
        for r in db.execute(
            "SELECT m.member_key::bigint FROM campaign.audience_members m JOIN campaign.audiences a"
            " ON a.id = m.audience_id WHERE a.name = 'do_not_contact' ORDER BY 1"
        )
    ]
    assert expected
    assert ids(db, out) == expected


def test_file_audience_reads_keys_from_its_file(db, context, audience, tmp_path):
    path = tmp_path / "winners.csv"
    path.write_text("id,prize\n5,cup\n7,mug\n7,mug\n999999,none\n12,pen\n")
    audience("winners", file_uri=str(path))
    out = ReadAudienceOperator(task_id="winners", audience="winners", columns=["email"]).execute(
        context("winners")
    )
    assert ids(db, out) == [5, 7, 12]
    assert [r["email"] for r in rows(db, out)] == [
        r[0] for r in db.execute("SELECT email FROM campaign.profiles WHERE id IN (5, 7, 12) ORDER BY id")
    ]


def test_file_audience_on_s3(db, context, audience, s3):
    s3.create_bucket(Bucket="audiences")
    s3.put_object(Bucket="audiences", Key="lists/s3_aud.jsonl", Body=b'{"id": 3}\n{"id": 4}\n')
    audience("s3_aud", file_uri="s3://audiences/lists/s3_aud.jsonl")
    out = ReadAudienceOperator(task_id="s3_aud", audience="s3_aud").execute(context("s3_aud"))
    assert ids(db, out) == [3, 4]


def test_file_audience_without_its_key_column(db, context, audience, tmp_path):
    path = tmp_path / "emails.csv"
    path.write_text("email\na@example.com\n")
    audience("by_email", file_uri=str(path))
    ctx = context("by_email")
    with pytest.raises(
        CampaignError, match=r"audience='by_email': its file .*emails.csv has no key column 'id'"
    ):
        ReadAudienceOperator(task_id="by_email", audience="by_email").execute(ctx)
    assert staged(db, ctx) == []


def test_file_audience_whose_file_is_gone(db, context, audience, tmp_path):
    audience("gone_file", file_uri=str(tmp_path / "gone.csv"))
    ctx = context("gone_file")
    with pytest.raises(CampaignError, match=r"path='.*gone.csv': no such file"):
        ReadAudienceOperator(task_id="gone_file", audience="gone_file").execute(ctx)
    assert staged(db, ctx) == []


def test_unknown_audience_lists_the_known_ones(db, context):
    ctx = context("nope")
    with pytest.raises(
        CampaignError, match=r"audience='nope' does not exist; known audiences: \[.*'do_not_contact'.*'vip'"
    ):
        ReadAudienceOperator(task_id="nope", audience="nope").execute(ctx)
    assert staged(db, ctx) == []


def test_unknown_column_names_the_option(db, context):
    ctx = context("vip_cols")
    with pytest.raises(CampaignError, match=r"columns: unknown column\(s\) \['tier'\]"):
        ReadAudienceOperator(task_id="vip_cols", audience="vip", columns=["tier"]).execute(ctx)
    assert staged(db, ctx) == []


def test_empty_audience_with_on_empty_skip(db, context, audience):
    audience("empty_list", kind="list")
    ctx = context("empty_list")
    with pytest.raises(AirflowSkipException, match="audience 'empty_list' is empty"):
        ReadAudienceOperator(task_id="empty_list", audience="empty_list", on_empty="skip").execute(ctx)
    assert staged(db, ctx) == []
    out = ReadAudienceOperator(task_id="empty_list", audience="empty_list").execute(context("empty_list"))
    assert out["count"] == 0
