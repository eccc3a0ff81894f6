"""Preparing a delivery: the typology's exclusions, in order, each logged with its reason."""

from __future__ import annotations

import pytest
from psycopg import sql

from airflow_campaign.delivery import engine
from airflow_campaign.delivery.recurrence import RunInfo
from airflow_campaign.delivery.typology import (
    ControlGroup,
    Fatigue,
    SizeLimit,
    SqlRule,
    Typology,
    email_typology,
)
from airflow_campaign.errors import CampaignError

BASE = 990_000

# id offset -> (email, email_denylisted, subscribed to newsletter)
PEOPLE = {
    1: ("ok1@example.com", False, True),
    2: (None, False, True),  # missing address
    3: ("not an address", False, True),  # invalid
    4: ("deny@example.com", True, True),  # denylisted
    5: ("bounced@example.com", False, True),  # quarantined
    6: ("nosub@example.com", False, False),  # not subscribed
    7: ("ok1@example.com", False, True),  # duplicate of 1
    8: ("ok8@example.com", False, True),
    9: ("ok9@example.com", False, True),
    10: ("ok10@example.com", False, True),
}


@pytest.fixture
def people(scratch):
    db = scratch.db
    for offset, (email, deny, _) in PEOPLE.items():
        db.execute(
            "INSERT INTO campaign.profiles (id, email, email_denylisted) VALUES (%s, %s, %s)",
            (BASE + offset, email, deny),
        )
    db.execute(
        "INSERT INTO campaign.quarantine (channel, address, reason) VALUES ('email', 'bounced@example.com', 'hard_bounce')"
    )
    db.execute(
        "INSERT INTO campaign.subscriptions (service_id, profile_id) SELECT v.id, p FROM campaign.services v,"
        " unnest(%s::bigint[]) p WHERE v.name = 'newsletter'",
        ([BASE + o for o, (_, _, sub) in PEOPLE.items() if sub],),
    )
    db.execute(
        "CREATE TABLE campaign_staging.prep_targets AS SELECT p.id, p.email, p.id::text AS _campaign_rk,"
        " p.email AS _campaign_address FROM campaign.profiles p WHERE p.id > %s",
        (BASE,),
    )
    return db


def prepare(
    db,
    typology,
    run_key="2026-03-14",
    service="newsletter",
    backfill=False,
    on_backfill="simulate",
    name="prep",
):
    spec = engine.DeliverySpec(
        name=name, channel="email", dag_id="d", task_id="t", service=service, settings={}
    )
    info = RunInfo(run_key, "r", "scheduled", run_key, None, None, backfill)
    with db.transaction():
        delivery_id, service_id = engine.ensure_delivery(db, spec)
        occurrence_id = engine.ensure_occurrence(db, delivery_id, info)
        result = engine.prepare(
            db,
            delivery_id=delivery_id,
            occurrence_id=occurrence_id,
            service_id=service_id,
            channel="email",
            targets="campaign_staging.prep_targets",
            key="id",
            resource="campaign.profiles",
            typology=typology,
            info=info,
            on_backfill=on_backfill,
            denylist_column="email_denylisted",
            seed=name,
        )
    return occurrence_id, result


def statuses(db, occurrence_id):
    return {
        int(k) - BASE: (s, r)
        for k, s, r in db.execute(
            "SELECT recipient_key, status, exclusion_reason FROM campaign.delivery_logs WHERE occurrence_id = %s",
            (occurrence_id,),
        )
    }


def test_the_standard_typology_logs_each_exclusion_with_its_reason(people):
    occ, result = prepare(people, email_typology())
    got = statuses(people, occ)
    assert got == {
        1: ("pending", None),
        2: ("excluded", "missing address"),
        3: ("excluded", "invalid address"),
        4: ("excluded", "denylisted"),
        5: ("excluded", "quarantined"),
        6: ("excluded", "not subscribed"),
        7: ("excluded", "duplicate address"),
        8: ("pending", None),
        9: ("pending", None),
        10: ("pending", None),
    }
    assert result["by_status"] == {"pending": 4, "excluded": 6}
    assert result["excluded"]["quarantined"] == 1


def test_preparing_again_keeps_the_ledger_and_adds_nobody_twice(people):
    occ, _ = prepare(people, email_typology())
    people.execute(
        "UPDATE campaign.delivery_logs SET status = 'sent' WHERE occurrence_id = %s AND recipient_key = %s",
        (occ, str(BASE + 1)),
    )
    again, result = prepare(people, email_typology())
    assert again == occ
    assert statuses(people, occ)[1] == ("sent", None)
    assert result["total"] == len(PEOPLE)


def test_control_group_size_limit_and_own_rules_are_deterministic(people):
    typology = email_typology(
        control_group=ControlGroup(size=1),
        size_limit=2,
        extra=[SqlRule("test address", "w.address LIKE 'ok10@%'")],
    )
    occ, result = prepare(people, typology)
    got = statuses(people, occ)
    assert got[10] == ("excluded", "test address")
    reasons = sorted(r for s, r in got.values() if s == "excluded")
    assert reasons.count("control group") == 1
    assert result["by_status"]["pending"] == 2  # 1, 8, 9 eligible; 1 held out as control; limit 2
    # the same draw for another occurrence of the same delivery
    occ2, _ = prepare(people, typology, run_key="2026-03-15")
    control = lambda o: {k for k, (s, r) in statuses(people, o).items() if r == "control group"}  # noqa: E731
    assert control(occ) == control(occ2)


def test_fatigue_counts_recent_messages_on_the_channel(people):
    occ, _ = prepare(people, email_typology(), run_key="2026-03-10", name="earlier")
    people.execute(
        "UPDATE campaign.delivery_logs SET status = 'sent', sent_at = now() - interval '1 day'"
        " WHERE occurrence_id = %s AND status = 'pending'",
        (occ,),
    )
    occ2, _ = prepare(people, Typology([Fatigue(1, days=7)]), name="later")
    tired = {k for k, (s, r) in statuses(people, occ2).items() if r == "fatigue"}
    assert tired == {1, 7, 8, 9, 10}  # 7 shares 1's address, which got a message yesterday


def test_once_per_period_and_backfill_simulation(people):
    occ, result = prepare(people, email_typology(once_per_period=True), run_key="a", backfill=True)
    assert result["by_status"] == {"simulated": 4, "excluded": 6}
    # the same interval sent for real later: simulated rows become pending again
    occ_again, result = prepare(
        people, email_typology(once_per_period=True), run_key="a", backfill=True, on_backfill="send"
    )
    assert occ_again == occ and result["by_status"] == {"pending": 4, "excluded": 6}


def test_an_unknown_service_is_refused_before_anything(people):
    with pytest.raises(
        CampaignError, match=r"service='weekly': no such subscription service; known services: \["
    ):
        prepare(people, email_typology(), service="weekly")
    assert people.execute("SELECT count(*) FROM campaign.delivery_logs").fetchone()[0] == 0


def test_a_broken_rule_names_itself(people):
    with pytest.raises(CampaignError, match=r"typology rule 'oops': the database rejected its SQL"):
        prepare(people, Typology([SqlRule("oops", "w.nope = 1")]))
    assert people.execute(sql.SQL("SELECT count(*) FROM campaign.delivery_logs")).fetchone()[0] == 0


def test_rule_arguments_are_checked():
    with pytest.raises(CampaignError, match="give percent= or size="):
        ControlGroup()
    with pytest.raises(CampaignError, match=r"SizeLimit\(size=-1\)"):
        SizeLimit(-1)


def test_own_rules_take_parameters(people):
    typology = Typology(
        [
            SqlRule("test domain", "w.address LIKE %(pattern)s", parameters={"pattern": "%@example.com"}),
        ]
    )
    occ, _ = prepare(people, typology, name="param_rule")
    excluded = {k for k, (s, r) in statuses(people, occ).items() if r == "test domain"}
    assert excluded == {o for o, (email, _, _) in PEOPLE.items() if email and email.endswith("@example.com")}
    # a hostile value is a value: it matches no address and runs nothing
    typology = Typology(
        [
            SqlRule("exact", "w.address = %(a)s", parameters={"a": "x') OR true --"}),
            SizeLimit(2, order_by="w.address = %(first)s DESC", parameters={"first": "ok9@example.com"}),
        ]
    )
    occ, _ = prepare(people, typology, name="param_rule_2")
    got = statuses(people, occ)
    assert not any(r == "exact" for _, r in got.values())
    assert got[9] == ("pending", None)
    assert sum(1 for s, _ in got.values() if s == "pending") == 2


def test_own_rules_are_one_expression():
    with pytest.raises(
        CampaignError, match=r"SqlRule\('x'\)\.where='true\) OR \(true': closes a parenthesis"
    ):
        SqlRule("x", "true) OR (true")
    with pytest.raises(CampaignError, match=r"SizeLimit\(order_by\)='w.address; DROP TABLE t': has a ';'"):
        SizeLimit(1, order_by="w.address; DROP TABLE t")
