-- Audience size history per save: which task instance saved it and what changed. A retried
-- (or cleared and re-run) task instance replaces its own row instead of adding one.
ALTER TABLE campaign.audience_sizes
    ADD COLUMN task_id   text,
    ADD COLUMN map_index integer,
    ADD COLUMN added     bigint,
    ADD COLUMN removed   bigint;

CREATE UNIQUE INDEX audience_sizes_run_idx
    ON campaign.audience_sizes (audience_id, dag_id, run_id, task_id, map_index);
CREATE INDEX audience_sizes_history_idx ON campaign.audience_sizes (audience_id, updated_at);
