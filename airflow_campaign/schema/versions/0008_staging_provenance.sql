-- What a staging table's rows are: the resource and key the task that made it recorded. A
-- population dict naming the table is checked against them (a dict cannot relabel the rows).
ALTER TABLE campaign.staging_tables ADD COLUMN resource text, ADD COLUMN key_column text;
