"""Seed data: deterministic, and as messy as real data where it matters."""

from __future__ import annotations

import psycopg
import pytest

from airflow_campaign import cli
from airflow_campaign.schema import migrate
from airflow_campaign.seed import SERVICES, seed
from tests.conftest import count

FINGERPRINTS = {
    "profiles": "SELECT md5(string_agg(p::text, '|' ORDER BY id)) FROM campaign.profiles p",
    "subscriptions": "SELECT md5(string_agg(concat_ws(',', service_id, profile_id, subscribed_at, origin), '|'"
    " ORDER BY service_id, profile_id)) FROM campaign.subscriptions",
    "quarantine": "SELECT md5(string_agg(concat_ws(',', channel, address, reason, since), '|'"
    " ORDER BY channel, address)) FROM campaign.quarantine",
    "apps": "SELECT md5(string_agg(concat_ws(',', profile_id, platform, device_token), '|' ORDER BY profile_id))"
    " FROM campaign.app_subscriptions",
    "members": "SELECT md5(string_agg(a.name || ':' || m.member_key, '|' ORDER BY a.name, m.member_key))"
    " FROM campaign.audience_members m JOIN campaign.audiences a ON a.id = m.audience_id",
}


def fingerprint(conn):
    return {name: conn.execute(query).fetchone()[0] for name, query in FINGERPRINTS.items()}


@pytest.fixture
def seed_db(fresh_database):
    url = fresh_database()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate.upgrade(conn)
    return url


def test_same_seed_same_rows_other_seed_other_rows(seed_db):
    with psycopg.connect(seed_db, autocommit=True) as conn:
        counts = seed(conn, 400, 7)
        first = fingerprint(conn)
        assert counts["profiles"] == 400
        assert all(first.values())
        assert seed(conn, 400, 7) == counts
        assert fingerprint(conn) == first
        seed(conn, 400, 8)
        other = fingerprint(conn)
        assert all(other[name] != first[name] for name in FINGERPRINTS)


def test_seed_command_prints_counts(seed_db, capsys):
    assert cli.main(["seed", "--profiles", "250", "--seed", "3", "--url", seed_db]) == 0
    out = capsys.readouterr().out
    with psycopg.connect(seed_db) as conn:
        assert count(conn, "SELECT count(*) FROM campaign.profiles") == 250
        subscriptions = count(conn, "SELECT count(*) FROM campaign.subscriptions")
    assert "profiles: 250" in out
    assert f"subscriptions: {subscriptions}" in out
    assert "seeded in" in out


def test_the_shared_test_data_is_realistically_messy(db):
    def n(where):
        return count(db, f"SELECT count(*) FROM campaign.profiles WHERE {where}")

    assert n("true") == 3000
    assert n("email IS NULL") > 0
    assert n("email NOT LIKE '%@%'") > 0  # no @ at all
    assert n("email LIKE '%@@%'") > 0  # doubled @
    assert (
        count(
            db, "SELECT count(*) FROM (SELECT 1 FROM campaign.profiles GROUP BY email HAVING count(*) > 1) d"
        )
        > 10
    )
    assert n("phone IS NULL") > 0
    assert n(r"phone ~ '^\+\d+$'") > 0  # E.164
    assert n(r"phone ~ '^00\d+-\d+$'") > 0  # international prefix with a dash
    assert n(r"phone ~ '^0?\d\d( \d\d)+\d?$'") > 0  # national, spaced in pairs
    assert count(db, "SELECT count(DISTINCT country) FROM campaign.profiles") == 7
    assert n("email_denylisted") > 0 and n("sms_denylisted") > 0
    assert count(db, "SELECT count(*) FROM campaign.quarantine WHERE channel = 'email'") > 0
    assert count(db, "SELECT count(*) FROM campaign.quarantine WHERE channel = 'sms'") > 0
    assert {r[0] for r in db.execute("SELECT reason FROM campaign.quarantine")} >= {"hard_bounce", "denylist"}
    services = [r[0] for r in db.execute("SELECT name FROM campaign.services ORDER BY id")]
    assert services == [s[0] for s in SERVICES]
    per_service = dict(
        db.execute(
            "SELECT v.name, count(*) FROM campaign.subscriptions s JOIN campaign.services v ON v.id = s.service_id"
            " GROUP BY v.name"
        ).fetchall()
    )
    for name, _, _, share in SERVICES:
        assert abs(per_service[name] / 3000 - share) < 0.05, name
    assert count(db, "SELECT count(*) FROM campaign.subscription_events") == sum(per_service.values())
    assert count(db, "SELECT count(*) FROM campaign.app_subscriptions") > 0
    sizes = dict(db.execute("SELECT name, row_count FROM campaign.audiences WHERE type = 'list'").fetchall())
    assert sizes["vip"] == count(db, "SELECT count(*) FROM campaign.profiles WHERE loyalty_points >= 9500")
    assert sizes["do_not_contact"] > 0


def test_seeding_again_is_refused_only_for_history_the_seed_did_not_make(seed_db):
    from airflow_campaign.errors import CampaignError
    from airflow_campaign.seed import history

    with psycopg.connect(seed_db, autocommit=True) as conn:
        seed(conn, 100, 1)
        assert history(conn) == {}  # the seed's own subscription events, audiences and quarantine
        seed(conn, 100, 2)  # so a test database re-seeds without --force
        conn.execute(
            "INSERT INTO campaign.quarantine (channel, address, reason) VALUES ('email', 'bounced@x.org', 'hard_bounce')"
        )
        assert history(conn) == {"quarantine entries not made by the seed": 1}
        with pytest.raises(
            CampaignError, match=r"delete: quarantine entries not made by the seed: 1\. .*force=True"
        ):
            seed(conn, 100, 3)
        assert count(conn, "SELECT count(*) FROM campaign.quarantine WHERE address = 'bounced@x.org'") == 1
        seed(conn, 100, 3, force=True)
        assert history(conn) == {}
