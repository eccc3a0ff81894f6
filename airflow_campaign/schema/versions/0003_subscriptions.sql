-- Subscription events name the task instance that made them (task_id and map_index next to
-- dag_id and run_id), and every try of a subscription task that committed is recorded once per
-- task instance with its counts. A re-run of SubscriptionServicesOperator looks itself up in
-- subscription_runs (one row, no index on the events to maintain) and, only then, reads the
-- events its earlier tries wrote.
ALTER TABLE campaign.subscription_events
    ADD COLUMN task_id   text,
    ADD COLUMN map_index integer;

CREATE TABLE campaign.subscription_runs (
    dag_id     text NOT NULL,
    task_id    text NOT NULL,
    run_id     text NOT NULL,
    map_index  integer NOT NULL DEFAULT -1,
    counts     jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dag_id, task_id, run_id, map_index)
);
