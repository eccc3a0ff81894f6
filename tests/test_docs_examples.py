import importlib.util, time, json, os
def test_exp(seeded, airflow_db, monkeypatch):
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([
        {"name": "docs-examples", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {"path": "/tmp/docexp"}},
        {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
    ]))
    for name in ("exp_dag", "exp_dag2"):
        spec = importlib.util.spec_from_file_location(name, f"/tmp/docexp/{name}.py")
        m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        t = time.monotonic()
        dr = m.dag.test()
        print("took", time.monotonic() - t)
        print(type(dr), dr.state, dr.run_id)
        from airflow.utils.session import create_session
        with create_session() as s:
            for ti in dr.get_task_instances(session=s):
                print(ti.task_id, ti.state, ti.xcom_pull(task_ids=ti.task_id) if False else None)
