"""End to end under dag.test(): a delivery mapped over two populations keeps one ledger per instance."""

from __future__ import annotations

import email
import email.policy
import json
import textwrap

from airflow_campaign import demo
from airflow_campaign.embedded import connection_fields

DAG = textwrap.dedent(
    """
    import datetime as dt

    from airflow.sdk import DAG, task

    from airflow_campaign.operators.deliveries import EmailDeliveryOperator

    with DAG("mapped_newsletter", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False) as dag:

        @task
        def cohorts():
            return [
                [{"id": 920001, "first_name": "Ada"}, {"id": 920002, "first_name": "Bob"}],
                [{"id": 920003, "first_name": "Cy"}, {"id": 920001, "first_name": "Ada again"}],
            ]

        EmailDeliveryOperator.partial(
            task_id="newsletter",
            subject="Hello {{ first_name }}",
            html='<p>Hi {{ first_name }}</p><a href="{{ unsubscribe_url }}">Stop</a>',
            from_addr="news@example.com",
            unsubscribe_url="https://example.com/unsubscribe",
            channel="outbox",
        ).expand(population=cohorts())
    """
)


def test_a_delivery_mapped_over_populations_sends_each_its_own(scratch, airflow_db, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_DEFAULT", json.dumps(connection_fields(scratch.url)))
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", "test-only-unsubscribe-signing-key")
    monkeypatch.setenv("CAMPAIGN_OUTBOX_DIR", str(tmp_path / "outbox"))
    dags = tmp_path / "dags"
    dags.mkdir()
    bundle = {"name": "mapped-test", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle"}
    bundle["kwargs"] = {"path": str(dags), "refresh_interval": 0}
    monkeypatch.setenv(
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([bundle])
    )  # for dag.test()
    scratch.db.execute(
        "INSERT INTO campaign.profiles (id, email, first_name) VALUES"
        " (920001, 'ada@example.org', 'Ada'), (920002, 'bob@example.org', 'Bob'), (920003, 'cy@example.org', 'Cy')"
    )
    path = dags / "mapped_newsletter.py"
    path.write_text(DAG)
    run = demo.load_dag(path, "mapped_newsletter").test()
    assert str(run.state).endswith("success")
    got: dict[str, list[tuple[str, str]]] = {}
    for folder in sorted((tmp_path / "outbox").iterdir()):
        for file in folder.glob("*.eml"):
            message = email.message_from_bytes(file.read_bytes(), policy=email.policy.default)
            got.setdefault(folder.name, []).append((message["To"], message["Subject"]))
    # one ledger, one folder per mapped instance; Ada is in both cohorts, so she gets one from each
    assert {name: sorted(messages) for name, messages in got.items()} == {
        "mapped_newsletter.newsletter[0]": [
            ("ada@example.org", "Hello Ada"),
            ("bob@example.org", "Hello Bob"),
        ],
        "mapped_newsletter.newsletter[1]": [
            ("ada@example.org", "Hello Ada again"),
            ("cy@example.org", "Hello Cy"),
        ],
    }
    ledgers = scratch.db.execute(
        "SELECT d.name, l.status, count(*) FROM campaign.delivery_logs l JOIN campaign.deliveries d"
        " ON d.id = l.delivery_id GROUP BY 1, 2 ORDER BY 1"
    ).fetchall()
    assert ledgers == [
        ("mapped_newsletter.newsletter[0]", "sent", 2),
        ("mapped_newsletter.newsletter[1]", "sent", 2),
    ]
