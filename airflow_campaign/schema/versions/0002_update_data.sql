-- Progress of UpdateDataOperator runs with batch_size: one row per task instance, so a retried
-- try resumes after the last committed batch instead of starting over.
CREATE TABLE campaign.update_progress (
    dag_id          text NOT NULL,
    task_id         text NOT NULL,
    run_id          text NOT NULL,
    map_index       integer NOT NULL DEFAULT -1,
    work_table      text NOT NULL,
    input_signature text NOT NULL,
    total_rows      bigint NOT NULL,
    done_through    bigint NOT NULL DEFAULT 0,
    counts          jsonb NOT NULL DEFAULT '{}',
    finished_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dag_id, task_id, run_id, map_index)
);
