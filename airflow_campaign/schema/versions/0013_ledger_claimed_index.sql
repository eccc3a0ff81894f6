-- The partial index on claimed and sending rows duplicated what (occurrence_id, status, id)
-- already finds (settling reads an occurrence's claimed and sending rows through it), and cost
-- every claim one more index entry per row.
DROP INDEX campaign.delivery_logs_claimed_idx;
