-- The delivery engine: where an occurrence keeps its recipients' data, who claimed a log row,
-- and the indexes that fatigue and once-per-period look-ups need.
ALTER TABLE campaign.delivery_occurrences
    ADD COLUMN targets_table text,
    ADD COLUMN simulated     boolean NOT NULL DEFAULT false;

ALTER TABLE campaign.delivery_logs
    ADD COLUMN claimed_by text,
    ADD COLUMN attempts   integer NOT NULL DEFAULT 0;

CREATE INDEX delivery_logs_recipient_idx ON campaign.delivery_logs (delivery_id, recipient_key);
CREATE INDEX delivery_logs_sending_idx ON campaign.delivery_logs (occurrence_id) WHERE status = 'sending';
