"""A DAG to try on your machine: `airflow-campaign dev` runs it, and so does `python` on this file."""

import datetime as dt

from airflow.sdk import DAG, task

from airflow_campaign.operators.targeting import QueryOperator, SegmentationOperator

with DAG(
    dag_id="docs_try_locally",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    params={"country": "FR"},
    tags=["campaign", "docs"],
) as dag:
    customers = QueryOperator(
        task_id="customers",
        where="country = %(country)s AND email IS NOT NULL AND NOT email_denylisted",
        parameters={"country": "{{ params.country }}"},
        columns=["email", "loyalty_points"],
    )
    tiers = SegmentationOperator(
        task_id="tiers",
        population=customers.output,
        segments=[{"code": "gold", "where": "loyalty_points >= 8000"}],
        complement_code="standard",
    )

    @task
    def sizes(segments: dict) -> dict:
        return {code: population["count"] for code, population in segments.items()}

    sizes(tiers.output)


if __name__ == "__main__":
    # `python try_locally.py` with the environment `airflow-campaign dev` prints: one run, then
    # each task's state and return value (XCom), or its error
    from airflow.listeners import hookimpl
    from airflow.models.xcom import XComModel
    from airflow.sdk.listener import get_listener_manager
    from airflow.utils.session import create_session

    errors = {}

    class KeepErrors:
        """dag.test() logs a task's exception and stores it nowhere: this listener keeps it."""

        @hookimpl
        def on_task_instance_failed(self, previous_state, task_instance, error):
            errors[task_instance.task_id] = error

    get_listener_manager().add_listener(KeepErrors())
    run = dag.test(run_conf={"country": "DE"})
    print(f"{run.run_id}: {run.state}")
    with create_session() as session:
        for ti in run.get_task_instances(session=session):
            xcom = session.scalars(
                XComModel.get_many(
                    run_id=run.run_id, dag_ids=dag.dag_id, task_ids=ti.task_id, key="return_value"
                )
            ).first()
            value = None if xcom is None else XComModel.deserialize_value(xcom)
            print(ti.task_id, ti.state, errors.get(ti.task_id) or value)
