-- File audiences are written under a versioned name next to the path the DAG author gave
-- (file_path) and published by the transaction that records them (file_uri: the current
-- version). A save that fails leaves the published version, and the row, as they were.
ALTER TABLE campaign.audiences ADD COLUMN file_path text;
UPDATE campaign.audiences SET file_path = file_uri WHERE type = 'file';
